"""``python -m vgg_jax.evaluate --task localisation``: Appendix A.2's two
protocols on a localisation split, written as results.json / results.md
(the error under ``localisation_error``, a fraction).

    python -m vgg_jax.evaluate --task localisation --protocol centre-gt \\
        --model LOCALISER --data loc_records --data-dir DATA --scales 384 \\
        --output OUT
    python -m vgg_jax.evaluate --task localisation --protocol dense \\
        --model LOC1 [--model LOC2] --classifier CLS [--classifier CLS2] \\
        --data-dir DATA --scales 256,384 --output OUT

``--model`` repeated: the union of the localisers' boxes before merging
(Table 9's fusion; dense only).  ``--model DIR:Q1,Q2`` tests that localiser
at its own scales instead of ``--scales`` (Table 9 fuses a localiser tested
at 256 with one tested at 352 and 384:
``--model L256:256 --model L384:352,384``).  ``--classifier`` repeated: an
ensemble (mean posteriors) gives the top-5 classes.  Box normalisation: read from each
localiser's workdir config (``data.box_normalisation``), else
``--normalisation``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
from typing import Any

import jax
import numpy as np

import vgg_jax.localisation  # noqa: F401  (registers the source, task, evaluator)
from vgg_jax import files
from vgg_jax import input_pipeline as data_lib
from vgg_jax.localisation import boxes as boxes_lib
from vgg_jax.localisation import evaluator as loc_eval
from vgg_jax.model_dir import check_compatible, load_model


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m vgg_jax.evaluate --task localisation",
      description="Localisation error (paper Appendix A.2): protocol 1 "
      "(centre-gt, Table 8) or 2 (dense, Table 9).")
  p.add_argument("--task", default="localisation", choices=("localisation",))
  p.add_argument("--protocol", required=True, choices=loc_eval.PROTOCOLS)
  p.add_argument("--model", action="append", default=[], required=True,
                 help="a localiser (training workdir or weights), "
                 "optionally DIR:Q1,Q2 for its own dense scales; repeat for "
                 "the union of several (dense)")
  p.add_argument("--classifier", action="append", default=[],
                 help="classification model(s) giving the top-5 classes "
                 "(dense); repeat for an ensemble")
  p.add_argument("--data", default="loc_records", choices=data_lib.source_names())
  p.add_argument("--data-dir", default=None)
  p.add_argument("--split", default=None, help="default: validation")
  p.add_argument("--scales", required=True,
                 help="test scale(s) Q, comma-separated (centre-gt: one)")
  p.add_argument("--classifier-scales", default=None,
                 help="the classifier's dense scales (default: --scales)")
  p.add_argument("--normalisation", default=None,
                 choices=boxes_lib.NORMALISATIONS,
                 help="box normalisation when the model dir does not say")
  p.add_argument("--merge-threshold", type=float,
                 default=boxes_lib.DEFAULT_MERGE_THRESHOLD)
  p.add_argument("--blacklist", default=None,
                 help="a file of image ids (one a line) left out of the score")
  p.add_argument("--rule", default="paper", choices=("paper", "devkit"),
                 help="centre-gt: IoU > 0.5 (paper) or >= 0.5 (devkit)")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--bucket-step", type=int, default=32)
  p.add_argument("--limit", type=int, default=None)
  p.add_argument("--num-threads", type=int, default=8)
  p.add_argument("--output", default="eval_results")
  return p


def _ints(text: str) -> list[int]:
  try:
    return [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise ValueError(f"scales are comma-separated integers, got {text!r}"
                     ) from None


def split_model_arg(text: str) -> tuple[str, list[int] | None]:
  """``DIR`` or ``DIR:Q1,Q2`` -> (DIR, scales or None).  Only a suffix of
  comma-separated integers is read as scales, so a path with a colon
  elsewhere stays whole."""
  path, sep, tail = text.rpartition(":")
  if sep and path and re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)*", tail):
    scales = _ints(tail)
    if any(q <= 0 for q in scales):
      raise ValueError(f"--model {text!r}: scales must be positive")
    return path, scales
  return text, None


def model_normalisation(path, default: str | None) -> str:
  """The box normalisation a localiser was trained with (its workdir's
  config.json), else ``default``; an error when neither says."""
  cfg = pathlib.Path(path) / "config.json"
  if cfg.is_file():
    d = json.loads(cfg.read_text())
    norm = (d.get("data") or {}).get("box_normalisation") or d.get(
        "data.box_normalisation")
    if norm:
      if default and default != norm:
        raise ValueError(f"{path} was trained with box normalisation {norm!r}"
                         f", not --normalisation {default!r}")
      return norm
  if not default:
    raise ValueError(f"{path} does not record its box normalisation: pass "
                     f"--normalisation ({' or '.join(boxes_lib.NORMALISATIONS)})")
  return default


def read_blacklist(path) -> list[str] | None:
  if not path:
    return None
  return [ln.strip() for ln in pathlib.Path(path).read_text().splitlines()
          if ln.strip()]


def report_markdown(r: dict) -> str:
  models = list(r["models"])
  if r.get("localiser_scales"):  # dense: each localiser's own scales
    models = [f"{m} (Q={','.join(map(str, q))})"
              for m, q in zip(models, r["localiser_scales"])]
  lines = [f"# Localisation ({r['protocol']}), {r['split_desc']}", "",
           "| localisers | classifiers | scales | localisation error | "
           "images | undecodable |", "|---|---|---|---|---|---|",
           f"| {', '.join(models)} | {', '.join(r['classifiers']) or '-'}"
           f" | {','.join(map(str, r['scales']))} | "
           f"{100 * r['localisation_error']:.2f}% | {r['num_examples']} | "
           f"{r['num_undecodable']} |", ""]
  if r.get("merge_threshold") is not None:
    lines.append(f"Merge threshold {r['merge_threshold']}.")
  if r["images_without_boxes"]:
    lines.append(f"{r['images_without_boxes']} images have no box of their "
                 "label and are not scored.")
  if r["undecodable"]:
    lines.append("Undecodable (counted as errors): "
                 + ", ".join(r["undecodable"][:50]))
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict[str, Any]:
  args = build_parser().parse_args(argv)
  data_cfg = data_lib.default_data_config(args.data)
  if args.data_dir:
    data_cfg.data_dir = args.data_dir
  if args.split:
    data_cfg.eval_split = args.split
  data_cfg.num_threads = args.num_threads
  info = data_lib.dataset_info(data_cfg)
  split = data_cfg.eval_split
  split_desc = f"{args.data}:{data_cfg.data_dir}/{split}"
  scales = _ints(args.scales)
  blacklist = read_blacklist(args.blacklist)
  locs, model_paths = [], []
  for text in args.model:
    path, own_scales = split_model_arg(text)
    m = load_model(path)
    locs.append((m, model_normalisation(path, args.normalisation),
                 own_scales))
    model_paths.append(path)
  if args.protocol == "centre-gt":
    if any(own for _, _, own in locs):
      raise ValueError("centre-gt takes its one scale from --scales, not "
                       "--model DIR:Q")
    locs = [(m, norm) for m, norm, _ in locs]
    if len(locs) != 1 or len(scales) != 1:
      raise ValueError("centre-gt takes one --model and one scale")
    if args.classifier:
      raise ValueError("centre-gt uses the ground-truth class: no "
                       "--classifier")
    (m, norm), = locs
    data_cfg.crop_size = m.crop_size
    res = loc_eval.evaluate_centre_gt(
        m.model, data_cfg, convention=m.convention, split=split,
        scale=scales[0], normalisation=norm, batch_size=args.batch_size,
        limit=args.limit, blacklist=blacklist, rule=args.rule)
  else:
    if not args.classifier:
      raise ValueError("dense needs --classifier (the top-5 classes)")
    res = evaluate_dense_command(args, data_cfg, info, split, split_desc,
                                 scales, locs, blacklist)
  res.pop("per_image", None)
  report = {"task": "localisation", "split_desc": split_desc,
            "models": [str(p) for p in model_paths],
            "classifiers": [str(p) for p in args.classifier],
            "scales": scales, **res}
  if jax.process_index() == 0:
    out = pathlib.Path(args.output)
    text = json.dumps(report, indent=2) + "\n"
    files.atomic_write(out / "results.json", lambda f: f.write(text.encode()))
    md = report_markdown(report)
    files.atomic_write(out / "results.md", lambda f: f.write(md.encode()))
    print(md)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
  return report


def classifier_posteriors(paths, data_cfg, info, split, split_desc, scales,
                          *, batch_size, bucket_step, limit):
  """Mean dense posteriors of one or several classifiers, and the names."""
  from vgg_jax.eval.posteriors import combine  # pylint: disable=g-import-not-at-top
  from vgg_jax.eval.protocols import evaluate_model  # pylint: disable=g-import-not-at-top
  results = []
  for path in paths:
    c = load_model(path)
    check_compatible(c, info, data_desc=split_desc)
    results.append(evaluate_model(
        c.model, data_cfg, convention=c.convention, scales=scales,
        protocol="dense", split=split, crop_size=c.crop_size,
        batch_size=batch_size, bucket_step=bucket_step, limit=limit,
        show_progress=False))
  post = combine(results, "dense", [scales] * len(results))
  return post, [str(n) for n in results[0].names]


def evaluate_dense_command(args, data_cfg, info, split, split_desc, scales,
                           locs, blacklist):
  cls_scales = _ints(args.classifier_scales) if args.classifier_scales \
      else scales
  post, names = classifier_posteriors(
      args.classifier, data_cfg, info, split, split_desc, cls_scales,
      batch_size=args.batch_size, bucket_step=args.bucket_step,
      limit=args.limit)
  return loc_eval.evaluate_dense(
      [(m.model, m.convention, norm, own) for m, norm, own in locs],
      np.asarray(post),
      names, data_cfg, convention=locs[0][0].convention, split=split,
      scales=scales, normalisation=locs[0][1],
      threshold=args.merge_threshold, batch_size=args.batch_size,
      bucket_step=args.bucket_step, limit=args.limit, blacklist=blacklist)
