"""The CPU localisation experiment, one command (paper Appendix A, synthetic):

    python experiments/localisation/run_synth.py --workdir W [--quick]

1. synthesises Fashion-MNIST items on photos (``vgg_jax.localisation.synth``):
   training, validation, and a separate set of held-out TRAINING-distribution
   images (Fashion-MNIST training items, another seed) for the merge threshold;
2. trains the classifier (``synth_classifier.py``) unless ``--classifier DIR``;
3. trains four localisers from it (``synth.py``: SCR/PCR x all/FC-only),
   and a fifth (SCR, all layers) with the other box normalisation
   (``centred_log``) to compare the two;
4. evaluates protocol 1 (centre-gt) and protocol 2 (dense, the classifier's
   top-5) for each; baselines: the centre box (75% of each side) in both
   protocols; the class oracle (protocol 2 with the true class as the only
   guess); the merge-threshold sweep on the held-out training images, the
   chosen threshold then applied once on validation;
5. writes ``W/results.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

import vgg_jax.localisation  # noqa: E402,F401
from vgg_jax import files, train  # noqa: E402
from vgg_jax.data import loc_records  # noqa: E402
from vgg_jax.localisation import boxes as boxes_lib  # noqa: E402
from vgg_jax.localisation import evaluator as loc_eval  # noqa: E402
from vgg_jax.localisation import metric as metric_lib  # noqa: E402
from vgg_jax.localisation import synth  # noqa: E402
from vgg_jax.localisation.command import classifier_posteriors  # noqa: E402
from vgg_jax.localisation.source import LocEvalSource  # noqa: E402
from vgg_jax.model_dir import load_model  # noqa: E402
from experiments.localisation import synth as loc_cfg  # noqa: E402
from experiments.localisation import synth_classifier as cls_cfg  # noqa: E402
from vgg_jax import input_pipeline  # noqa: E402

THRESHOLDS = (0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 3.0)
# Protocol 2's scales.  With a 32-px window and a map stride of 32, a 64-px
# image at Q < 64 gives one window per scale (Q=32: the whole image).
SCALES = (32, 40)
CENTRE_SCALE = 36  # protocol 1 (the configs' data.eval_scale)
# Items 24-56 px of 64 in a colour that stands out of the photo: with 16-48
# px items in random colours the classifier stayed at chance
# (docs/localisation.md, "The CPU experiment").
SYNTH = synth.SynthConfig(min_item=24, max_item=56, colour="contrast")
LOCALISERS = (("scr", "all", "crop_fraction"), ("scr", "fc", "crop_fraction"),
              ("pcr", "all", "crop_fraction"), ("pcr", "fc", "crop_fraction"),
              ("scr", "all", "centred_log"))


def _train(cfg, workdir, data_dir, epochs, **over):
  cfg.unlock()
  cfg.data.data_dir = str(data_dir)
  cfg.total_epochs = float(epochs)
  cfg.eval_every_epochs = float(epochs)
  cfg.data.num_workers = 0
  for k, v in over.items():
    cfg[k] = v
  t = time.time()
  res = train.train_and_evaluate(cfg, workdir)
  return {**res, "seconds": round(time.time() - t, 1)}


def _data_cfg(data_dir, split):
  c = input_pipeline.default_data_config("loc_records")
  c.data_dir = str(data_dir)
  c.eval_split = split
  c.crop_size = 32
  return c


def _write(w, results):
  text = json.dumps(results, indent=1, default=float) + "\n"
  files.atomic_write(w / "results.json", lambda f: f.write(text.encode()))


def baselines(data_cfg, split, post, names):
  """Centre box: protocol 1 (gt class) and protocol 2 (classifier's top-5
  classes, each with the centre box); the top-5 classification error."""
  gt = loc_eval.load_ground_truth(LocEvalSource(data_cfg, split))
  centre = {k: boxes_lib.centre_box(gt.stored_hw[k]) for k in gt.ground_truth}
  p1 = metric_lib.centre_gt_localisation_error(centre, gt.ground_truth).error
  top, _ = loc_eval.top5_from_posteriors(post, names)
  guesses = {k: [(c, centre[k]) for c in top[k]] for k in gt.ground_truth}
  p2 = metric_lib.top5_localisation_error(guesses, gt.ground_truth).error
  cls_top5 = float(np.mean([gt.ground_truth[k].labels[0] not in top[k]
                            for k in gt.ground_truth]))
  return {"centre_box_centre_gt": p1, "centre_box_top5": p2,
          "classification_top5_error": cls_top5}


def oracle_posteriors(data_cfg, split, names, num_classes):
  src = LocEvalSource(data_cfg, split)
  labels = {src.label_and_name(i)[1]: src.label_and_name(i)[0]
            for i in range(len(src))}
  post = np.zeros((len(names), num_classes), np.float32)
  for i, n in enumerate(names):
    post[i, max(labels[n], 0)] = 1.0
  return post


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--quick", action="store_true",
                 help="fewer images and epochs (a smoke run, minutes)")
  p.add_argument("--classifier", default=None,
                 help="reuse a trained classifier workdir")
  p.add_argument("--loc-lr", type=float, default=5e-3,
                 help="localisers' lr (Appendix A.1: 1e-3; 5e-3 here because "
                 "the CPU budget allows only a few hundred steps)")
  p.add_argument("--loc-epochs", type=float, default=None)
  p.add_argument("--cls-epochs", type=float, default=None)
  p.add_argument("--train-images", type=int, default=None)
  p.add_argument("--no-normalisation-comparison", action="store_true",
                 help="skip the fifth localiser (centred_log)")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  w = pathlib.Path(args.workdir)
  n_train, n_val, n_held = (1200, 200, 150) if args.quick else (6000, 500, 300)
  n_train = args.train_images or n_train
  cls_epochs, loc_epochs = (4, 1) if args.quick else (14, 2)
  loc_epochs = args.loc_epochs or loc_epochs
  cls_epochs = args.cls_epochs or cls_epochs
  localisers = LOCALISERS[:4] if args.no_normalisation_comparison else (
      LOCALISERS)
  settings = dict(quick=args.quick, loc_lr=args.loc_lr, train_images=n_train,
                  val_images=n_val, heldout_images=n_held,
                  classifier_epochs=cls_epochs, localiser_epochs=loc_epochs,
                  dense_scales=SCALES, centre_gt_scale=CENTRE_SCALE,
                  synth=dict(min_item=SYNTH.min_item, max_item=SYNTH.max_item,
                             colour=SYNTH.colour, side=SYNTH.side))
  t0 = time.time()
  data, held = w / "data", w / "heldout"
  if not (data / "validation.array_record").exists():
    synth.make_dataset(data, num_train=n_train, num_val=n_val, seed=0,
                       cfg=SYNTH)
  if not (held / "train.array_record").exists():
    synth.write_split(held, "train", n_held, seed=1, cfg=SYNTH)
    plog = loc_records.PrepareLog()
    loc_records.prepare_split(loc_records.iter_voc_folder(
        held, "train", synth.CLASS_NAMES, plog), held, "train", plog)
    (held / "class_index.json").write_bytes(
        (data / "class_index.json").read_bytes())
  results = {"settings": settings, "training": {}, "phase_seconds": {}}
  results["phase_seconds"]["data"] = round(time.time() - t0, 1)
  cls_dir = args.classifier or str(w / "classifier")
  if not args.classifier:
    results["training"]["classifier"] = _train(
        cls_cfg.get_config(), cls_dir, data, cls_epochs)
    print("classifier", results["training"]["classifier"], flush=True)
    _write(w, results)
  val_cfg, held_cfg = _data_cfg(data, "validation"), _data_cfg(held, "train")
  info = input_pipeline.dataset_info(val_cfg)
  post, names = classifier_posteriors(
      [cls_dir], val_cfg, info, "validation", "synth", list(SCALES),
      batch_size=16, bucket_step=32, limit=None)
  hpost, hnames = classifier_posteriors(
      [cls_dir], held_cfg, info, "train", "held-out", list(SCALES),
      batch_size=16, bucket_step=32, limit=None)
  results["baselines"] = baselines(val_cfg, "validation", np.asarray(post),
                                   names)
  oracle = oracle_posteriors(val_cfg, "validation", names, info.num_classes)
  top, _ = loc_eval.top5_from_posteriors(np.asarray(post), names)
  results["baselines"]["classification_top1_error_dense"] = float(np.mean(
      [top[n][0] != int(lab) for n, lab in zip(names, oracle.argmax(1))]))
  print("baselines", results["baselines"], flush=True)
  rows = {}
  results["localisers"] = rows
  for reg, layers, norm in localisers:
    key = f"{reg}_{layers}" + ("" if norm == "crop_fraction" else
                               f"_{norm}")
    loc_dir = w / key
    tl = time.time()
    results["training"][key] = _train(
        loc_cfg.get_config(f"{reg},{layers},{norm}"), loc_dir, data,
        loc_epochs, init_from=cls_dir, lr=args.loc_lr)
    m = load_model(loc_dir)
    p1 = loc_eval.evaluate_centre_gt(
        m.model, val_cfg, convention=m.convention, split="validation",
        scale=CENTRE_SCALE, normalisation=norm)["localisation_error"]
    held_run = loc_eval.evaluate_dense(
        [(m.model, m.convention, norm)], np.asarray(hpost), hnames,
        held_cfg, convention=m.convention, split="train", scales=SCALES,
        normalisation=norm, return_dense=True)
    sweep = metric_lib.merge_threshold_sweep(
        held_run["dense"], held_run["ground_truth"], THRESHOLDS)
    p2 = loc_eval.evaluate_dense(
        [(m.model, m.convention, norm)], np.asarray(post), names, val_cfg,
        convention=m.convention, split="validation", scales=SCALES,
        normalisation=norm, threshold=sweep["best"])
    orc = loc_eval.evaluate_dense(
        [(m.model, m.convention, norm)], oracle, names, val_cfg,
        convention=m.convention, split="validation", scales=SCALES,
        normalisation=norm, threshold=sweep["best"])
    rows[key] = {"centre_gt_error": p1,
                 "dense_top5_error": p2["localisation_error"],
                 "oracle_class_error": orc["localisation_error"],
                 "merge_threshold": sweep["best"],
                 "heldout_sweep": sweep["errors"],
                 "normalisation": norm,
                 "seconds": round(time.time() - tl, 1)}
    print(key, rows[key], flush=True)
    _write(w, results)
  results["seconds"] = round(time.time() - t0, 1)
  _write(w, results)
  b = results["baselines"]
  print(f"\nsettings: {settings}; {results['seconds']} s")
  print("| localiser | protocol 1 (centre-gt) | protocol 2 (dense, top-5) | "
        "class oracle | merge threshold (held-out train) |")
  print("|---|---|---|---|---|")
  for k, r in rows.items():
    print(f"| {k} | {100*r['centre_gt_error']:.1f}% | "
          f"{100*r['dense_top5_error']:.1f}% | "
          f"{100*r['oracle_class_error']:.1f}% | {r['merge_threshold']} |")
  print(f"| centre box | {100*b['centre_box_centre_gt']:.1f}% | "
        f"{100*b['centre_box_top5']:.1f}% | | |")
  print(f"classifier top-5 error {100*b['classification_top5_error']:.1f}%"
        f", top-1 {100*b['classification_top1_error_dense']:.1f}% (dense, "
        f"Q={SCALES})")
  return results


if __name__ == "__main__":
  main()
