"""``python -m vgg_jax.evaluate``: top-1/top-5 error under the paper's test
protocols (§3.2), several scales, ensembles; a report like Tables 3-6.

Thin: models come from ``model_dir.load_model``, the split from
``vgg_jax.data``, posteriors from ``eval/protocols.evaluate_model`` (the
dense engine), the table from ``eval/report``.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

import jax
import jax.numpy as jnp

from vgg_jax import input_pipeline as data_lib
from vgg_jax.eval.posteriors import PROTOCOLS, SplitPosteriors, combine, protocol_parts
from vgg_jax.eval.protocols import check_scales, evaluate_model, paper_scales
from vgg_jax.eval.report import build_report, report_markdown, write_report
from vgg_jax.model_dir import LoadedModel, check_compatible, load_model


def _parse_scales(text: str | None, loaded: LoadedModel) -> list[int]:
  if text and text not in ("paper", "paper-single"):
    try:
      return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
      raise ValueError(f"--scales takes comma-separated integers, 'paper' "
                       f"or 'paper-single', got {text!r}") from None
  if loaded.train_scale is None:
    raise ValueError(
        f"{loaded.path} does not record its training scale S, so the paper's "
        "test scales cannot be derived: pass --scales (e.g. 256,384,512)")
  return paper_scales(loaded.train_scale, single=text == "paper-single")


def default_scales(protocol: str, scales: str) -> str:
  """Krizhevsky's 10-crop test is one scale (the image rescaled to S):
  'paper' means Q = S there."""
  return "paper-single" if protocol == "tencrop" and scales == "paper" else scales


def _data_config(args):
  cfg = data_lib.default_data_config(args.data)
  if args.data_name:
    cfg.name = args.data_name
  if args.data_dir:
    cfg.data_dir = args.data_dir
  if args.split:
    cfg.eval_split = args.split
  cfg.num_threads = args.num_threads
  return cfg


def build_parser():
  p = argparse.ArgumentParser(
      prog="python -m vgg_jax.evaluate",
      description="Top-1/top-5 error under the paper's test protocols "
      "(§3.2): centre, dense, multicrop, dense+multicrop; AlexNet's tencrop "
      "(the 4 corner and centre crops of the central QxQ square and their "
      "flips; use --scales 256); several scales; ensembles of several models.")
  p.add_argument("--task", default="classification",
                 choices=("classification", "localisation"),
                 help="localisation: Appendix A's protocols (see `--task "
                 "localisation --help`)")
  p.add_argument("--model", action="append", default=[],
                 help="a training workdir or an imported-weights directory; "
                 "repeat for an ensemble")
  p.add_argument("--arch", action="append", default=[],
                 help="the net each --model must be (e.g. D); an error if "
                 "the directory holds another")
  p.add_argument("--config", default=None,
                 help="a training config file (FILE.py[:ARG]): run its "
                 "`evals` evaluators on each --model, exactly as training "
                 "does, and write evals.json (instead of --protocol)")
  p.add_argument("--from-posteriors", nargs="+", default=[],
                 help="saved posteriors (.npz from --save-posteriors) to "
                 "combine instead of evaluating models")
  p.add_argument("--data", default="tfds", choices=data_lib.source_names())
  p.add_argument("--data-name", default=None,
                 help="TFDS name (default imagenet2012)")
  p.add_argument("--data-dir", default=None,
                 help="TFDS data_dir, or the folder root")
  p.add_argument("--split", default=None, help="default: the eval split")
  p.add_argument("--protocol", default="dense", choices=PROTOCOLS)
  p.add_argument("--scales", default="paper",
                 help="test scales Q, e.g. 256,384,512; 'paper' (default): "
                 "{S-32,S,S+32} for fixed S, {S_min,mid,S_max} for jittered; "
                 "'paper-single': Q=S, or the middle for jittered (Table 3)")
  p.add_argument("--step", type=int, default=None,
                 help="workdirs: evaluate this checkpoint step")
  p.add_argument("--best", action="store_true",
                 help="workdirs: the checkpoint with the best validation "
                 "top-1 (default: the latest)")
  p.add_argument("--dtype", default="float32",
                 choices=("float32", "bfloat16", "float16"),
                 help="compute dtype (weights stay float32); the paper's "
                 "numbers are float32")
  p.add_argument("--crop-size", type=int, default=None,
                 help="the models' training crop (default: from the model)")
  p.add_argument("--batch-size", type=int, default=8,
                 help="images per device step")
  p.add_argument("--bucket-step", type=int, default=32,
                 help="dense canvases: sides rounded up to this multiple")
  p.add_argument("--limit", type=int, default=None,
                 help="only the first N examples of the split")
  p.add_argument("--num-threads", type=int, default=8,
                 help="decoding threads")
  p.add_argument("--output", default="eval_results",
                 help="folder for results.json, results.md, posteriors")
  p.add_argument("--save-posteriors", action="store_true",
                 help="write per-image posteriors (npz, with names) per model")
  return p


def _task_of(argv) -> str:
  p = argparse.ArgumentParser(add_help=False)
  p.add_argument("--task", default="classification")
  return p.parse_known_args(argv)[0].task


def load_config_file(spec: str):
  """``FILE.py[:ARG]`` -> ``get_config(ARG)`` of that file (as main.py's
  --config, without its flag machinery)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(":")
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"--config {path}: no such file")
  module_spec = importlib.util.spec_from_file_location("_vgg_jax_config",
                                                       path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def run_config_evals(args) -> dict[str, Any]:
  """Every --model through the config's evaluators (eval/evaluators.py)."""
  import json  # pylint: disable=g-import-not-at-top
  from vgg_jax import files  # pylint: disable=g-import-not-at-top
  from vgg_jax.eval import evaluators as evaluators_lib  # pylint: disable=g-import-not-at-top
  config = load_config_file(args.config)
  evaluators = evaluators_lib.evaluators_from_config(config)
  info = data_lib.dataset_info(config.data)
  results = {}
  for path in args.model:
    m = load_model(path, step=args.step, best=args.best)
    check_compatible(m, info, data_desc=f"{args.config}'s data")
    values = {}
    for ev in evaluators:
      values.update(ev.evaluate(m.model, convention=m.convention))
    results[str(path)] = values
    if jax.process_index() == 0:
      print(f"{path}: {evaluators_lib.summary_line(values)}")
  if jax.process_index() == 0:
    text = json.dumps(results, indent=2) + "\n"
    files.atomic_write(pathlib.Path(args.output) / "evals.json",
                       lambda f: f.write(text.encode()))
  return results


def main(argv=None) -> dict[str, Any]:
  import sys  # pylint: disable=g-import-not-at-top
  from vgg_jax import compilation_cache, xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.apply()  # before the first computation starts JAX's backend
  compilation_cache.enable(jax)
  argv = sys.argv[1:] if argv is None else list(argv)
  if _task_of(argv) == "localisation":  # Appendix A: its own options
    from vgg_jax.localisation import command as loc_command  # pylint: disable=g-import-not-at-top
    return loc_command.main(argv)
  args = build_parser().parse_args(argv)
  if args.config:
    if not args.model:
      raise SystemExit("--config needs --model DIR (one or more)")
    return run_config_evals(args)
  protocol = args.protocol
  parts = protocol_parts(protocol)
  if bool(args.model) == bool(args.from_posteriors):
    raise SystemExit("give --model DIR (one or more) or --from-posteriors "
                     "FILE..., not both")
  output = pathlib.Path(args.output)
  results, scales_per_model = [], []
  if args.from_posteriors:
    for path in args.from_posteriors:
      r = SplitPosteriors.load(path)
      qs = (r.meta["scales"] if args.scales in ("paper", "paper-single", None)
            else [int(v) for v in args.scales.split(",")])
      results.append(r)
      scales_per_model.append(qs)
    split_desc = results[0].meta.get("split_desc", "?")
    combine(results, protocol, scales_per_model)  # checks before reporting
  else:
    if args.arch and len(args.arch) not in (1, len(args.model)):
      raise SystemExit("give one --arch for all models or one per --model")
    archs = (args.arch * len(args.model) if len(args.arch) == 1
             else args.arch or [None] * len(args.model))
    data_cfg = _data_config(args)
    info = data_lib.dataset_info(data_cfg)
    split = data_cfg.eval_split
    split_desc = f"{args.data}:{data_cfg.name or data_cfg.data_dir}/{split}"
    # Everything is loaded and checked before the first image is evaluated.
    loaded = []
    for path, arch in zip(args.model, archs):
      m = load_model(path, expect_name=arch, crop_size=args.crop_size,
                     step=args.step, best=args.best,
                     dtype=None if args.dtype == "float32"
                     else jnp.dtype(args.dtype))
      check_compatible(m, info, data_desc=split_desc)
      qs = check_scales(_parse_scales(default_scales(args.protocol, args.scales), m), m.crop_size,
                        f"{path}")
      loaded.append(m)
      scales_per_model.append(qs)
    for m, qs in zip(loaded, scales_per_model):
      meta = {"path": m.path, "net": m.label, "train_scale": m.train_scale,
              "model": m.metadata["model"], "split_desc": split_desc,
              "crop_size": m.crop_size}
      r = evaluate_model(m.model, data_cfg, convention=m.convention,
                         scales=qs, protocol=protocol, split=split,
                         crop_size=m.crop_size, batch_size=args.batch_size,
                         bucket_step=args.bucket_step, limit=args.limit,
                         meta=meta)
      results.append(r)
      if args.save_posteriors and jax.process_index() == 0:
        r.save(output / f"posteriors_{len(results) - 1}_{m.label}.npz")
  report = build_report(results, protocol, scales_per_model,
                        split_desc=split_desc)
  report["parts"] = list(parts)
  if jax.process_index() == 0:
    write_report(report, output)
    print(report_markdown(report))
    print(f"wrote {output / 'results.json'} and {output / 'results.md'}")
  return report


def run(argv=None) -> None:
  """``main`` with errors as one line and progress lines on stderr."""
  import logging  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                      datefmt="%H:%M:%S")
  logging.getLogger("vgg_jax").setLevel(logging.INFO)
  try:
    main(argv)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  run()
