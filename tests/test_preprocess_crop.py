"""Crop-aware decoding (preprocess.decode_rescaled_crop, the _jpegcrop C
extension) against the reference: decode, rescale, then crop and flip."""

import io
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import data_fixtures as F  # noqa: E402

from vgg_jax import conventions  # noqa: E402
from vgg_jax import input_pipeline as ip  # noqa: E402
from vgg_jax import preprocess as P  # noqa: E402

needs_ext = pytest.mark.skipif(
    P._jpegcrop is None,  # pylint: disable=protected-access
    reason="vgg_jax._jpegcrop not built (needs gcc and libjpeg62-turbo-dev)")


def _reference(data, side, top, left, size, flip):
  img = P.rescale_shorter_side(P.decode_image(data, min_side=side), side)
  crop = img[top:top + size, left:left + size]
  return P.horizontal_flip(crop) if flip else crop


class _Count:
  """Wraps the extension, counting the crops it really made."""

  def __init__(self, ext):
    self.ext, self.made = ext, 0

  def decode_crop(self, *args, **kw):
    ok = self.ext.decode_crop(*args, **kw)
    self.made += bool(ok)
    return ok


@pytest.fixture
def counted(monkeypatch):
  c = _Count(P._jpegcrop)  # pylint: disable=protected-access
  monkeypatch.setattr(P, "_jpegcrop", c)
  return c


@needs_ext
def test_fast_path_matches_resize_then_crop_on_photos(counted):
  rng = np.random.default_rng(0)
  photos = F.photos_cached()
  diffs, n = np.zeros(256, np.int64), 0
  # Photo 4 (Hubble, 872x1000) at S=256 is DCT-decoded at 1/2; the 300-px
  # cut at S=384 is enlarged; the others shrink by less than 2x.
  cases = [(photos[4], 256), (photos[0], 256), (photos[1], 224),
           (photos[5], 384), (photos[2][:300, :451], 384),
           (photos[3][:400, :350], 256)]
  for img, side in cases:
    data = F.jpeg_bytes(img)
    full = P.rescale_shorter_side(P.decode_image(data, min_side=side), side)
    assert P.rescaled_jpeg_size(data, side) == full.shape[:2]
    h, w = full.shape[:2]
    corners = [(0, 0), (h - 224, w - 224), (0, w - 224), (h - 224, 0)]
    spots = corners + [P.random_crop_offsets(full.shape, 224, rng)
                       for _ in range(6)]
    for k, (top, left) in enumerate(spots):
      flip = k % 2 == 1
      fast = P.decode_rescaled_crop(data, side, top, left, 224, flip)
      ref = full[top:top + 224, left:left + 224]
      ref = ref[:, ::-1] if flip else ref
      assert fast.shape == (224, 224, 3) and fast.dtype == np.uint8
      d = np.abs(fast.astype(int) - ref)
      diffs += np.bincount(d.ravel(), minlength=256)
      n += 1
  assert counted.made == n  # every crop came from the C extension
  # Same geometry; only the fixed-point rounding differs from OpenCV's.
  assert diffs[3:].sum() == 0, diffs[:8]
  assert diffs[0] / diffs.sum() > 0.8, diffs[:8]


@needs_ext
@pytest.mark.parametrize("save", [dict(subsampling=0), dict(subsampling=1),
                                  dict(progressive=True)],
                         ids=["444", "422", "progressive"])
def test_fast_path_other_jpeg_layouts(save, counted):
  img = F.photos_cached()[5][:, :500]  # 427 x 500
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=90, **save)
  data = buf.getvalue()
  for top, left, flip in [(0, 0, False), (32, 75, True), (19, 40, False)]:
    fast = P.decode_rescaled_crop(data, 256, top, left, 224, flip)
    ref = _reference(data, 256, top, left, 224, flip)
    assert np.abs(fast.astype(int) - ref).max() <= 2
  assert counted.made == 3


