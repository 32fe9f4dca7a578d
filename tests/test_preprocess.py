"""vgg_jax.preprocess against independent references (Pillow, numpy)."""

import io
import sys
import pathlib

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import data_fixtures as F  # noqa: E402

from vgg_jax import conventions  # noqa: E402
from vgg_jax import preprocess as P  # noqa: E402


@pytest.fixture(scope="module")
def photo():
  return F.photos_cached()[4]  # Hubble deep field, 872 x 1000


def _pil_decode(data):
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_decode_jpeg_matches_pillow(photo):
  data = F.jpeg_bytes(photo)
  ours = P.decode_image(data)
  ref = _pil_decode(data)
  assert ours.shape == ref.shape == photo.shape and ours.dtype == np.uint8
  # Same libjpeg family; only IDCT/upsampling rounding may differ.
  assert np.abs(ours.astype(int) - ref).mean() < 1.0


def test_decode_dct_downscale_keeps_min_side(photo):
  data = F.jpeg_bytes(photo)  # 872 x 1000
  small = P.decode_image(data, min_side=224)
  # 1/2 keeps the shorter side >= 224; 1/4 (218 x 250) would not.
  assert small.shape == (436, 500, 3)
  assert P.decode_image(data, min_side=200).shape == (218, 250, 3)
  assert min(P.decode_image(data, min_side=300).shape[:2]) >= 300
  assert P.decode_image(data, min_side=500).shape == photo.shape
  # The DCT-domain 1/2 decode looks like a 2x2 box downscale of the photo.
  box = photo.reshape(436, 2, 500, 2, 3).mean((1, 3))
  assert np.abs(small.astype(float) - box).mean() < 4.0


def test_decode_cmyk_grey_png_to_rgb(photo):
  p = photo[:300, :400]
  cmyk = P.decode_image(F.cmyk_jpeg_bytes(p))
  assert cmyk.shape == p.shape
  assert np.abs(cmyk.astype(int) - p).mean() < 6.0  # colours preserved
  grey = P.decode_image(F.grey_jpeg_bytes(p))
  assert grey.shape == p.shape
  np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  lum = np.asarray(Image.fromarray(p).convert("L"), float)
  assert np.abs(grey[..., 0] - lum).mean() < 3.0
  # A PNG with a .JPEG name is decoded by content, losslessly.
  np.testing.assert_array_equal(P.decode_image(F.png_bytes(p)), p)
  # RGBA PNG: alpha dropped.
  rgba = np.concatenate([p, np.full(p.shape[:2] + (1,), 7, np.uint8)], -1)
  buf = io.BytesIO()
  Image.fromarray(rgba).save(buf, format="PNG")
  np.testing.assert_array_equal(P.decode_image(buf.getvalue()), p)


@pytest.mark.parametrize("data", [b"", b"not an image at all",
                                  "truncated", b"\xff\xd8\xff\xe0garbage"])
def test_decode_errors(photo, data):
  if data == "truncated":
    data = F.truncated_jpeg_bytes(photo)
  with pytest.raises(P.DecodeError) as e:
    P.decode_image(data)
  assert isinstance(e.value, ValueError) and str(e.value)


def test_rescale_shorter_side_shapes_and_area_filter():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
  assert P.rescale_shorter_side(img, 256).shape == (256, 427, 3)
  assert P.rescale_shorter_side(img.transpose(1, 0, 2), 256).shape == (427, 256, 3)
  assert P.rescale_shorter_side(img, 384).shape == (384, 640, 3)
  assert P.rescale_shorter_side(img, 300) is img
  # Shrinking by exactly 2 with area interpolation = 2x2 block means.
  half = P.rescale_shorter_side(img, 150)
  ref = img.reshape(150, 2, 250, 2, 3).astype(float).mean((1, 3))
  assert np.abs(half - ref).max() <= 0.5 + 1e-9
  # Enlarging is smooth: bilinear stays within the range of neighbours.
  up = P.rescale_shorter_side(img[:10, :10], 20)
  assert up.shape == (20, 20, 3)
  assert up.min() >= img[:10, :10].min() and up.max() <= img[:10, :10].max()


def test_crops_and_flip():
  img = np.arange(7 * 9 * 3, dtype=np.int32).reshape(7, 9, 3)
  np.testing.assert_array_equal(P.center_crop(img, 5), img[1:6, 2:7])
  np.testing.assert_array_equal(P.horizontal_flip(img), np.fliplr(img))
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(400):
    c = P.random_crop(img, 5, rng)
    top, left = np.argwhere(img[..., 0] == c[0, 0, 0])[0]
    np.testing.assert_array_equal(c, img[top:top + 5, left:left + 5])
    seen.add((top, left))
  assert seen == {(t, l) for t in range(3) for l in range(5)}  # all positions
  with pytest.raises(ValueError, match="rescale"):
    P.center_crop(img, 8)
  with pytest.raises(ValueError):
    P.random_crop(img, 10, rng)


