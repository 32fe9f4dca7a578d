"""A picture of Appendix A's protocol 2 on one photo: the merged top boxes
with class names.

    python -m vgg_jax.localisation.predict IMAGE --model LOCALISER \\
        [--model LOC2] --classifier CLASSIFIER --scales 256 --boxes out.png

The classifier's dense posteriors at the scales give the top classes; each
localiser's box map at each scale gives one box per position and class; the
union is merged per class (``boxes.top_k_localisations``); each class's
best merged box is drawn with its name and posterior.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from PIL import Image, ImageDraw

from vgg_jax import files, preprocess
from vgg_jax.eval import dense as dense_lib
from vgg_jax.localisation import boxes as boxes_lib
from vgg_jax.localisation import evaluator as loc_eval
from vgg_jax.localisation.command import model_normalisation
from vgg_jax.model_dir import load_model
from vgg_jax.models import geometry

COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
           (245, 130, 48))


def localise(img: np.ndarray, localisers, classifier, scales, *, top: int = 5,
             threshold: float = boxes_lib.DEFAULT_MERGE_THRESHOLD):
  """[(class, box (4,) image pixels, posterior)] best class first."""
  post = []
  for q in scales:
    x = preprocess.rescale_shorter_side(img, q)
    eng = dense_lib.DenseEngine(classifier.model, classifier.convention)
    post.append(eng.images(x[None], np.array([x.shape[:2]], np.int32), 1)[0])
  post = np.mean(post, 0)
  classes = [int(c) for c in np.argsort(-post, kind="stable")[:top]]
  scores = {c: float(post[c]) for c in classes}
  parts = []
  for m, norm in localisers:
    eng = dense_lib.DenseEngine(m.model, m.convention, loc_eval.BoxMap())
    for q in scales:
      x = preprocess.rescale_shorter_side(img, q)
      out = eng.images(x[None], np.array([x.shape[:2]], np.int32), 1,
                       flips=False)
      parts.append(loc_eval.position_boxes(
          out["map"][0], out["hw"][0], x.shape[:2], img.shape[:2], classes,
          scores, window=loc_eval.window_size(m.model),
          stride=geometry.map_stride(m.model.spec), normalisation=norm))
  b, s, c = boxes_lib.union(*parts)
  merged = boxes_lib.top_k_localisations(b, s, c, classes, threshold=threshold)
  return [(cls, box, scores[cls]) for cls, box, _ in merged]


def draw(img: np.ndarray, found, class_names) -> Image.Image:
  pic = Image.fromarray(img).convert("RGB")
  d = ImageDraw.Draw(pic)
  for k, (cls, box, p) in enumerate(found):
    col = COLOURS[k % len(COLOURS)]
    x0, y0, x1, y1 = (float(v) for v in box)
    d.rectangle([x0, y0, x1, y1], outline=col, width=max(1, img.shape[0] // 150))
    name = class_names[cls] if class_names else str(cls)
    d.text((x0 + 2, y0 + 2), f"{k + 1}. {name} {p:.2f}", fill=col)
  return pic


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m vgg_jax.localisation.predict",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("image")
  p.add_argument("--model", action="append", required=True)
  p.add_argument("--classifier", required=True)
  p.add_argument("--scales", default=None,
                 help="comma-separated Q (default: the classifier's crop)")
  p.add_argument("--normalisation", default=None,
                 choices=boxes_lib.NORMALISATIONS)
  p.add_argument("--merge-threshold", type=float,
                 default=boxes_lib.DEFAULT_MERGE_THRESHOLD)
  p.add_argument("--top", type=int, default=5)
  p.add_argument("--boxes", required=True, help="output picture (.png)")
  args = p.parse_args(argv)
  try:
    with open(args.image, "rb") as f:
      img = preprocess.decode_image(f.read())
    cls = load_model(args.classifier)
    locs = [(load_model(m), model_normalisation(m, args.normalisation))
            for m in args.model]
    scales = ([int(v) for v in args.scales.split(",")] if args.scales
              else [cls.crop_size])
    found = localise(img, locs, cls, scales, top=args.top,
                     threshold=args.merge_threshold)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  names = cls.metadata.get("class_names")
  pic = draw(img, found, names)
  files.atomic_write(args.boxes, lambda f: pic.save(f, format="PNG"))
  print(json.dumps([{"class": int(c), "name": names[c] if names else None,
                     "box": [round(float(v), 1) for v in b], "posterior": s}
                    for c, b, s in found], indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
