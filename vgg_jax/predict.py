"""Classify images: top-5 classes, and where the net sees the top class.

    python -m vgg_jax.predict IMAGE [IMAGE...] --model DIR [--scale 384]
        [--heatmap out.png]

Dense evaluation (paper §3.2) at test scale Q (default: the model's training
scale, else 256): the fully-convolutional net on the whole rescaled image,
score map averaged, soft-max, averaged with the flipped image's.  Class
names come from the model's metadata, else (1000 classes) from the ImageNet
list that ships with TFDS.  ``--heatmap`` writes the soft-max of the class
score map for the top class (one value per score-map position; each
position sees a 224x224 window of the rescaled image, 32 px apart),
painted at those windows' centres and blended over the image, with OpenCV.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from vgg_jax import files, model_dir, preprocess
from vgg_jax.eval import dense as dense_lib
from vgg_jax.eval import protocols
from vgg_jax.models.geometry import map_stride


def class_names_of(metadata: dict, num_classes: int) -> list[str]:
  names = metadata.get("class_names")
  if names:
    return list(names)
  if num_classes == 1000:
    from vgg_jax import imagenet_classes
    return list(imagenet_classes.class_names())
  return [f"class {i}" for i in range(num_classes)]


def read_image(path: str | pathlib.Path, scale: int, channels: int = 3
               ) -> np.ndarray:
  """Decoded, rescaled (shorter side = scale) uint8 RGB (or grey) image."""
  data = pathlib.Path(path).read_bytes()
  img = preprocess.rescale_shorter_side(
      preprocess.decode_image(data, min_side=scale), scale)
  if channels == 1:  # nets trained on grey images (Fashion-MNIST)
    import cv2
    img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
  return img


def predict(loaded: model_dir.LoadedModel, images: list[np.ndarray], *,
            top: int = 5) -> list[dict]:
  """Dense posteriors of rescaled uint8 images -> top classes per image."""
  engine = dense_lib.DenseEngine(loaded.model, loaded.convention)
  names = class_names_of(loaded.metadata, loaded.model.num_classes)
  out = []
  for img in images:
    if img.ndim == 2:
      img = img[..., None]
    post = engine.images(img[None], np.asarray([img.shape[:2]], np.int32),
                         1)[0]
    order = np.argsort(-post)[:top]
    out.append({"posteriors": post,
                "top": [(int(i), names[i], float(post[i])) for i in order]})
  return out


def score_heatmap(loaded: model_dir.LoadedModel, img: np.ndarray,
                  class_index: int) -> np.ndarray:
  """(h, w) soft-max probability of class_index at every score-map position."""
  import jax
  import jax.numpy as jnp
  mean = None
  if loaded.convention.mean_image:  # the whole image: its mean canvas
    from vgg_jax import mean_image  # pylint: disable=g-import-not-at-top
    mean = jnp.asarray(mean_image.canvas(loaded.convention.mean_image,
                                         img.shape)[None])
  x = dense_lib.normalise_on_device(loaded.convention, jnp.asarray(img[None]),
                                    mean)
  scores = loaded.model.score_map(x)
  return np.asarray(jax.nn.softmax(scores, axis=-1)[0, ..., class_index])


def overlay(img: np.ndarray, heat: np.ndarray, *, stride: int = 32,
            window: int = 224, alpha: float = 0.5) -> np.ndarray:
  """The heat map (0..1) drawn over the image as a JET colour blend.

  Position (i, j) of the score map is the net applied to the window whose
  top-left corner is (stride*i, stride*j); its value is painted on the
  stride x stride block around that window's centre, blocks in between
  interpolated, and the border (less than half a window from the edge,
  which no window is centred on) takes the nearest value.
  """
  import cv2
  h, w = img.shape[:2]
  hm, wm = heat.shape
  block = cv2.resize(heat.astype(np.float32), (wm * stride, hm * stride),
                     interpolation=cv2.INTER_LINEAR)
  off = max(0, window // 2 - stride // 2)
  bottom = max(0, h - off - block.shape[0])
  right = max(0, w - off - block.shape[1])
  full = cv2.copyMakeBorder(block, off, bottom, off, right,
                            cv2.BORDER_REPLICATE)[:h, :w]
  colour = cv2.applyColorMap(np.clip(full * 255, 0, 255).astype(np.uint8),
                             cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB
  base = img if img.shape[2] == 3 else np.repeat(img, 3, axis=2)
  return (alpha * colour + (1 - alpha) * base).astype(np.uint8)


def write_png(path: str | pathlib.Path, rgb: np.ndarray) -> None:
  import cv2
  path = pathlib.Path(path)
  ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
  if not ok:
    raise ValueError(f"could not encode {path}")
  files.atomic_write(path, lambda f: f.write(buf.tobytes()))


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(prog="python -m vgg_jax.predict",
                              description=__doc__.split("\n")[0])
  p.add_argument("images", nargs="+")
  p.add_argument("--model", required=True,
                 help="imported-weights directory or training workdir")
  p.add_argument("--scale", type=int, default=None,
                 help="test scale Q (default: the model's S, else 256)")
  p.add_argument("--top", type=int, default=5)
  p.add_argument("--heatmap", default=None,
                 help="PNG path: the top class's score map over the image "
                 "(with several images: NAME_<i>.png)")
  args = p.parse_args(argv)
  loaded = model_dir.load_model(args.model)
  scale = args.scale
  if scale is None:
    s = loaded.train_scale
    scale = (s if isinstance(s, int) else
             protocols.paper_scales(s, single=True)[0] if s else 256)
  protocols.check_scales([scale], loaded.crop_size, args.model)
  results = []
  for i, path in enumerate(args.images):
    img = read_image(path, scale, loaded.model.in_channels)
    res = predict(loaded, [img], top=args.top)[0]
    res["image"] = str(path)
    print(f"{path} (dense, Q={scale}):")
    for rank, (idx, name, prob) in enumerate(res["top"], 1):
      print(f"  {rank}. {name:30s} {prob:7.2%}  (class {idx})")
    if args.heatmap:
      out = pathlib.Path(args.heatmap)
      if len(args.images) > 1:
        out = out.with_name(f"{out.stem}_{i}{out.suffix}")
      heat = score_heatmap(loaded, img, res["top"][0][0])
      write_png(out, overlay(img, heat, stride=map_stride(loaded.model.spec),
                             window=loaded.crop_size))
      res["heatmap"] = str(out)
      print(f"  heat map of '{res['top'][0][1]}' -> {out}")
    results.append(res)
  return results


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
