"""How much Caffe's ceil pooling moves the dense score map of real photos.

    python benchmarks/pool_rounding.py     # ~9 min on this 2-core CPU VM

(docs/evaluation.md, "Caffe's pooling"; writes
benchmarks/results/pool_rounding.json).

Dense evaluation (paper §3.2) of skimage's photos (chelsea, coffee,
astronaut, rocket: real photographs shipped with scikit-image) at the
paper's test scales Q = 256, 384, 512 with the same weights twice: pooling
rounded down (``pool_rounding="floor"``, this code's training default) and
rounded up (``"ceil"``, Caffe's, in which the released VGG weights were
trained and evaluated).  Reported per photo and Q: both score-map sizes, the
largest change of a logit at the positions both maps share (relative to the
largest logit magnitude; the edge positions change because SAME padding sees
a partial window's values instead of zeros), the same for the logits
averaged over the map (what dense evaluation soft-maxes), the
total-variation distance between the two posteriors and whether the top
class agrees.

Weights: no real VGG weights are available offline here, so the net is D
at 1/4 width (FC 256, 1000 classes) with random He-initialised weights
(seed 0); a trained net's numbers will differ (its maps are more peaked).
Rerun with ``--weights DIR`` (an imported Caffe/Keras VGG,
``python -m vgg_jax.weights``) for the real numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from skimage import data as skdata
from skimage import transform as sktransform

from vgg_jax import conventions
from vgg_jax.files import atomic_write
from vgg_jax.models import create_model

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def rescale(photo: np.ndarray, q: int) -> np.ndarray:
  """Isotropic rescale to shorter side q (paper §3.2), uint8."""
  h, w = photo.shape[:2]
  s = q / min(h, w)
  size = (max(q, round(h * s)), max(q, round(w * s)))
  return sktransform.resize(photo, size, anti_aliasing=True,
                            preserve_range=True).round().astype(np.uint8)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--weights", default=None,
                 help="an imported VGG directory (default: random D x1/4)")
  p.add_argument("--scales", default="256,384,512")
  p.add_argument("--out", default="benchmarks/results/pool_rounding.json")
  args = p.parse_args(argv)
  if args.weights:
    from vgg_jax import model_dir  # pylint: disable=g-import-not-at-top
    loaded = model_dir.load_model(args.weights)
    kwargs = dict(loaded.metadata["model"])
    convention = loaded.convention
    state = nnx.state(loaded.model)
    what = f"weights from {args.weights}"
  else:
    kwargs = dict(name="D", num_classes=1000, width_mult=0.25, fc_width=256)
    convention = conventions.CAFFE
    state = nnx.state(create_model(**kwargs, init="he", rngs=nnx.Rngs(0)))
    what = "D x1/4 width, FC 256, random He init (seed 0)"
  nets = {}
  for rounding in ("floor", "ceil"):
    kw = dict(kwargs, pool_rounding=rounding)
    net = create_model(**kw, rngs=nnx.Rngs(0))
    nnx.update(net, state)
    nets[rounding] = nnx.jit(lambda m, x: m.score_map(x))
    nets[rounding + "_model"] = net
  rows = []
  t0 = time.time()
  for name in PHOTOS:
    photo = getattr(skdata, name)()
    for q in (int(s) for s in args.scales.split(",")):
      img = rescale(photo, q)
      x = jnp.asarray(convention.normalise(img[None]))
      maps = {r: np.asarray(nets[r](nets[r + "_model"], x))[0]
              for r in ("floor", "ceil")}
      f, c = maps["floor"], maps["ceil"]
      hh, ww = min(f.shape[0], c.shape[0]), min(f.shape[1], c.shape[1])
      shared = np.abs(f[:hh, :ww] - c[:hh, :ww]).max() / np.abs(f).max()
      post = {r: jax.nn.softmax(m.reshape(-1, m.shape[-1]).mean(0))
              for r, m in maps.items()}
      tv = 0.5 * float(np.abs(np.asarray(post["floor"] - post["ceil"])).sum())
      mean = {r: m.reshape(-1, m.shape[-1]).mean(0) for r, m in maps.items()}
      avg = float(np.abs(mean["floor"] - mean["ceil"]).max()
                  / np.abs(mean["floor"]).max())
      rows.append(dict(
          photo=name, q=q, image_hw=list(img.shape[:2]),
          map_floor=list(f.shape[:2]), map_ceil=list(c.shape[:2]),
          shared_max_rel_change=float(shared),
          averaged_logits_max_rel_change=avg, posterior_tv=tv,
          top1_same=bool(np.argmax(post["floor"]) == np.argmax(post["ceil"]))))
      print(f"{name:10s} Q={q}: {img.shape[0]}x{img.shape[1]}  map floor "
            f"{f.shape[0]}x{f.shape[1]}  ceil {c.shape[0]}x{c.shape[1]}  "
            f"shared positions max rel change {shared:.3f}  posterior TV "
            f"{tv:.2e}  averaged logits max rel change {avg:.3f}  top-1 same {rows[-1]['top1_same']}")
  result = dict(weights=what, machine=platform.machine(),
                cpus=os.cpu_count(), seconds=round(time.time() - t0, 1),
                rows=rows)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  text = json.dumps(result, indent=2).encode()
  atomic_write(args.out, lambda f: f.write(text))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
