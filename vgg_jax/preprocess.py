"""Per-example image transforms of the paper's sections 3.1 and 3.2.

numpy / OpenCV only (no JAX), so they run in grain worker processes.  Every
function takes and returns channels-last arrays; images are uint8 RGB unless
stated otherwise.

Training (section 3.1): ``rescale_shorter_side`` to S (fixed or drawn per
image from [S_min, S_max]), ``random_crop`` 224, ``horizontal_flip`` with
probability 1/2, ``pca_color_shift`` (Krizhevsky's "PCA lighting"), then the
model's ``InputConvention.normalise`` (mean RGB subtraction etc.).

Evaluation (section 3.2): ``rescale_shorter_side`` to Q, then the whole image
(dense), ``center_crop`` or ``grid_crops`` (the 5x5 multi-crop grid).

Choices (see docs/data.md):
- Resizing (the paper does not say): OpenCV ``INTER_AREA`` (an anti-aliased
  box filter) when shrinking by 2x or more, ``INTER_LINEAR`` (bilinear) when
  shrinking by less than 2x or enlarging.  INTER_AREA at non-integer factors
  costs ~7x bilinear, and below 2x bilinear aliases little; JPEGs reach the
  resize already DCT-downscaled to within 2x of the target.
- JPEG decoding with simplejpeg (libjpeg-turbo); when the caller says how
  small the image may get (``min_side``), libjpeg-turbo decodes directly at a
  1/2, 1/4 or 1/8 scale in the DCT domain, keeping the shorter side
  >= min_side, which is faster for photos at least twice S; the remaining
  factor (< 2) is done by ``rescale_shorter_side``.
- PCA colour shift in RGB 0-255 space, before mean subtraction: see
  ``pca_color_shift``.
"""

from __future__ import annotations

import dataclasses
import io

import cv2
import numpy as np
import simplejpeg
from PIL import Image

try:  # The optional C extension (vgg_jax/_jpegcrop.c); see decode_rescaled_crop.
  from vgg_jax import _jpegcrop
except ImportError:  # not built (no compiler / libjpeg headers): full decodes
  _jpegcrop = None

# OpenCV's own thread pool would fight grain's worker processes for cores.
cv2.setNumThreads(1)


class DecodeError(ValueError):
  """An image's bytes could not be turned into an RGB array (reason in text)."""


_JPEG_MAGIC = b"\xff\xd8"


# Shrinking by less than this factor uses bilinear interpolation, by more
# INTER_AREA; see rescale_shorter_side.
AREA_MIN_FACTOR = 2.0


