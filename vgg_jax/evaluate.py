"""``python -m vgg_jax.evaluate``: the paper's test protocols (§3.2).

The code lives in the package ``vgg_jax/eval/`` (counting, the dense
engine, protocols, posteriors, report, evaluators, the command); this module
keeps the command's name and the library's names in one place:

* ``evaluate_classifier(model, batches, mesh=None)``: top-1/top-5 error
  over batches of crops (eval/classifier.py);
* ``scale_posteriors`` / ``evaluate_model``: a split under any protocol at
  one or several scales (eval/protocols.py), through the dense engine
  (eval/dense.py);
* ``combine``, ``SplitPosteriors``: ensembles of scales, protocols and
  models (eval/posteriors.py); ``build_report``: the paper's tables.
"""

from __future__ import annotations

from vgg_jax.eval.classifier import evaluate_classifier
from vgg_jax.eval.command import build_parser, main, run
from vgg_jax.eval.counting import TOP_K, errors_from_counts, errors_of, topk_hits
from vgg_jax.eval.dense import (CLASS_POSTERIORS, ClassPosteriors, DenseEngine,
                                DenseOutput, PooledDescriptor, dense_bucket,
                                normalise_on_device)
from vgg_jax.eval.posteriors import (PROTOCOL_PARTS, PROTOCOLS,
                                     SplitPosteriors, combine, protocol_parts)
from vgg_jax.eval.protocols import (check_scales, evaluate_model, paper_scales,
                                    scale_posteriors)
from vgg_jax.eval.report import (build_report, report_markdown, report_table,
                                 write_report)
from vgg_jax.model_dir import LoadedModel, check_compatible, load_model
from vgg_jax.sharding import default_mesh

__all__ = [
    "evaluate_classifier", "build_parser", "main", "run", "TOP_K",
    "errors_from_counts", "errors_of", "topk_hits", "CLASS_POSTERIORS",
    "ClassPosteriors", "DenseEngine", "DenseOutput", "PooledDescriptor",
    "dense_bucket", "normalise_on_device", "PROTOCOL_PARTS", "PROTOCOLS",
    "SplitPosteriors", "combine", "protocol_parts", "check_scales",
    "evaluate_model", "paper_scales", "scale_posteriors", "build_report",
    "report_markdown", "report_table", "write_report", "LoadedModel",
    "check_compatible", "load_model", "default_mesh",
]

if __name__ == "__main__":
  run()
