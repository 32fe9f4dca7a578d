"""Cost of the paper's test protocols (§3.2): images/s, and dense vs 150 crops.

    python benchmarks/evaluation.py [--width-mult 0.125] [--fc-width 512]
        [--images 2] [--scales 256,384,512] [--out benchmarks/results/evaluation.json]

Net D (Table 1) by default width-reduced (``--width-mult 0.125 --fc-width
512``: every conv 1/8 as wide, about 1/64 of the conv MACs) so that a CPU run
stays under a few minutes; ``--width-mult 1 --fc-width 4096`` is the paper's
net (use an accelerator).  Images: real photos of different aspect ratios
(scikit-image's astronaut 512x512, coffee 400x600, chelsea 300x451, rocket
427x640), already decoded: decoding and rescaling are the input pipeline's
cost (benchmarks/input_pipeline.py), not the protocol's.

Every protocol runs once to compile (not timed), then is timed over the same
images through ``vgg_jax.evaluate.scale_posteriors`` (the command's code
path) at every scale Q.  Rows: images/s (wall clock) and CPU-seconds per
image (all threads of this process; robust to other programs sharing the
machine).  The last lines give the cost of dense evaluation against
150-crop multi-crop evaluation per image, measured in this one run, next to
the ratio of multiply-accumulates counted from the layer table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from vgg_jax import conventions, evaluate, preprocess  # noqa: E402
from vgg_jax.models import count_macs, create_model, net_spec  # noqa: E402


def photos(n: int) -> list[np.ndarray]:
  import skimage.data
  out = [skimage.data.astronaut(), skimage.data.coffee(),
         skimage.data.chelsea(), skimage.data.rocket()]
  return [np.ascontiguousarray(p[..., :3]) for p in out[:n]]


def cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system


def run_protocol(model, images, parts, scales, batch_size):
  """One pass: every image at every Q under `parts`; returns posteriors."""
  out = {}
  for q in scales:
    rescaled = [preprocess.rescale_shorter_side(im, q) for im in images]
    stream = ({"image": im, "label": 0, "index": i, "name": str(i),
               "mask": 1, "decode_error": ""} for i, im in enumerate(rescaled))
    post, *_ = evaluate.scale_posteriors(
        model, stream, num_examples=len(images),
        convention=conventions.PAPER, parts=parts, batch_size=batch_size)
    for p, v in post.items():
      out[f"{p}@{q}"] = v
  return out


def dense_macs(spec, images, scales, num_classes):
  """MACs of dense evaluation (image + flip) at every Q, from the table."""
  total = 0
  for im in images:
    for q in scales:
      h, w = preprocess.rescaled_size(im.shape[0], im.shape[1], q)
      total += 2 * _macs_hw(spec, h, w, num_classes)
  return total / len(images)


def _macs_hw(spec, h, w, num_classes, in_channels=3):
  total, c_in = 0, in_channels
  for c in spec.convs:
    if c.stride != 1 or c.padding != "SAME":
      h = (h + 2 * c.padding - c.kernel) // c.stride + 1
      w = (w + 2 * c.padding - c.kernel) // c.stride + 1
    total += h * w * c.kernel * c.kernel * c_in * c.features
    c_in = c.features
    if c.pool_after:
      h = (h - spec.pool_window) // spec.pool_stride + 1
      w = (w - spec.pool_window) // spec.pool_stride + 1
  h, w = h - spec.head_window + 1, w - spec.head_window + 1
  return total + h * w * (spec.head_window ** 2 * c_in * spec.fc_width
                          + spec.fc_width ** 2 + spec.fc_width * num_classes)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--net", default="D")
  ap.add_argument("--width-mult", type=float, default=0.125)
  ap.add_argument("--fc-width", type=int, default=512)
  ap.add_argument("--num-classes", type=int, default=1000)
  ap.add_argument("--images", type=int, default=2)
  ap.add_argument("--scales", default="256,384,512")
  ap.add_argument("--batch-size", type=int, default=2)
  ap.add_argument("--out", default=str(
      ROOT / "benchmarks/results/evaluation.json"))
  args = ap.parse_args(argv)
  scales = [int(v) for v in args.scales.split(",")]
  model = create_model(args.net, rngs=nnx.Rngs(0), init="he",
                       width_mult=args.width_mult, fc_width=args.fc_width,
                       num_classes=args.num_classes)
  images = photos(args.images)
  protocols = {"centre": ("centre",), "dense": ("dense",),
               "multicrop": ("multicrop",)}
  rows = {}
  for name, parts in protocols.items():
    run_protocol(model, images, parts, scales, args.batch_size)  # compile
    c0, t0 = cpu_seconds(), time.perf_counter()
    run_protocol(model, images, parts, scales, args.batch_size)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    rows[name] = {"images_per_s": len(images) / wall,
                  "wall_s_per_image": wall / len(images),
                  "cpu_s_per_image": cpu / len(images)}
  # dense+multicrop costs the sum of its two parts (one decode, both views).
  rows["dense+multicrop"] = {
      k: (rows["dense"][k] + rows["multicrop"][k]) if k != "images_per_s"
      else 1 / (1 / rows["dense"][k] + 1 / rows["multicrop"][k])
      for k in rows["dense"]}
  spec = net_spec(args.net, width_mult=args.width_mult,
                  fc_width=args.fc_width)
  crops = 2 * 25 * len(scales)
  macs_crops = crops * count_macs(spec, 224, num_classes=args.num_classes)
  macs_dense = dense_macs(spec, images, scales, args.num_classes)
  ratio = {
      "multicrop_over_dense_wall": rows["multicrop"]["wall_s_per_image"]
      / rows["dense"]["wall_s_per_image"],
      "multicrop_over_dense_cpu": rows["multicrop"]["cpu_s_per_image"]
      / rows["dense"]["cpu_s_per_image"],
      "multicrop_over_dense_macs": macs_crops / macs_dense,
      "crops_per_image": crops,
  }
  desc = (f"net {args.net}, width_mult {args.width_mult}, fc_width "
          f"{args.fc_width}, {args.num_classes} classes; {len(images)} photos;"
          f" Q = {scales}; batch {args.batch_size} images")
  print(desc)
  print(f"{'protocol':18s} {'images/s':>9s} {'wall s/img':>11s} "
        f"{'CPU s/img':>10s}")
  for name, r in rows.items():
    print(f"{name:18s} {r['images_per_s']:9.3f} {r['wall_s_per_image']:11.3f}"
          f" {r['cpu_s_per_image']:10.3f}")
  print(f"multi-crop ({crops} crops) / dense, per image: "
        f"{ratio['multicrop_over_dense_wall']:.2f}x wall, "
        f"{ratio['multicrop_over_dense_cpu']:.2f}x CPU time, "
        f"{ratio['multicrop_over_dense_macs']:.2f}x MACs (layer table)")
  result = {
      "command": "python benchmarks/evaluation.py " + " ".join(
          argv if argv is not None else sys.argv[1:]),
      "config": {"net": args.net, "width_mult": args.width_mult,
                 "fc_width": args.fc_width, "num_classes": args.num_classes,
                 "images": len(images), "scales": scales,
                 "batch_size": args.batch_size},
      "machine": {"cpu": platform.processor() or platform.machine(),
                  "cpu_count": os.cpu_count(),
                  "jax_backend": jax.default_backend(),
                  "devices": [str(d) for d in jax.devices()],
                  "load_average": os.getloadavg()},
      "protocols": rows, "dense_vs_multicrop": ratio,
      "macs_per_image": {"dense": macs_dense, "multicrop": macs_crops},
  }
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(".tmp")
  tmp.write_text(json.dumps(result, indent=1) + "\n")
  tmp.replace(out)
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