@needs_ext
def test_fast_path_exact_without_resize_and_for_grey(counted):
  photo = F.photos_cached()[0][:256, :300]  # shorter side already S
  data = F.jpeg_bytes(photo)
  for flip in (False, True):
    np.testing.assert_array_equal(
        P.decode_rescaled_crop(data, 256, 10, 70, 224, flip),
        _reference(data, 256, 10, 70, 224, flip))
  grey = F.grey_jpeg_bytes(F.photos_cached()[1])
  fast = P.decode_rescaled_crop(grey, 256, 5, 40, 224)
  assert np.abs(fast.astype(int) - _reference(grey, 256, 5, 40, 224,
                                               False)).max() <= 2
  np.testing.assert_array_equal(fast[..., 0], fast[..., 2])
  assert counted.made == 3


def test_other_inputs_take_the_reference_path(counted):
  p = F.varied_photo(3)
  side = 256
  for data in (F.cmyk_jpeg_bytes(p), F.png_bytes(p),
               F.jpeg_bytes(p) + b"trailing bytes"):
    assert P.rescaled_jpeg_size(data, side) is None
    ref_full = P.rescale_shorter_side(P.decode_image(data, min_side=side), side)
    top, left = ref_full.shape[0] - 224, ref_full.shape[1] - 224
    np.testing.assert_array_equal(
        P.decode_rescaled_crop(data, side, top, left, 224, True),
        _reference(data, side, top, left, 224, True))
  # Shrinking by 2x or more after DCT scaling uses INTER_AREA: reference.
  data = F.jpeg_bytes(F.photos_cached()[4])  # 872x1000 -> 1/8 = 109 -> 32
  np.testing.assert_array_equal(P.decode_rescaled_crop(data, 32, 0, 3, 32),
                                _reference(data, 32, 0, 3, 32, False))
  assert counted.made == 0
  for bad in (F.truncated_jpeg_bytes(p), b"", b"\xff\xd8garbage\xff\xd9"):
    with pytest.raises(P.DecodeError):
      P.decode_rescaled_crop(bad, side, 0, 0, 224)


def test_without_the_extension_it_is_the_reference(monkeypatch):
  monkeypatch.setattr(P, "_jpegcrop", None)
  data = F.jpeg_bytes(F.photos_cached()[0])
  assert P.rescaled_jpeg_size(data, 256) is None
  np.testing.assert_array_equal(P.decode_rescaled_crop(data, 256, 7, 20, 224, True),
                                _reference(data, 256, 7, 20, 224, True))


@needs_ext
def test_train_batches_same_with_and_without_the_extension(tmp_path,
                                                          monkeypatch):
  F.make_image_folder(tmp_path, ["a", "b"], 3, "train", nasty=True)
  cfg = ip.default_data_config("folder")
  cfg.data_dir, cfg.num_threads, cfg.train_scale = str(tmp_path), 0, [224, 300]
  kw = dict(global_batch_size=6, seed=3, input_convention=conventions.PAPER,
            process_index=0, process_count=1)
  fast_it = ip.create_train_iterator(cfg, **kw)
  fast = next(fast_it)
  monkeypatch.setattr(P, "_jpegcrop", None)
  slow_it = ip.create_train_iterator(cfg, **kw)
  slow = next(slow_it)
  # Same draws (scale, crop, flip, PCA alpha), so the same crops up to the
  # fast path's interpolation rounding; the same skipped files.
  np.testing.assert_array_equal(fast["label"], slow["label"])
  assert fast_it.skipped == slow_it.skipped
  assert np.abs(fast["image"] - slow["image"]).max() <= 2.001


@needs_ext
@pytest.mark.parametrize("conv", [conventions.PAPER, conventions.CAFFE,
                                  conventions.TORCHVISION])
def test_normalised_crop_into_a_batch_slot(conv, counted):
  data = F.jpeg_bytes(F.photos_cached()[1])
  shift = np.float32([3.5, -2.0, 7.25])
  for flip in (False, True):
    out = np.full((224, 224, 3), np.nan, np.float32)
    P.decode_rescaled_crop_into(out, data, 256, 12, 30, flip, conv, shift)
    ref = np.empty_like(out)
    P.normalise_into(ref, P.decode_rescaled_crop(data, 256, 12, 30, 224, flip),
                     conv, shift)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)
  assert counted.made == 4
