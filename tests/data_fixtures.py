"""Real photos and nasty files for the data tests (imported explicitly).

The photos are the public-domain colour images that scikit-image and
scikit-learn ship (astronaut, coffee, chelsea, rocket, Hubble deep field,
China, flower).  The nasty cases are the ones ImageNet's train split really
contains (CMYK JPEG, grayscale JPEG, a PNG named .JPEG) plus truncated and
zero-byte files and an image whose shorter side is under 224.
"""

from __future__ import annotations

import io
import pathlib
import tarfile

import numpy as np
from PIL import Image


def photos() -> list[np.ndarray]:
  """Seven real RGB photos, uint8 (H, W, 3), 300 to 1000 pixels a side."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  out = [skimage.data.astronaut(), skimage.data.coffee(),
         skimage.data.chelsea(), skimage.data.rocket(),
         skimage.data.hubble_deep_field()]
  out += list(load_sample_images().images)
  return [np.ascontiguousarray(x[..., :3]) for x in out]


def varied_photo(i: int, rng: np.random.Generator | None = None) -> np.ndarray:
  """Photo i (cycled) cut to a varied aspect and size, >= 240 a side."""
  ps = photos_cached()
  p = ps[i % len(ps)]
  rng = rng or np.random.default_rng(i)
  h, w = p.shape[:2]
  ch = int(rng.integers(min(h, 240), h + 1))
  cw = int(rng.integers(min(w, 240), w + 1))
  top = int(rng.integers(0, h - ch + 1))
  left = int(rng.integers(0, w - cw + 1))
  return np.ascontiguousarray(p[top:top + ch, left:left + cw])


_PHOTOS = None


def photos_cached():
  global _PHOTOS
  if _PHOTOS is None:
    _PHOTOS = photos()
  return _PHOTOS


def jpeg_bytes(img: np.ndarray, quality: int = 90) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def png_bytes(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  return buf.getvalue()


def cmyk_jpeg_bytes(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).convert("CMYK").save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def grey_jpeg_bytes(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).convert("L").save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def truncated_jpeg_bytes(img: np.ndarray) -> bytes:
  data = jpeg_bytes(img)
  return data[:len(data) // 2]


def nasty_files(seed: int = 0) -> dict[str, tuple[bytes, str]]:
  """name -> (bytes, kind) for the bad-input cases.

  kind: "cmyk", "grey", "png", "small" decode to RGB; "truncated" and
  "empty" cannot be decoded.
  """
  p = varied_photo(seed)
  small = np.ascontiguousarray(photos_cached()[2][:150, :200])
  return {
      "cmyk": (cmyk_jpeg_bytes(p), "cmyk"),
      "grey": (grey_jpeg_bytes(p), "grey"),
      "png": (png_bytes(p), "png"),
      "small": (jpeg_bytes(small), "small"),
      "truncated": (truncated_jpeg_bytes(p), "truncated"),
      "empty": (b"", "empty"),
  }


UNDECODABLE = ("truncated", "empty")


def make_image_folder(root: pathlib.Path, classes: list[str], per_class: int,
                      split: str = "train", nasty: bool = False,
                      seed: int = 0) -> dict[str, int]:
  """root/split/class/*.JPEG from real photos; returns {relpath: class_pos}.

  With ``nasty`` the first class also gets every case of ``nasty_files``
  (all named .JPEG, as in ImageNet).
  """
  out = {}
  k = seed
  for ci, cls in enumerate(classes):
    d = root / split / cls
    d.mkdir(parents=True, exist_ok=True)
    for j in range(per_class):
      name = f"{cls}_{j}.JPEG"
      (d / name).write_bytes(jpeg_bytes(varied_photo(k)))
      out[f"{split}/{cls}/{name}"] = ci
      k += 1
  if nasty:
    cls = classes[0]
    for tag, (data, _) in nasty_files(seed).items():
      name = f"{cls}_nasty_{tag}.JPEG"
      (root / split / cls / name).write_bytes(data)
      out[f"{split}/{cls}/{name}"] = 0
  return out


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def make_ilsvrc_tars(manual_dir: pathlib.Path, synsets: list[str],
                     per_class: int, num_val: int, nasty: bool = True):
  """ILSVRC2012_img_train.tar (per-synset tars) and ILSVRC2012_img_val.tar.

  Returns (train_names {file_name: synset}, val_names [file_name ...]).  The
  validation files are ILSVRC2012_val_00000001.JPEG ... so that TFDS' own
  validation_labels.txt (one synset per line, in file-name order) labels them.
  """
  manual_dir.mkdir(parents=True, exist_ok=True)
  train_names = {}
  k = 0
  with tarfile.open(manual_dir / "ILSVRC2012_img_train.tar", "w") as outer:
    for si, syn in enumerate(synsets):
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode="w") as inner:
        for j in range(per_class):
          name = f"{syn}_{j + 1}.JPEG"
          _add_bytes(inner, name, jpeg_bytes(varied_photo(k)))
          train_names[name] = syn
          k += 1
        if nasty and si == 0:
          for tag, (data, _) in nasty_files().items():
            name = f"{syn}_nasty_{tag}.JPEG"
            _add_bytes(inner, name, data)
            train_names[name] = syn
      _add_bytes(outer, f"{syn}.tar", buf.getvalue())
  val_names = []
  with tarfile.open(manual_dir / "ILSVRC2012_img_val.tar", "w") as tar:
    for i in range(num_val):
      name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
      _add_bytes(tar, name, jpeg_bytes(varied_photo(100 + i)))
      val_names.append(name)
  return train_names, val_names
