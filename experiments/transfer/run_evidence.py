"""Appendix B's whole chain on this machine's real data, one command:

    python experiments/transfer/run_evidence.py --workdir DIR [--model W]
        [--canvas 300] [--quick]

1. the net: ``--model W`` (a training workdir or imported weights), else
   ``workdirs/fashion_mnist_net_a`` (experiments/fashion_mnist_net_a.py, the
   plain net A) when it exists, else a short training run of that config
   (1.5 epochs) into DIR/fashion_mnist;
2. a random-weight net of the same shape (the baseline the training must
   beat) and the raw-pixel baseline;
3. the sets (vgg_jax.data.transfer_sets): scikit-learn's digits with the
   Caltech-101 protocol (3 splits, 30 train / up to 50 test per class,
   C on a held-out 20%, mean class recall ± std) and the canvas set with the
   VOC protocol (difficult flags, VOC-2007 11-point AP, mAP);
4. descriptors through ``python -m vgg_jax.transfer extract`` at one Q, at
   three Q averaged, at three Q stacked; SVMs through ``svm``.

Writes DIR/evidence.json and DIR/evidence.md (the table in
docs/transfer.md).  Resumable: finished descriptor files and results are
reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

from vgg_jax.data import transfer_sets
from vgg_jax.transfer import __main__ as cli
from vgg_jax.transfer import pixels
from vgg_jax.transfer import store

REPO = pathlib.Path(__file__).resolve().parents[2]
DIGIT_SCALES = {"single": "32", "average": "32,48,64", "stack": "32,48,64"}
CANVAS_SCALES = {"single": "64", "average": "64,96,128", "stack": "64,96,128"}


def find_or_train(workdir: pathlib.Path, model: str | None) -> str:
  if model:
    return model
  main_job = REPO / "workdirs" / "fashion_mnist_net_a"
  if (main_job / "checkpoints").is_dir():
    return str(main_job)
  out = workdir / "fashion_mnist"
  if not (out / "checkpoints").is_dir():
    subprocess.run([sys.executable, "-m", "vgg_jax.main", "--config",
                    str(REPO / "experiments" / "fashion_mnist_net_a.py"),
                    "--workdir", str(out), "--config.total_epochs=1.5",
                    "--config.eval_every_epochs=1.5"], check=True)
  return str(out)


def random_twin(trained: str, out: pathlib.Path) -> str:
  """The trained net's shape and input convention, fresh He weights."""
  if (out / "metadata.json").is_file():
    return str(out)
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from vgg_jax import model_dir, weights  # pylint: disable=g-import-not-at-top
  from vgg_jax.models import create_model  # pylint: disable=g-import-not-at-top
  loaded = model_dir.load_model(trained)
  m = loaded.metadata["model"]
  kw = {k: m[k] for k in ("name", "num_classes", "width_mult", "fc_width",
                          "head_window", "in_channels") if m.get(k) is not None}
  model = create_model(rngs=nnx.Rngs(12345), init="he", **kw)
  weights.save_pretrained(out, model, model_kwargs=kw,
                          input_convention=loaded.convention,
                          source="random He init (seed 12345), baseline",
                          extra={"crop_size": loaded.crop_size})
  return str(out)


def run_svm(kind, features, out, extra=()):
  if (out / "results.json").is_file():
    return json.loads((out / "results.json").read_text())
  if kind == "caltech":
    return cli.main(["svm", "caltech", "--features", str(features),
                     "--splits", "all", "--preset", "caltech101",
                     "--output", str(out), *extra])
  return cli.main(["svm", "voc", "--features", str(features), "--train",
                   "trainval", "--test", "test", "--ap", "voc2007",
                   "--output", str(out), *extra])


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--model", default=None)
  ap.add_argument("--canvas", type=int, default=300,
                  help="canvas images per split (trainval, test)")
  ap.add_argument("--configs", default="single,average,stack")
  args = ap.parse_args(argv)
  w = pathlib.Path(args.workdir)
  w.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  trained = find_or_train(w, args.model)
  nets = {"trained": trained, "random": random_twin(trained, w / "random")}
  if not (w / "digits" / "all.json").is_file():
    transfer_sets.write_digits_set(w / "digits")
  canvas = w / f"canvas{args.canvas}"
  if not (canvas / "test.json").is_file():
    transfer_sets.write_canvas_set(canvas, {"trainval": args.canvas,
                                            "test": args.canvas}, seed=0)
  rows = []
  # Raw pixels (grey 16x16 digits, RGB 32x32 canvas), flip-averaged, L2.
  fd, fc = w / "f_pixels_digits", w / "f_pixels_canvas"
  if not (fd / "all.json").is_file():
    pixels.write_pixel_split(w / "digits", "all", fd, side=16)
  for s in ("trainval", "test"):
    if not (fc / f"{s}.json").is_file():
      pixels.write_pixel_split(canvas, s, fc, side=32, mode="RGB")
  rd = run_svm("caltech", fd, w / "r_pixels_digits")
  rc = run_svm("voc", fc, w / "r_pixels_canvas")
  rows.append(("raw pixels", "-", rd, rc))
  for net_name, path in nets.items():
    for config in [c for c in args.configs.split(",") if c]:
      agg = "stack" if config == "stack" else "average"
      tag = f"{net_name}_{config}"
      for set_name, root, splits, scales in (
          ("digits", w / "digits", "all", DIGIT_SCALES[config]),
          ("canvas", canvas, "trainval,test", CANVAS_SCALES[config])):
        out = w / f"f_{tag}_{set_name}"
        if not all((out / f"{s}.json").is_file() for s in splits.split(",")):
          cli.main(["extract", "--model", path, "--names", net_name,
                    "--kind", "set", "--root", str(root), "--splits", splits,
                    "--scales", scales, "--aggregation", agg,
                    "--output", str(out), "--batch_size", "64",
                    "--chunk_size", "512"])
      rd = run_svm("caltech", w / f"f_{tag}_digits", w / f"r_{tag}_digits")
      rc = run_svm("voc", w / f"f_{tag}_canvas", w / f"r_{tag}_canvas")
      rows.append((f"{net_name} net, {config}",
                   f"digits Q={DIGIT_SCALES[config]}, canvas "
                   f"Q={CANVAS_SCALES[config]}", rd, rc))
  table = ["| descriptor | scales | digits: mean class recall (%) | "
           "canvas: mAP (%, VOC-2007 AP) |", "|---|---|---|---|"]
  summary = []
  for name, scales, rd, rc in rows:
    m = rd["mean_class_recall"]
    table.append(f"| {name} | {scales} | {100 * m['mean']:.2f} ± "
                 f"{100 * m['std']:.2f} | {100 * rc['map']:.2f} |")
    summary.append({"descriptor": name, "scales": scales,
                    "digits_recall_mean": m["mean"],
                    "digits_recall_std": m["std"], "canvas_map": rc["map"]})
  text = "\n".join(table) + "\n"
  info = {"trained_net": trained, "canvas_images_per_split": args.canvas,
          "rows": summary, "wall_s": time.time() - t0}
  store.atomic_write_json(w / "evidence.json", info)
  store.atomic_write_text(w / "evidence.md", text)
  print(text)
  return info


if __name__ == "__main__":
  main(sys.argv[1:])
