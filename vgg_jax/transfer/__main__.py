"""python -m vgg_jax.transfer svm ... : linear SVMs and the paper's protocols
(Appendix B) on descriptor files written by ``vgg_jax.transfer.store``.

  # VOC-2007: SVMs on trainval, per-class AP and mAP on test.
  python -m vgg_jax.transfer svm voc --features F --train trainval \\
      --test test --ap voc2007 --output R
  # Caltech-101: 3 random splits over every stored image, 30 train / up to
  # 50 test per class, mean class recall mean +- std.
  python -m vgg_jax.transfer svm caltech --features F --splits all \\
      --preset caltech101 --output R

Writes R/results.json and R/results.md, and what the metrics were computed
from: R/scores.npz (voc: names, scores, positive, difficult, classes) or
R/predictions_split<s>.npz (caltech: names, label, predicted), atomically.

  # The raw-pixel baseline's descriptors of an image set written by
  # vgg_jax.data.transfer_sets.
  python -m vgg_jax.transfer pixels --set S --splits trainval,test \
      --side 16 --output F

  # Descriptors of a net (workdir or imported weights) through the dense
  # engine: several Q averaged or stacked, flips, L2, nets stacked (D & E).
  python -m vgg_jax.transfer extract --model D_DIR --model E_DIR \
      --kind tfds:voc/2007 --root DATA_DIR --splits trainval,test \
      --preset voc2007_de --output F
  python -m vgg_jax.transfer extract --model W --kind set --root S \
      --splits all --scales 32,48,64 --aggregation stack --output F
  Resumable: rerun the same command after an interruption.
  python -m vgg_jax.transfer presets    # Tables 11-12 columns and commands

``python -m vgg_jax.features`` is the same command (the issue's name).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import pathlib
import sys

import numpy as np

from vgg_jax.transfer import descriptor
from vgg_jax.transfer import extract
from vgg_jax.transfer import pixels
from vgg_jax.transfer import presets
from vgg_jax.transfer import sources
from vgg_jax.transfer import store
from vgg_jax.transfer import svm


def _grid(text: str):
  try:
    return tuple(float(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"--c_grid takes comma-separated numbers, got {text!r}") from None


def _parser():
  p = argparse.ArgumentParser(prog="python -m vgg_jax.transfer",
                              description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  ps = sub.add_parser("svm", help="linear SVMs + VOC / Caltech protocol")
  modes = ps.add_subparsers(dest="mode", required=True)
  for name in ("voc", "caltech"):
    m = modes.add_parser(name)
    m.add_argument("--features", required=True,
                   help="folder of <split>.npy + <split>.json")
    m.add_argument("--output", required=True, help="results folder")
    m.add_argument("--c_grid", type=_grid, default=svm.DEFAULT_C_GRID,
                   help="SVM C values tried on the held-out 20%% "
                   "(default %(default)s)")
    m.add_argument("--seed", type=int, default=0)
  voc = modes.choices["voc"]
  voc.add_argument("--train", default="trainval", help="training split")
  voc.add_argument("--test", default="test", help="evaluation split")
  voc.add_argument("--ap", choices=("voc2007", "voc2012"), default="voc2007",
                   help="11-point interpolated (2007) or area (2012) AP")
  voc.add_argument("--c_selection", choices=("per_class", "shared"),
                   default="per_class")
  px = sub.add_parser(
      "pixels", help="raw-pixel baseline descriptors of an image set "
      "(vgg_jax.data.transfer_sets layout)")
  px.add_argument("--set", required=True, dest="set_root",
                  help="image set root (ROOT/<split>.json, ROOT/<split>/)")
  px.add_argument("--splits", required=True, help="comma-separated")
  px.add_argument("--output", required=True, help="descriptor folder")
  px.add_argument("--side", type=int, default=16)
  px.add_argument("--mode", choices=("L", "RGB"), default="L")
  ex = sub.add_parser("extract", help="descriptors of a net through the "
                      "dense engine (Appendix B), resumable")
  ex.add_argument("--model", action="append", required=True,
                  help="model directory (training workdir or imported "
                  "weights); repeat for several nets, stacked in order")
  ex.add_argument("--names", default=None,
                  help="comma-separated net names (default: the nets' own)")
  ex.add_argument("--kind", default="set",
                  help="image set reader: " + ", ".join(
                      sources.reader_names()))
  ex.add_argument("--root", required=True,
                  help="image set root (TFDS: its data_dir)")
  ex.add_argument("--splits", default=None, help="comma-separated")
  ex.add_argument("--output", required=True, help="descriptor folder")
  ex.add_argument("--preset", default=None,
                  help="a Table 11/12 column (see the presets command): "
                  "its scales, aggregation, box and splits")
  ex.add_argument("--scales", default=None,
                  help="comma-separated Q values (default: the preset's)")
  ex.add_argument("--aggregation", choices=descriptor.AGGREGATIONS,
                  default=None)
  ex.add_argument("--box", action="store_true",
                  help="VOC action: whole image and person box, stacked")
  ex.add_argument("--no_flip", action="store_true")
  ex.add_argument("--renormalise", action="store_true",
                  help="L2-normalise again after stacking several nets")
  ex.add_argument("--batch_size", type=int, default=8)
  ex.add_argument("--chunk_size", type=int, default=256,
                  help="images per resumable chunk")
  ex.add_argument("--bucket_step", type=int, default=32)
  sub.add_parser("presets", help="the Table 11/12 presets")
  cal = modes.choices["caltech"]
  cal.add_argument("--splits", default="all",
                   help="comma-separated stored splits pooled into one set "
                   "that the random splits are drawn from")
  cal.add_argument("--preset", choices=("caltech101", "caltech256"),
                   default=None, help="the paper's numbers of train / test "
                   "images per class")
  cal.add_argument("--num_train", type=int, default=None)
  cal.add_argument("--max_test", type=int, default=None,
                   help="test images per class at most (default: all)")
  cal.add_argument("--num_splits", type=int, default=3)
  return p


def _same_settings(a: store.SplitFeatures, b: store.SplitFeatures, an, bn):
  for what in ("task", "classes", "settings"):
    if json.dumps(getattr(a, what), sort_keys=True) != json.dumps(
        getattr(b, what), sort_keys=True):
      raise SystemExit(f"splits {an} and {bn} differ in {what}: "
                       f"{getattr(a, what)} vs {getattr(b, what)}; "
                       "extract them with the same settings")


def run_voc_mode(args) -> dict:
  train = store.load_split(args.features, args.train)
  test = store.load_split(args.features, args.test)
  _same_settings(train, test, args.train, args.test)
  if train.task != "multilabel":
    raise SystemExit(f"voc mode needs multilabel descriptors, "
                     f"{args.train} is {train.task}")
  fpos, fdif = test.failed_labels()
  res = svm.run_voc(train.features, train.positive, train.difficult,
                    test.features, test.positive, test.difficult,
                    ap_method=args.ap, c_grid=args.c_grid, seed=args.seed,
                    c_selection=args.c_selection, class_names=train.classes,
                    failed_test_positive=fpos, failed_test_difficult=fdif,
                    keep_scores=True)
  names = test.names + [f["name"] for f in test.failed]
  save_arrays(args.output, "scores.npz", names=np.array(names),
              scores=res.pop("test_scores"),
              positive=np.concatenate([test.positive, fpos]),
              difficult=np.concatenate([test.difficult, fdif]),
              classes=np.array(test.classes))
  res.update({"mode": "voc", "train_split": args.train,
              "test_split": args.test, "num_train": len(train.names),
              "failed_train": [f["name"] for f in train.failed],
              "failed_test_names": [f["name"] for f in test.failed],
              "settings": train.settings})
  return res


def run_caltech_mode(args) -> dict:
  names = [s for s in args.splits.split(",") if s]
  parts = [store.load_split(args.features, s) for s in names]
  for s, p in zip(names[1:], parts[1:]):
    _same_settings(parts[0], p, names[0], s)
  if parts[0].task != "multiclass":
    raise SystemExit(f"caltech mode needs multiclass descriptors, "
                     f"{names[0]} is {parts[0].task}")
  preset = {"caltech101": svm.CALTECH101,
            "caltech256": svm.CALTECH256}.get(args.preset, {})
  num_train = args.num_train or preset.get("num_train")
  max_test = args.max_test if args.max_test is not None else preset.get(
      "max_test")
  if num_train is None:
    raise SystemExit("give --preset caltech101|caltech256 or --num_train")
  x = np.concatenate([p.features for p in parts])
  y = np.concatenate([p.labels for p in parts])
  failed = np.concatenate([p.failed_labels() for p in parts])
  res = svm.run_caltech(x, y, num_train=num_train, max_test=max_test,
                        num_splits=args.num_splits, seed=args.seed,
                        c_grid=args.c_grid, failed_labels=failed,
                        keep_predictions=True)
  image_names = np.array([n for p in parts for n in p.names] +
                         [f["name"] for p in parts for f in p.failed])
  for s, (pos, y_true, y_pred) in enumerate(res.pop("predictions")):
    save_arrays(args.output, f"predictions_split{s}.npz",
                names=image_names[pos],
                label=y_true, predicted=y_pred)
  num_classes = len(parts[0].classes)
  present = len(np.unique(np.concatenate([y, failed])))
  res.update({"mode": "caltech", "splits_pooled": names,
              "preset": args.preset, "num_classes": num_classes,
              "classes_with_images": present,
              "failed_names": [f["name"] for p in parts for f in p.failed],
              "settings": parts[0].settings})
  return res


def save_arrays(out_dir, filename: str, **arrays) -> None:
  """An .npz written atomically (what the metrics were computed from)."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  store.atomic_write_bytes(pathlib.Path(out_dir) / filename, buf.getvalue())