def test_grid_crops_is_the_5x5_grid():
  img = np.random.default_rng(1).integers(0, 256, (256, 341, 3), np.uint8)
  crops = P.grid_crops(img, 224, 5)
  assert crops.shape == (25, 224, 224, 3)
  np.testing.assert_array_equal(crops[0], img[:224, :224])  # top-left
  np.testing.assert_array_equal(crops[4], img[:224, -224:])  # top-right
  np.testing.assert_array_equal(crops[20], img[-224:, :224])  # bottom-left
  np.testing.assert_array_equal(crops[24], img[-224:, -224:])  # bottom-right
  # Centre crop of the grid: offsets (16, 58.5 -> 58), like center_crop.
  np.testing.assert_array_equal(crops[12], img[16:240, 58:282])
  # Evenly spaced: offsets 0, 8, 16, 24, 32 vertically.
  for i, top in enumerate([0, 8, 16, 24, 32]):
    np.testing.assert_array_equal(crops[5 * i], img[top:top + 224, :224])


def test_pca_shift_formula_and_distribution():
  eigval = np.asarray(conventions.IMAGENET_PCA_EIGVAL)
  eigvec = np.asarray(conventions.IMAGENET_PCA_EIGVEC)
  img = np.random.default_rng(2).uniform(0, 255, (4, 5, 3)).astype(np.float32)
  out = P.pca_color_shift(img, np.random.default_rng(3), eigval, eigvec)
  delta = out - img
  np.testing.assert_allclose(delta, np.broadcast_to(delta[0, 0], delta.shape),
                             atol=1e-4)  # one offset for every pixel
  # Krizhevsky: sum_i alpha_i lambda_i p_i, written as a loop, x255 for 0-255.
  alpha = np.random.default_rng(3).normal(0, 0.1, 3)
  ref = 255 * sum(alpha[i] * eigval[i] * eigvec[:, i] for i in range(3))
  np.testing.assert_allclose(delta[0, 0], ref, rtol=1e-5, atol=1e-4)
  # Over many images the offsets have covariance 255^2 V diag((0.1 l)^2) V^T.
  rng = np.random.default_rng(4)
  shifts = np.stack([P.pca_shift_vector(rng, eigval, eigvec)
                     for _ in range(20000)])
  expected = 255**2 * eigvec @ np.diag((0.1 * eigval)**2) @ eigvec.T
  np.testing.assert_allclose(np.cov(shifts.T), expected, rtol=0.05,
                             atol=0.02 * expected.max())


@pytest.mark.parametrize("conv", [conventions.PAPER, conventions.CAFFE,
                                  conventions.TORCHVISION])
def test_normalise_images_equals_input_convention(conv):
  rng = np.random.default_rng(5)
  images = rng.integers(0, 256, (4, 6, 7, 3), dtype=np.uint8)
  shift = rng.normal(0, 10, (4, 3)).astype(np.float32)
  ref = conv.normalise(images.astype(np.float32) + shift[:, None, None, :])
  np.testing.assert_allclose(P.normalise_images(images, conv, shift), ref,
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(P.normalise_images(images[0], conv),
                             conv.normalise(images[0]), rtol=1e-5, atol=1e-4)
  grey = conventions.InputConvention("RGB", 1.0, (70.0,), (90.0,))
  g = images[..., :1]
  np.testing.assert_allclose(P.normalise_images(g, grey), grey.normalise(g),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", [conventions.PAPER, conventions.CAFFE,
                                  conventions.TORCHVISION])
def test_normalise_into_equals_input_convention(conv):
  rng = np.random.default_rng(6)
  big = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
  out = np.zeros((2, 8, 9, 3), np.float32)
  shift = np.float32([3.5, -7.25, 1.0])
  for crop in (big[3:11, 4:13], P.horizontal_flip(big[3:11, 4:13]),
               big[3:11, 4:13][:, ::-1]):
    P.normalise_into(out[1], crop, conv, shift)
    np.testing.assert_allclose(out[1], conv.normalise(crop + shift),
                               rtol=1e-5, atol=1e-4)
  assert np.all(out[0] == 0)  # only the given slot written
  grey = conventions.InputConvention("RGB", 1.0, (70.0,), (90.0,))
  g = np.zeros((8, 9, 1), np.float32)
  P.normalise_into(g, big[3:11, 4:13, :1], grey)
  np.testing.assert_allclose(g, grey.normalise(big[3:11, 4:13, :1]), atol=1e-5)
