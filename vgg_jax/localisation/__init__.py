"""Localisation (paper Appendix A): boxes, the ILSVRC metric, annotations,
the synthetic CPU dataset, and the pieces that plug into the training loop
and the evaluation command (registered on import): the ``box_regression``
task, the ``loc_records`` data source and the ``localisation`` evaluators.
See docs/localisation.md."""

from vgg_jax.localisation import evaluator as _evaluator  # noqa: F401  (registers)
from vgg_jax.localisation import source as _source  # noqa: F401  (registers)
from vgg_jax.localisation import task as _task  # noqa: F401  (registers)