def results_markdown(res: dict) -> str:
  lines = ["# Transfer results", ""]
  lines.append(f"Descriptor settings: `{json.dumps(res['settings'])}`")
  lines.append("")
  if res["mode"] == "voc":
    lines.append(f"VOC protocol, AP = {res['method']}, train "
                 f"`{res['train_split']}` ({res['num_train']} images), test "
                 f"`{res['test_split']}` ({res['num_test']} images, "
                 f"{res['failed_test']} undecodable ranked last).")
    lines += ["", f"**mAP: {100 * res['map']:.2f}%**", "",
              "| class | AP (%) | C |", "|---|---|---|"]
    for name, ap, c in zip(res["classes"], res["ap"], res["c"]):
      lines.append(f"| {name} | {100 * ap:.2f} | {c:g} |")
  else:
    m = res["mean_class_recall"]
    lines.append(f"Caltech protocol: {len(m['per_split'])} random splits, "
                 f"{res['num_train_per_class']} train and "
                 + (f"up to {res['max_test_per_class']}"
                    if res['max_test_per_class'] else "all remaining")
                 + " test "
                 f"images per class, {res['num_classes']} classes, seed "
                 f"{res['seed']}.")
    lines += ["", f"**Mean class recall: {100 * m['mean']:.2f} ± "
              f"{100 * m['std']:.2f}%** (mean ± std over splits)", "",
              "| split | train | test | undecodable test | C | mean class "
              "recall (%) |", "|---|---|---|---|---|---|"]
    for d in res["splits"]:
      lines.append(f"| {d['split']} | {d['num_train']} | {d['num_test']} | "
                   f"{d['failed_test']} | {d['c']:g} | "
                   f"{100 * d['mean_class_recall']:.2f} |")
  return "\n".join(lines) + "\n"