def _decode_with_pillow(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as im:
    im.load()  # Raises on truncated data (LOAD_TRUNCATED_IMAGES stays False).
    if im.mode != "RGB":
      # CMYK (Adobe-inverted CMYK JPEGs included), L, LA, P, RGBA, I;16 ...
      if im.mode in ("I;16", "I;16B", "I", "F"):
        im = im.point(lambda v: v / 256).convert("L")
      im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def _dct_denominator(h: int, w: int, min_side: int | None) -> int:
  """Scale by 1/8, 1/4 or 1/2: the largest keeping the shorter side >= min_side.

  libjpeg-turbo's other k/8 scales are slower than these (3/8 is slower
  than 1/2; 5/8-7/8 slower than a full decode).
  """
  for d in (8, 4, 2):
    if min_side and min(h, w) // d >= int(min_side):
      return d
  return 1


def decode_image(data: bytes, *, min_side: int | None = None) -> np.ndarray:
  """Encoded image bytes -> uint8 (H, W, 3) RGB.

  JPEGs go through simplejpeg.  With ``min_side`` the decoder may shrink the
  image in the DCT domain (by 1/2, 1/4 or 1/8) as long as the shorter side
  stays >= ``min_side``, so a later ``rescale_shorter_side(img, S)`` with
  S <= min_side sees enough pixels.  CMYK JPEGs (which libjpeg-turbo cannot
  convert to RGB), PNGs or other formats (including a PNG named .JPEG) go
  through Pillow.  Grayscale becomes 3 equal channels.

  Raises:
    DecodeError: empty, truncated or otherwise undecodable data.
  """
  if data is None or len(data) == 0:
    raise DecodeError("empty file (0 bytes)")
  data = bytes(data) if not isinstance(data, bytes) else data
  jpeg_error = None
  if data[:2] == _JPEG_MAGIC:
    try:
      kwargs = {}
      h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
      d = _dct_denominator(h, w, min_side)
      if d > 1:
        kwargs = dict(min_height=-(-h // d), min_width=-(-w // d))
      if colorspace not in ("CMYK", "YCCK"):
        img = simplejpeg.decode_jpeg(data, colorspace="RGB", **kwargs)
        return img
    except ValueError as e:  # simplejpeg's error for corrupt/truncated data.
      jpeg_error = e
  try:
    img = _decode_with_pillow(data)
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ...
    reason = jpeg_error or e
    raise DecodeError(f"cannot decode image ({len(data)} bytes): {reason}") from e
  # If simplejpeg's strict mode objected (e.g. "extraneous bytes before
  # marker", a warning on some ImageNet files) but Pillow loaded every byte,
  # the image is complete: keep it.  Truncated data fails in both.
  if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) == 0:
    raise DecodeError(f"decoded to an unexpected shape {img.shape}")
  return img


def rescaled_size(height: int, width: int, side: int) -> tuple[int, int]:
  """(new_h, new_w): the shorter side becomes ``side``, aspect kept."""
  if height <= width:
    return side, max(1, int(round(width * side / height)))
  return max(1, int(round(height * side / width))), side


def rescale_shorter_side(img: np.ndarray, side: int) -> np.ndarray:
  """Isotropic rescale so that min(H, W) == side (paper's S and Q)."""
  h, w = img.shape[:2]
  new_h, new_w = rescaled_size(h, w, int(side))
  if (new_h, new_w) == (h, w):
    return img
  # INTER_AREA (anti-aliased box filter) costs ~7x bilinear at non-integer
  # factors; below a factor of 2 bilinear's aliasing is mild, and JPEGs
  # already arrive DCT-downscaled to within a factor of 2 of the target.
  interp = (cv2.INTER_AREA if h >= AREA_MIN_FACTOR * new_h
            else cv2.INTER_LINEAR)
  out = cv2.resize(img, (new_w, new_h), interpolation=interp)
  if out.ndim == 2:  # cv2 drops a singleton channel axis.
    out = out[..., None]
  return out


def _check_crop(img: np.ndarray, size: int):
  h, w = img.shape[:2]
  if h < size or w < size:
    raise ValueError(
        f"cannot take a {size}x{size} crop from a {h}x{w} image; rescale it "
        f"so that its shorter side is >= {size} first")


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
  """The central size x size crop (offsets rounded down, like torchvision)."""
  _check_crop(img, size)
  h, w = img.shape[:2]
  top = (h - size) // 2
  left = (w - size) // 2
  return img[top:top + size, left:left + size]


def random_crop_offsets(shape, size: int, rng: np.random.Generator, *,
                        central_square: bool = False) -> tuple[int, int]:
  """(top, left) of a uniformly random size x size crop of an image of shape
  (H, W, ...): the draws ``random_crop`` makes.

  ``central_square``: the crop lies inside the central min(H, W) square
  (placed as ``center_crop`` places it), as Krizhevsky et al. trained
  AlexNet (random 224 crops of the central 256x256 square).
  """
  h, w = shape[:2]
  if h < size or w < size:
    raise ValueError(
        f"cannot take a {size}x{size} crop from a {h}x{w} image; rescale it "
        f"so that its shorter side is >= {size} first")
  top0 = left0 = 0
  if central_square:
    side = min(h, w)
    top0, left0 = (h - side) // 2, (w - side) // 2
    h = w = side
  top = int(rng.integers(0, h - size + 1))
  left = int(rng.integers(0, w - size + 1))
  return top0 + top, left0 + left


def random_crop(img: np.ndarray, size: int, rng: np.random.Generator, *,
                central_square: bool = False) -> np.ndarray:
  """A size x size crop at a uniformly random position (inside the central
  square with ``central_square``)."""
  top, left = random_crop_offsets(img.shape, size, rng,
                                  central_square=central_square)
  return img[top:top + size, left:left + size]


def horizontal_flip(img: np.ndarray) -> np.ndarray:
  """Mirror left-right (axis -2 of a channels-last image or batch).

  Returns a contiguous copy made by OpenCV: copying numpy's reversed view
  later (np.stack, astype) is ~30x slower than cv2.flip.
  """
  if img.ndim < 3 or img.shape[-1] > 4:
    return np.ascontiguousarray(img[..., :, ::-1, :])
  w, c = img.shape[-2:]
  if img.ndim == 3 and img.strides[1:] == (c * img.itemsize, img.itemsize):
    out = cv2.flip(img, 1)  # a crop view (positive strides) is fine as is
  else:
    out = cv2.flip(np.ascontiguousarray(img).reshape(-1, w, c), 1)
  return out.reshape(img.shape)


# ----------------------------------------------------------------------------
# Crop-aware decoding: rescale + crop (+ flip) computed from only the part of
# the JPEG that the crop sees.


def _jpeg_fast_geometry(data, side: int):
  """(h, w, denom) of the DCT-scaled image that ``decode_image(data,
  min_side=side)`` decodes with libjpeg-turbo, from the header alone; None
  when ``decode_rescaled_crop`` must take the full-decode path (not a JPEG,
  CMYK/YCCK, no C extension, or data that does not end in the EOI marker:
  a truncated file must fail as a whole, not according to where its crop
  lies)."""
  if (_jpegcrop is None or not isinstance(data, bytes) or len(data) < 4
      or data[:2] != _JPEG_MAGIC or data[-2:] != b"\xff\xd9"):
    return None
  try:
    h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
  except ValueError:
    return None
  if colorspace in ("CMYK", "YCCK") or h <= 0 or w <= 0:
    return None
  d = _dct_denominator(h, w, side)
  return -(-h // d), -(-w // d), d


def rescaled_jpeg_size(data, side: int) -> tuple[int, int] | None:
  """(H, W) of ``rescale_shorter_side(decode_image(data, min_side=side),
  side)``, read from the JPEG header without decoding; None when only a
  decode can tell (e.g. a PNG) or the fast path does not apply."""
  g = _jpeg_fast_geometry(data, side)
  return None if g is None else rescaled_size(g[0], g[1], int(side))


def _fast_crop_args(data, side: int, top: int, left: int, size: int):
  """decode_crop's arguments for the crop-aware path, or None."""
  g = _jpeg_fast_geometry(data, side)
  if g is None:
    return None
  hd, wd, denom = g
  nh, nw = rescaled_size(hd, wd, side)
  if not (0 <= top <= nh - size and 0 <= left <= nw - size
          and hd < AREA_MIN_FACTOR * nh):
    return None
  # OpenCV's scale (source / destination) and the source pixels that output
  # rows/columns [top, top + size) / [left, left + size) read, plus a margin
  # (fancy chroma upsampling treats the ends of a partial decode as image
  # edges).
  sy, sx = 1.0 / (nh / hd), 1.0 / (nw / wd)
  y0 = max(int(np.floor((top + 0.5) * sy - 0.5)) - 1, 0)
  y1 = min(int(np.floor((top + size - 0.5) * sy - 0.5)) + 3, hd)
  x0 = max(int(np.floor((left + 0.5) * sx - 0.5)) - 2, 0)
  x1 = min(int(np.floor((left + size - 0.5) * sx - 0.5)) + 4, wd)
  return data, denom, (x0, y0, x1 - x0, y1 - y0), left, sx, top, sy


def decode_rescaled_crop(data: bytes, side: int, top: int, left: int,
                         size: int, flip: bool = False, *,
                         fast: bool = True) -> np.ndarray:
  """The (size, size) crop at (top, left) of the image rescaled to ``side``.

  Equals ``rescale_shorter_side(decode_image(data, min_side=side), side)
  [top:top + size, left:left + size]`` (mirrored by ``horizontal_flip`` if
  ``flip``), but for a JPEG decodes only the rectangle the crop samples
  (libjpeg-turbo's jpeg_skip_scanlines/jpeg_crop_scanline, in the C
  extension ``_jpegcrop``) and resamples only the crop: bilinear with
  OpenCV's geometry and fixed-point weights, so the result matches the
  reference within interpolation rounding (at most 2 grey levels, ~90% of
  values equal: OpenCV's SIMD code rounds intermediate sums differently;
  tested on real photos).  Shrinking by 2x or more after DCT scaling (area
  interpolation), non-JPEG data, CMYK, corrupt or truncated files, or no C
  extension take the reference path (``fast=False`` forces it), where a
  crop that no longer fits (a decoder other than libjpeg-turbo can give a
  1-pixel different size) is moved inside.

  Raises:
    DecodeError: as ``decode_image``.
  """
  side, size = int(side), int(size)
  args = _fast_crop_args(data, side, top, left, size) if fast else None
  if args is not None:
    out = np.empty((size, size, 3), np.uint8)
    # False: corrupt data (or a colour space libjpeg-turbo does not make
    # RGB): the reference path decides.
    if _jpegcrop.decode_crop(*args[:3], out, *args[3:], flip):
      return out
  img = rescale_shorter_side(decode_image(data, min_side=side), side)
  h, w = img.shape[:2]
  top, left = min(max(top, 0), h - size), min(max(left, 0), w - size)
  if top < 0 or left < 0:
    _check_crop(img, size)
  img = img[top:top + size, left:left + size]
  return horizontal_flip(img) if flip else img


_AFFINE = {}


def _affine_of(convention, channels: int = 3):
  """(a, mean / scale, bgr) with ``convention.normalise(x + shift) =
  x * a + (shift - mean / scale) * a`` per output channel (float32
  (channels,)); cached, as it is needed per image."""
  key = (convention.channel_order, convention.scale, tuple(convention.mean),
         tuple(convention.std), channels)
  if key not in _AFFINE:
    scale = np.float32(convention.scale)
    mean = np.broadcast_to(np.asarray(convention.mean, np.float32), (channels,))
    std = np.broadcast_to(np.asarray(convention.std, np.float32), (channels,))
    _AFFINE[key] = (scale / std, mean / scale,
                    convention.channel_order == "BGR")
  return _AFFINE[key]


def decode_rescaled_crop_into(out: np.ndarray, data: bytes, side: int,
                              top: int, left: int, flip: bool, convention,
                              rgb_shift=None, mean_window=None) -> None:
  """``normalise_into(out, decode_rescaled_crop(...), convention,
  rgb_shift, mean_window)``, in one pass when the crop-aware path applies:
  the C extension writes ``convention.normalise(crop + rgb_shift)`` (the
  same rounded pixels, then the affine map) straight into the float32 slot
  (and a mean window, if any, is subtracted afterwards)."""
  convention.check_mean_window(mean_window)
  size = out.shape[0]
  args = None
  if (out.shape == (size, size, 3) and out.dtype == np.float32
      and out.flags.c_contiguous):
    args = _fast_crop_args(data, int(side), top, left, size)
  if args is not None:
    a, mean_over_scale, bgr = _affine_of(convention)
    if rgb_shift is None:
      b = -mean_over_scale * a
    else:
      shift = np.asarray(rgb_shift, np.float32).reshape(3)
      b = ((shift[::-1] if bgr else shift) - mean_over_scale) * a
    if _jpegcrop.decode_crop(*args[:3], out, *args[3:], flip,
                             scale=a.tolist(), offset=b.tolist(), bgr=bgr):
      if mean_window is not None:
        subtract_mean_window(out, mean_window, convention)
      return
  crop = decode_rescaled_crop(data, side, top, left, size, flip, fast=False)
  normalise_into(out, crop, convention, rgb_shift, mean_window)


def grid_crops(img: np.ndarray, size: int = 224, grid: int = 5) -> np.ndarray:
  """The paper's multi-crop grid: grid x grid crops, evenly spaced.

  Offsets are round(i * (H - size) / (grid - 1)) for i = 0..grid-1 (corners
  and centre included), row-major.  Returns (grid*grid, size, size, C).  The
  paper also evaluates the flip of every crop: ``horizontal_flip`` of the
  result gives those.
  """
  _check_crop(img, size)
  h, w = img.shape[:2]
  if grid == 1:
    return center_crop(img, size)[None]
  tops = [int(round(i * (h - size) / (grid - 1))) for i in range(grid)]
  lefts = [int(round(j * (w - size) / (grid - 1))) for j in range(grid)]
  return np.stack([img[t:t + size, l:l + size] for t in tops for l in lefts])


def ten_crops(img: np.ndarray, size: int = 224) -> np.ndarray:
  """Krizhevsky et al.'s test patches (the AlexNet baseline, paper §4.5):
  the central min(H, W) square of the image (256 x 256 for an image
  rescaled to 256), then its four corner and its centre ``size`` crops, in
  the order top-left, top-right, bottom-left, bottom-right, centre.
  Returns (5, size, size, C); ``horizontal_flip`` gives the other five."""
  square = center_crop(img, min(img.shape[:2]))
  _check_crop(square, size)
  s = square.shape[0]
  corners = [square[t:t + size, l:l + size]
             for t in (0, s - size) for l in (0, s - size)]
  return np.stack(corners + [center_crop(square, size)])


PROTOCOL_VIEWS = ("centre", "multicrop", "tencrop", "dense")


def protocol_views(img: np.ndarray, protocol: str, crop: int, grid: int = 5,
                   *, flips: bool) -> np.ndarray:
  """The crops a test protocol takes of a rescaled image (paper §3.2).

  "centre": the central ``crop`` x ``crop`` crop, (1, crop, crop, C).
  "multicrop": the ``grid`` x ``grid`` crops, (grid^2, crop, crop, C), and
  with ``flips`` their mirror images after them (2 grid^2 crops).
  "tencrop": AlexNet's test (``ten_crops``): 5 crops of the central square,
  and with ``flips`` their mirror images after them (10 crops).
  "dense": the whole image.  The one place the views are cut (the input
  pipeline's batched views and the dense engine's batchers both call it).
  """
  if protocol == "centre":
    return center_crop(img, crop)[None]
  if protocol in ("multicrop", "tencrop"):
    crops = (grid_crops(img, crop, grid) if protocol == "multicrop"
             else ten_crops(img, crop))
    return np.concatenate([crops, horizontal_flip(crops)]) if flips else crops
  if protocol == "dense":
    return img
  raise ValueError(f"unknown protocol view {protocol!r}; expected one of "
                   f"{PROTOCOL_VIEWS}")


def pca_shift_vector(rng: np.random.Generator, eigval, eigvec,
                     std: float = 0.1) -> np.ndarray:
  """The per-image RGB offset of Krizhevsky's PCA lighting, in 0-255 units.

  shift = 255 * eigvec @ (alpha * eigval), alpha ~ N(0, std) (3 draws).
  ``eigval``/``eigvec`` are those of the RGB covariance on the 0-1 scale
  (paper §3.1's colour shift, after Krizhevsky et al.; columns of ``eigvec`` are the eigenvectors), the form in
  which they are published and in which ``python -m vgg_jax.data stats``
  writes them.  Re-implementations (fb.resnet.torch, timm) add
  eigvec @ (alpha * eigval) to images in [0, 1]; in 0-255 space the same
  shift is 255 times that.
  """
  eigval = np.asarray(eigval, np.float64).reshape(3)
  eigvec = np.asarray(eigvec, np.float64).reshape(3, 3)
  alpha = rng.normal(0.0, std, size=3)
  return (255.0 * eigvec @ (alpha * eigval)).astype(np.float32)


def pca_color_shift(img_float_rgb_0_255: np.ndarray, rng: np.random.Generator,
                    eigval, eigvec, std: float = 0.1) -> np.ndarray:
  """Adds one PCA-lighting offset (``pca_shift_vector``) to every pixel.

  Input and output: float RGB in 0-255 (not clipped, as in Krizhevsky et al.;
  the mean is subtracted afterwards by ``InputConvention.normalise``).
  """
  shift = pca_shift_vector(rng, eigval, eigvec, std)
  return np.asarray(img_float_rgb_0_255, np.float32) + shift


def subtract_mean_window(out: np.ndarray, mean_window, convention) -> None:
  """``out -= `` what subtracting ``mean_window`` (RGB 0-255, the per-pixel
  mean under the view) before normalising would have removed: the
  normalisation is affine per channel, so ``normalise(x - m) =
  normalise(x) - to_order(m) * scale / std``."""
  a, _, bgr = _affine_of(convention, out.shape[-1])
  m = np.asarray(mean_window, np.float32)
  if bgr and out.shape[-1] == 3:
    m = m[..., ::-1]
  out -= m * a if np.any(a != 1) else m


def normalise_images(images: np.ndarray, convention, rgb_shift=None,
                     mean_window=None) -> np.ndarray:
  """``convention.normalise(images + rgb_shift, mean_window)``, computed fast.

  ``images``: uint8 (..., H, W, C) RGB; ``rgb_shift``: None, (C,) or one
  (C,) row per leading index (e.g. (B, 3) for a batch), in RGB 0-255 units
  (the PCA colour shift).  Same result as ``InputConvention.normalise`` up to
  float32 rounding, but as one affine map x * a + b over rows of W*C values:
  numpy's broadcast over a trailing axis of 3 is ~10x slower.
  ``mean_window``: the per-pixel mean under each image (mean-image
  conventions only; ``vgg_jax/mean_image.py``), shape of ``images``.
  """
  convention.check_mean_window(mean_window)
  if mean_window is not None:
    out = normalise_images(images, dataclasses.replace(convention,
                                                       mean_image=""),
                           rgb_shift)
    subtract_mean_window(out, mean_window, convention)
    return out
  images = np.asarray(images)
  *lead, h, w, c = images.shape
  scale = np.float32(convention.scale)
  mean = np.broadcast_to(np.asarray(convention.mean, np.float32), (c,))
  std = np.broadcast_to(np.asarray(convention.std, np.float32), (c,))
  if convention.channel_order == "BGR" and c == 3:
    images = cv2.cvtColor(np.ascontiguousarray(images).reshape(-1, w, 3),
                          cv2.COLOR_RGB2BGR).reshape(images.shape)
    if rgb_shift is not None:
      rgb_shift = np.asarray(rgb_shift)[..., ::-1]
  a = scale / std
  b = -mean / std
  n = int(np.prod(lead)) if lead else 1
  x = images.reshape(n, h, w * c).astype(np.float32)
  if np.any(a != 1):
    x *= np.tile(a, w)
  if rgb_shift is None:
    x += np.tile(b, w)
  else:
    offs = np.asarray(rgb_shift, np.float32).reshape(-1, c) * a + b  # (n|1, c)
    x += np.tile(offs, (1, w))[:, None, :]
  return x.reshape(images.shape)


def normalise_into(out: np.ndarray, image: np.ndarray, convention,
                   rgb_shift=None, mean_window=None) -> None:
  """``out[...] = convention.normalise(image + rgb_shift, mean_window)``
  for one image.

  ``image``: uint8 (H, W, C) RGB, any view with positive strides (e.g. a
  crop); ``out``: a contiguous float32 (H, W, C) slot (e.g. ``batch[j]``).
  One OpenCV pass (uint8 -> float32 minus a per-channel value) replaces
  crop copy, stacking, conversion and offset, about 4x cheaper.
  """
  convention.check_mean_window(mean_window)
  h, w, c = image.shape
  if c not in (1, 3) or out.dtype != np.float32 or not out.flags.c_contiguous:
    out[...] = normalise_images(image, convention, rgb_shift, mean_window)
    return
  a, value, bgr = _affine_of(convention, c)
  bgr = bgr and c == 3
  if rgb_shift is not None:
    shift = np.asarray(rgb_shift, np.float32).reshape(c)
    value = value - (shift[::-1] if bgr else shift)
  if bgr:
    image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
  elif image.strides[1] != c or image.strides[2] != 1:
    image = np.ascontiguousarray(image)
  # ((x + shift) * scale - mean) / std = (x - (mean / scale - shift)) * a
  if c == 1:
    cv2.subtract(image.reshape(h, w), float(value[0]),
                 dst=out.reshape(h, w), dtype=cv2.CV_32F)
  else:
    cv2.subtract(image, (float(value[0]), float(value[1]), float(value[2]),
                         0.0), dst=out, dtype=cv2.CV_32F)
  if np.any(a != 1):
    flat = out.reshape(h, w * c)
    flat *= np.tile(a, w)
  if mean_window is not None:
    subtract_mean_window(out, mean_window, convention)
