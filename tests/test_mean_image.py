"""Krizhevsky's per-pixel mean image (AlexNet, the paper's §4.5 baseline):
computed by `python -m vgg_jax.data stats --mean_image`, checked on load,
subtracted window by window from training crops and test views."""

from __future__ import annotations

import io
import json
import pathlib
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import data_fixtures as F  # noqa: E402

from vgg_jax import config_checks  # noqa: E402
from vgg_jax import conventions  # noqa: E402
from vgg_jax import input_pipeline as ip  # noqa: E402
from vgg_jax import mean_image  # noqa: E402
from vgg_jax import preprocess as P  # noqa: E402
from vgg_jax.data import __main__ as cli  # noqa: E402
from vgg_jax.eval import dense  # noqa: E402


def _smooth(h, w, seed):
  """A smooth RGB image (low frequencies and a ramp along the long side, so
  resamplers agree to within a level and where the crop lies matters)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  chans = []
  for c in range(3):
    fy, fx, ph = rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5), rng.uniform(0, 6)
    chans.append(110 + 60 * np.sin(2 * np.pi * (fy * y / h + fx * x / w) + ph)
                 + 70 * (x / w if w >= h else y / h) * (1 if c != 1 else -1))
  return np.clip(np.stack(chans, -1), 0, 255).round().astype(np.uint8)


def _png(img):
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  return buf.getvalue()


def _pil_mean_of_central_squares(paths, side=256, offset="centre"):
  """Written apart from the code: Pillow decode and bilinear resize, crop
  box arithmetic, numpy mean of the stack."""
  crops = []
  for p in paths:
    with Image.open(p) as im:
      im = im.convert("RGB")
      w, h = im.size
      k = side / min(w, h)
      nw, nh = (side, round(h * k)) if w <= h else (round(w * k), side)
      im = im.resize((nw, nh), Image.BILINEAR)
      x0, y0 = ((nw - side) // 2, (nh - side) // 2) if offset == "centre" \
          else (0, 0)
      crops.append(np.asarray(im.crop((x0, y0, x0 + side, y0 + side)),
                              np.float64))
  return np.mean(np.stack(crops), axis=0)


def test_stats_mean_image_equals_an_independent_mean(tmp_path, capsys):
  sizes = [(256, 320), (300, 400), (200, 230), (512, 300), (600, 520)]
  good = []
  for i, (h, w) in enumerate(sizes):
    d = tmp_path / "train" / ("a" if i % 2 else "b")
    d.mkdir(parents=True, exist_ok=True)
    img = _smooth(h, w, i)
    path = d / f"im{i}.png"
    path.write_bytes(_png(img))
    good.append(path)
  # One JPEG too (decoded by libjpeg-turbo here, Pillow's libjpeg there).
  (tmp_path / "train" / "a" / "im9.JPEG").write_bytes(
      F.jpeg_bytes(_smooth(280, 350, 9), quality=98))
  good.append(tmp_path / "train" / "a" / "im9.JPEG")
  bad = {"a/trunc.JPEG": F.truncated_jpeg_bytes(_smooth(300, 300, 5)),
         "b/empty.JPEG": b""}
  for rel, data in bad.items():
    (tmp_path / "train" / rel).write_bytes(data)
  out_npy = tmp_path / "stats" / "mean.npy"
  out_json = tmp_path / "stats" / "stats.json"
  assert cli.main(["stats", "--source", "folder", "--data_dir", str(tmp_path),
                   "--output", str(out_json), "--mean_image",
                   str(out_npy)]) == 0
  got = json.loads(out_json.read_text())
  assert "data.mean_image = " in capsys.readouterr().out
  # Every image counted once; the undecodable ones counted and named.
  assert got["mean_image_num_images"] == got["num_images"] == len(good)
  assert got["num_skipped"] == 2
  assert sorted(n for n in bad if any(n.split("/")[1] in s
                                      for s in got["skipped"])) == sorted(bad)
  assert got["mean_image"] == str(out_npy.resolve())
  mean = np.load(out_npy)
  assert mean.shape == (256, 256, 3) and mean.dtype == np.float32
  assert not list(out_npy.parent.glob(".*tmp"))  # nothing half-written left
  ref = _pil_mean_of_central_squares(good)
  err = np.abs(mean - ref)
  assert err.max() < 1.5 and err.mean() < 0.3, (err.max(), err.mean())
  # The test can tell the convention apart: top-left squares differ.
  wrong = _pil_mean_of_central_squares(good, offset="top-left")
  assert np.abs(mean - wrong).mean() > 10 * err.mean() + 1
  np.testing.assert_allclose(got["mean_image_mean_rgb"], ref.mean((0, 1)),
                             atol=0.2)


def test_stats_mean_image_needs_an_rgb_source(tmp_path):
  cfg = ip.default_data_config("fashion_mnist")
  from vgg_jax.data import stats  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="no per-pixel mean image"):
    stats.compute_stats(cfg, mean_image=str(tmp_path / "m.npy"))
  assert not (tmp_path / "m.npy").exists()


def test_wrong_mean_image_files_give_clear_errors(tmp_path):
  np.save(tmp_path / "small.npy", np.zeros((224, 224, 3), np.float32))
  with pytest.raises(mean_image.MeanImageError,
                     match=r"shape \(224, 224, 3\); expected \(256, 256, 3\)"):
    mean_image.load(tmp_path / "small.npy")
  np.save(tmp_path / "grey.npy", np.zeros((256, 256), np.float32))
  with pytest.raises(mean_image.MeanImageError, match="expected"):
    mean_image.load(tmp_path / "grey.npy")
  (tmp_path / "junk.npy").write_bytes(b"not an array")
  with pytest.raises(mean_image.MeanImageError, match="not a .npy array"):
    mean_image.load(tmp_path / "junk.npy")
  with pytest.raises(mean_image.MeanImageError, match="--mean_image"):
    mean_image.load(tmp_path / "missing.npy")
  with pytest.raises(mean_image.MeanImageError, match=r"outside \[0, 255\]"):
    mean_image.save(tmp_path / "neg.npy", -np.ones((256, 256, 3)))
  # The training/evaluation convention refuses it before anything runs.
  cfg = ip.default_data_config("folder")
  cfg.mean_image = str(tmp_path / "small.npy")
  with pytest.raises(ValueError, match="expected"):
    ip.input_convention(cfg)
  # A grey source cannot use one: the config check and the pipeline say so.
  fm = ip.default_data_config("fashion_mnist")
  mean_image.save(tmp_path / "ok.npy", np.full((256, 256, 3), 9.0))
  fm.mean_image = str(tmp_path / "ok.npy")
  with pytest.raises(ValueError, match="does not support"):
    ip.input_convention(fm)


def test_convention_records_the_mean_image(tmp_path):
  path = str(mean_image.save(tmp_path / "m.npy", np.full((256, 256, 3), 5.0)))
  cfg = ip.default_data_config("folder")
  cfg.mean_image = path
  conv = ip.input_convention(cfg)
  assert conv.mean_image == path and conv.mean == (0.0, 0.0, 0.0)
  again = conventions.InputConvention.from_dict(
      json.loads(json.dumps(conv.to_dict())))
  assert again == conv
  # Conventions without one keep their old metadata.
  assert "mean_image" not in conventions.PAPER.to_dict()
  # Code that does not know where its views lie refuses, rather than
  # silently subtracting nothing.
  x = np.zeros((4, 4, 3), np.uint8)
  with pytest.raises(ValueError, match="mean image"):
    conv.normalise(x)
  with pytest.raises(ValueError, match="mean image"):
    P.normalise_images(x, conv)


def test_host_normalisation_subtracts_the_window_in_every_path(tmp_path):
  # The formula by hand: ((x + shift - window) in BGR * scale - mean) / std
  # (mean and std are given in the model's channel order).
  path = str(mean_image.save(tmp_path / "m.npy", np.full((256, 256, 3), 1.0)))
  conv = conventions.InputConvention("BGR", 1 / 255, (0.1, 0.2, 0.3),
                                     (0.5, 0.6, 0.7), mean_image=path)
  rng = np.random.default_rng(0)
  win = rng.uniform(0, 255, (224, 224, 3)).astype(np.float32)
  shift = np.float32([3.5, -2.0, 7.25])

  def by_hand(x):
    y = (x.astype(np.float64) + shift - win)[..., ::-1] / 255
    return (y - [0.1, 0.2, 0.3]) / [0.5, 0.6, 0.7]

  data = F.jpeg_bytes(F.photos_cached()[1])
  for flip in (False, True):
    crop = P.decode_rescaled_crop(data, 256, 12, 30, 224, flip)
    out = np.full((224, 224, 3), np.nan, np.float32)
    # The crop-aware C decoder (when built) writes, then the window goes.
    P.decode_rescaled_crop_into(out, data, 256, 12, 30, flip, conv, shift,
                                win)
    np.testing.assert_allclose(out, by_hand(crop), atol=1e-4)
    into = np.empty_like(out)
    P.normalise_into(into, crop, conv, shift, win)
    np.testing.assert_allclose(into, by_hand(crop), atol=1e-4)
  batch = P.normalise_images(np.stack([crop, crop]), conv, shift,
                             np.stack([win, win]))
  np.testing.assert_allclose(batch[1], by_hand(crop), atol=1e-4)


# ------------------------------------------------------------ the windows

S, CROP, L0 = 256, 224, 22  # a 256 x 300 image: its square is columns 22..277


def _coord_image(transpose=False):
  """R = row, G = column within the central square, B constant: a crop
  tells where it was cut and whether it was flipped."""
  h, w = S, S + 2 * L0
  y, x = np.mgrid[0:h, 0:w]
  img = np.stack([y, np.clip(x - L0, 0, 255), np.full_like(y, 100)], -1)
  img = img.astype(np.uint8)
  return np.ascontiguousarray(img.transpose(1, 0, 2)) if transpose else img


@pytest.fixture(scope="module")
def coord_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("coords")
  for split in ("train", "validation"):
    for cls, name, data in (
        ("a", "wide.png", _png(_coord_image())),
        ("b", "tall.JPEG", F.jpeg_bytes(_coord_image(True), quality=100))):
      d = root / split / cls
      d.mkdir(parents=True, exist_ok=True)
      (d / name).write_bytes(data)
  m = np.random.default_rng(7).uniform(0, 255, (S, S, 3)).astype(np.float32)
  path = mean_image.save(root / "mean.npy", m)
  return root, str(path), m


def _cfg(root, mean_path, **over):
  cfg = ip.default_data_config("folder")
  cfg.data_dir = str(root)
  cfg.num_threads = 1
  cfg.train_scale = cfg.eval_scale = S
  cfg.crop_size = CROP
  cfg.pca_std = 0.0
  cfg.mean_rgb = (0.0, 0.0, 0.0)
  cfg.central_square = True
  cfg.mean_image = mean_path
  for k, v in over.items():
    setattr(cfg, k, v)
  return cfg


def _where(crop, tall):
  """(top, left) in the square and flip, read off a coordinate crop."""
  r = crop[..., 1 if tall else 0].astype(np.float64)
  c = crop[..., 0 if tall else 1].astype(np.float64)
  flip = c[:, 0].mean() > c[:, -1].mean()
  if flip:
    c = c[:, ::-1]
  top = int(np.round(np.median(r - np.arange(CROP)[:, None])))
  left = int(np.round(np.median(c - np.arange(CROP)[None, :])))
  return top, left, flip


def test_training_crops_subtract_the_mean_window_under_them(coord_folder):
  root, path, m = coord_folder
  kw = dict(global_batch_size=6, seed=3, process_index=0, process_count=1)
  plain_cfg = _cfg(root, "")
  cfg = _cfg(root, path)
  plain = ip.create_train_iterator(
      plain_cfg, input_convention=ip.input_convention(plain_cfg), **kw)
  with_mean = ip.create_train_iterator(
      cfg, input_convention=ip.input_convention(cfg), **kw)
  seen = set()
  for _ in range(2):
    a, b = next(plain), next(with_mean)
    np.testing.assert_array_equal(a["label"], b["label"])
    for j in range(len(a["label"])):
      tall = bool(a["label"][j])  # class b holds the tall JPEG
      top, left, flip = _where(a["image"][j], tall)
      assert 0 <= top <= S - CROP and 0 <= left <= S - CROP
      # Hand-cut: the mean image's window at the crop's place in the
      # square, mirrored with the crop.
      win = m[top:top + CROP, left:left + CROP]
      if flip:
        win = win[:, ::-1]
      np.testing.assert_allclose(a["image"][j] - b["image"][j], win,
                                 atol=1e-4)
      seen.add((tall, flip))
  assert seen == {(False, False), (False, True), (True, False), (True, True)}


def _hand_ten_windows(m):
  d, c = S - CROP, (S - CROP) // 2
  five = [m[:CROP, :CROP], m[:CROP, d:], m[d:, :CROP], m[d:, d:],
          m[c:c + CROP, c:c + CROP]]
  return np.stack(five + [w[:, ::-1] for w in five])


@pytest.mark.parametrize("protocol", ["centre", "tencrop"])
def test_eval_views_subtract_the_mean_windows_they_cover(coord_folder,
                                                         protocol):
  root, path, m = coord_folder
  plain_cfg, cfg = _cfg(root, ""), _cfg(root, path)
  kw = dict(split="validation", global_batch_size=3, protocol=protocol,
            process_index=0, process_count=1)
  a = next(iter(ip.create_eval_iterator(
      plain_cfg, input_convention=ip.input_convention(plain_cfg), **kw)))
  b = next(iter(ip.create_eval_iterator(
      cfg, input_convention=ip.input_convention(cfg), **kw)))
  np.testing.assert_array_equal(a["mask"], [1, 1, 0])
  want = _hand_ten_windows(m)
  if protocol == "centre":
    want = want[4]  # the centre crop of a 256-wide image is the square's
  for j in range(2):  # both images: their squares hold the same windows
    np.testing.assert_allclose(a["image"][j] - b["image"][j], want, atol=1e-4)


class _Inputs(dense.DenseOutput):
  """Hands back the normalised net inputs (no net): what the engine feeds."""

  crops_averaged = False  # keeps every crop

  def crop(self, model, x):
    return x

  def merge_crops(self, tree, flips, n, k):
    return tree.reshape((2 if flips else 1, n, k) + tree.shape[1:]).swapaxes(
        0, 1)

  def image(self, model, x, valid_hw):
    return x

  def merge_flips(self, tree, n):
    return tree.reshape((2, n) + tree.shape[1:]).swapaxes(0, 1)


def test_dense_engine_subtracts_mean_windows_and_the_mean_canvas(coord_folder):
  _, path, m = coord_folder
  conv = conventions.InputConvention("BGR", 1.0, (0.0, 0.0, 0.0),
                                     (2.0, 2.0, 2.0), mean_image=path)
  engine = dense.DenseEngine(nnx.Linear(1, 1, rngs=nnx.Rngs(0)), conv,
                             _Inputs())
  img = _smooth(S, S + 2 * L0, 4)
  got = {}
  batcher = dense.CropBatcher(engine, lambda rows, v: got.update(v=v),
                              kind="tencrop", crop=CROP, grid=5, batch_size=4)
  batcher.add(0, img)
  batcher.flush()
  crops = np.stack([img[t:t + CROP, L0 + l:L0 + l + CROP]
                    for t in (0, 32) for l in (0, 32)]
                   + [img[16:240, L0 + 16:L0 + 240]])
  crops = np.concatenate([crops, crops[:, :, ::-1]]).astype(np.float32)
  want = ((crops - _hand_ten_windows(m)) / 2.0)[..., ::-1]  # BGR, std 2
  np.testing.assert_allclose(got["v"][0].reshape(want.shape), want,
                             atol=1e-4)
  # Dense: the whole image is not a window of the square; its mean is the
  # mean image over the square with its edge columns repeated outwards.
  canvas_mean = np.pad(m, ((0, 0), (L0, L0), (0, 0)), mode="edge")
  out = np.asarray(engine.images(img[None], np.asarray([[S, S + 2 * L0]]), 1))
  resid = (img.astype(np.float32) - canvas_mean) / 2.0
  np.testing.assert_allclose(out[0, 0], resid[..., ::-1], atol=1e-4)
  np.testing.assert_allclose(out[0, 1], resid[:, ::-1, ::-1], atol=1e-4)
  # Crops without their mean windows are refused.
  with pytest.raises(ValueError, match="mean image"):
    engine.crops(crops[None, :5].astype(np.uint8), True, 1)


def test_mean_canvas_at_another_scale_is_the_resized_mean_image(coord_folder):
  _, path, m = coord_folder
  # Q = 320 on a 320 x 400 image: the square (columns 40..359) holds the
  # mean image resized to 320 x 320; outside it, its edge columns.
  c = mean_image.canvas(path, (320, 400))
  big = P.rescale_shorter_side(m, 320)
  np.testing.assert_allclose(c[:, 40:360], big, atol=1e-4)
  np.testing.assert_allclose(c[:, :40], np.repeat(big[:, :1], 40, 1),
                             atol=1e-4)
  np.testing.assert_allclose(c[:, 360:], np.repeat(big[:, -1:], 40, 1),
                             atol=1e-4)
  assert abs(float(big.mean()) - float(m.mean())) < 1.0  # a resize, not junk


def test_alexnet_config_uses_the_mean_image_tencrop_and_central_square():
  from experiments import alexnet  # pylint: disable=g-import-not-at-top
  c = alexnet.get_config()
  assert c.data.mean_image.endswith(".npy") and c.data.central_square
  assert "--mean_image" in alexnet.__doc__ and "tencrop" in alexnet.__doc__
  assert config_checks.problems(c, device_count=1) == []
  from vgg_jax import configs  # pylint: disable=g-import-not-at-top
  bad = configs.base_config("fashion_mnist")
  bad.data.mean_image = "m.npy"
  assert any(p.startswith("config.data.mean_image")
             for p in config_checks.problems(bad, device_count=1))


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_evaluate_command_subtracts_the_models_mean_image(coord_folder,
                                                          tmp_path):
  """The mean image travels in the model's input convention: `python -m
  vgg_jax.evaluate --protocol tencrop` on a saved model subtracts it."""
  from vgg_jax import evaluate, weights  # pylint: disable=g-import-not-at-top
  from vgg_jax.models import create_model  # pylint: disable=g-import-not-at-top
  root, path, m = coord_folder
  crop = 32  # a small net: the 10 patches are 32 x 32 crops of the square
  kw = dict(name="A", num_classes=2, width_mult=0.0625, fc_width=16,
            head_window=1)
  model = create_model(**kw, init="he", rngs=nnx.Rngs(5))
  model.fc3.kernel[...] = model.fc3.kernel[...] * 0.05  # soft posteriors
  conv = ip.input_convention(_cfg(root, path, std_rgb=(64.0, 64.0, 64.0)))
  weights.save_pretrained(tmp_path / "m", model, model_kwargs=kw,
                          input_convention=conv, source="test",
                          class_names=["a", "b"],
                          extra={"train_scale": S, "crop_size": crop})
  evaluate.main(["--model", str(tmp_path / "m"), "--data", "folder",
                 "--data-dir", str(root), "--protocol", "tencrop",
                 "--scales", str(S), "--batch-size", "2", "--output",
                 str(tmp_path / "out"), "--save-posteriors"])
  got = evaluate.SplitPosteriors.load(
      tmp_path / "out" / "posteriors_0_A.npz").posteriors[f"tencrop@{S}"]
  src = ip.FolderImageSource(root, "validation")

  def ten(sq):
    d, c = S - crop, (S - crop) // 2
    five = [sq[:crop, :crop], sq[:crop, d:], sq[d:, :crop], sq[d:, d:],
            sq[c:c + crop, c:c + crop]]
    return np.stack(five + [p[:, ::-1] for p in five])

  views = []
  for i in range(len(src)):
    img = src.get(i)[0]  # 256 x 300 and 300 x 256: already at Q = 256
    h, w = img.shape[:2]
    t0, l0 = (h - S) // 2, (w - S) // 2
    sq = img[t0:t0 + S, l0:l0 + S].astype(np.float32)
    views += [ten(sq - m) / 64.0, ten(sq) / 64.0]  # with, without the mean
  logits = nnx.jit(lambda net, x: net(x))(model, np.concatenate(views))
  post = _softmax(np.asarray(logits)).reshape(2, 2, 10, 2).mean(2)
  want, without = post[:, 0], post[:, 1]
  assert np.all((want > 0.02) & (want < 0.98)), want  # not saturated
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Without the mean image the posteriors differ (the test can fail).
  assert np.abs(without - want).max() > 1e-2