def extract_spec(args):
  """The descriptor settings and splits of an extract command."""
  preset = presets.get_preset(args.preset) if args.preset else None
  base = preset.spec if preset else descriptor.DescriptorSpec()
  names = ([n for n in args.names.split(",") if n] if args.names else None)
  fields = {}
  if args.scales:
    fields["scales"] = tuple(int(q) for q in args.scales.split(",") if q)
  if args.aggregation:
    fields["aggregation"] = args.aggregation
  if args.box:
    fields["box"] = True
  if args.no_flip:
    fields["flip"] = False
  if args.renormalise:
    fields["renormalise"] = True
  splits = ([s for s in args.splits.split(",") if s] if args.splits else
            list(preset.splits) if preset else None)
  if not splits:
    raise SystemExit("give --splits (or a --preset)")
  return dataclasses.replace(base, **fields), splits, names


def run_extract(args) -> dict:
  spec, splits, names = extract_spec(args)
  nets = extract.load_nets(args.model, names)
  spec = dataclasses.replace(spec, nets=tuple(n.name for n in nets))
  if args.preset and len(nets) != len(presets.get_preset(args.preset)
                                       .spec.nets):
    print(f"note: preset {args.preset} fuses "
          f"{len(presets.get_preset(args.preset).spec.nets)} nets, "
          f"{len(nets)} given", file=sys.stderr)
  written = []
  for split in splits:
    images = sources.read_images(args.kind, args.root, split)
    written.append(str(extract.extract_split(
        images, split, args.output, nets, spec, batch_size=args.batch_size,
        bucket_step=args.bucket_step, chunk_size=args.chunk_size)))
  print("\n".join(written))
  return {"written": written, "spec": spec.to_json()}


def main(argv=None) -> dict:
  from vgg_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.apply()  # before the first computation starts JAX's backend
  args = _parser().parse_args(argv)
  if args.command == "presets":
    for p in presets.PRESETS.values():
      print(f"{p.name}: {p.doc}\n  extract --preset {p.name} --kind {p.kind} "
            f"--splits {','.join(p.splits)} --model D_DIR"
            + (" --model E_DIR" if len(p.spec.nets) > 1 else "")
            + f" ...\n  svm {p.protocol} {' '.join(p.svm_args)} ...\n")
    return {"presets": sorted(presets.PRESETS)}
  if args.command == "extract":
    import jax  # pylint: disable=g-import-not-at-top
    from vgg_jax import compilation_cache  # pylint: disable=g-import-not-at-top
    compilation_cache.enable(jax)
    try:
      return run_extract(args)
    except (FileNotFoundError, ValueError, store.SettingsMismatch) as e:
      raise SystemExit(f"error: {e}") from None
  if args.command == "pixels":
    try:
      written = [str(pixels.write_pixel_split(args.set_root, s, args.output,
                                              side=args.side, mode=args.mode))
                 for s in args.splits.split(",") if s]
    except (FileNotFoundError, ValueError) as e:
      raise SystemExit(f"error: {e}") from None
    print("\n".join(written))
    return {"written": written}
  try:
    res = (run_voc_mode if args.mode == "voc" else run_caltech_mode)(args)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
  out = pathlib.Path(args.output)
  store.atomic_write_json(out / "results.json", res)
  store.atomic_write_text(out / "results.md", results_markdown(res))
  print(results_markdown(res))
  return res


if __name__ == "__main__":
  main(sys.argv[1:])
