"""Appendix A.2's evaluators and command against independent computations:
protocol 1 with a net whose box is known, protocol 2 against the box head
run on each image alone (no canvas, no padding), the command end to end."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vgg_jax.localisation  # noqa: F401  (registers)
from vgg_jax import conventions, input_pipeline, preprocess
from vgg_jax.eval import command as eval_command
from vgg_jax.localisation import boxes as boxes_lib
from vgg_jax.localisation import command as loc_command
from vgg_jax.localisation import evaluator as loc_eval
from vgg_jax.localisation import metric as metric_lib
from vgg_jax.localisation import synth
from vgg_jax.localisation.source import LocEvalSource
from vgg_jax.models import create_model
from vgg_jax.weights import save_pretrained

CONV = conventions.InputConvention("RGB", 1.0, (120.0, 115.0, 100.0),
                                   (60.0, 60.0, 60.0))
KW = dict(name="A", width_mult=0.0625, fc_width=16, head_window=1,
          in_channels=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = tmp_path_factory.mktemp("synth")
  # side 50: images of one size; the dense test adds other sizes by Q.
  synth.make_dataset(d, num_train=4, num_val=6, seed=3,
                     cfg=synth.SynthConfig(side=50, min_item=12, max_item=40))
  return d


def data_cfg(d):
  c = input_pipeline.default_data_config("loc_records")
  c.data_dir = str(d)
  c.crop_size = 32
  c.num_threads = 1
  return c


def constant_box_model(target, outputs=4):
  """A net whose every output is ``target`` (zero FC3 kernel, bias = it)."""
  m = create_model(num_classes=outputs, init="he", dropout_rate=0.0,
                   rngs=nnx.Rngs(0), **{k: v for k, v in KW.items()})
  m.fc3.kernel.set_value(jnp.zeros_like(m.fc3.kernel.get_value()))
  m.fc3.bias.set_value(jnp.asarray(np.tile(target, outputs // 4),
                                   jnp.float32))
  return m


@pytest.mark.parametrize("target", [(0.5, 0.5, 0.6, 0.7), (0.3, 0.6, 0.5, 0.4)])
def test_centre_gt_matches_hand_mapped_boxes(data, target):
  cfg = data_cfg(data)
  q = 40
  res = loc_eval.evaluate_centre_gt(
      constant_box_model(np.array(target)), cfg, convention=CONV,
      split="validation", scale=q, normalisation="crop_fraction")
  src = LocEvalSource(cfg, "validation")
  preds, gts = {}, {}
  for i in range(len(src)):
    r = src.record(i)
    h, w = r["height"], r["width"]
    nh, nw = preprocess.rescaled_size(h, w, q)
    top, left = (nh - 32) // 2, (nw - 32) // 2
    cx, cy, bw, bh = (np.array(target) * 32)
    # continuous [x0, x1) in the crop -> the rescaled image -> stored pixels
    x0, x1 = (cx - bw / 2 + left) * w / nw, (cx + bw / 2 + left) * w / nw
    y0, y1 = (cy - bh / 2 + top) * h / nh, (cy + bh / 2 + top) * h / nh
    preds[r["image_id"]] = np.array([x0, y0, x1 - 1, y1 - 1])
    gts[r["image_id"]] = metric_lib.GroundTruth.make(
        r["boxes"], r["box_labels"], labels=(r["label"],))
  want = metric_lib.centre_gt_localisation_error(preds, gts)
  assert res["num_examples"] == len(src) == 6
  assert res["localisation_error"] == pytest.approx(want.error)
  assert res["per_image"] == want.per_image


def test_dense_equals_each_image_alone(data):
  cfg = data_cfg(data)
  model = create_model(num_classes=4 * 10, init="he", dropout_rate=0.0,
                       rngs=nnx.Rngs(1), **KW)
  src = LocEvalSource(cfg, "validation")
  gt = loc_eval.load_ground_truth(src)
  names = [src.label_and_name(i)[1] for i in range(len(src))]
  top = {n: [1, 4] for n in names}
  scores = {n: {1: 0.7, 4: 0.2} for n in names}
  for q in (32, 45, 64):  # different canvas sizes and buckets
    got, failed = loc_eval.dense_boxes(
        model, cfg, convention=CONV, split="validation", scale=q,
        normalisation="centred_log", top_classes=top, class_scores=scores,
        stored_hw=gt.stored_hw, batch_size=4, bucket_step=32)
    assert not failed and sorted(got) == sorted(names)
    for i, name in enumerate(names):
      img, _, _ = src.get(i)
      img = preprocess.rescale_shorter_side(img, q)
      x = CONV.normalise(img.astype(np.float32))[None]
      m = np.asarray(model.output_map(jnp.asarray(x)))[0]  # unpadded, alone
      hm, wm = m.shape[:2]
      want_b, want_c = [], []
      for c in (1, 4):
        for yi in range(hm):
          for xi in range(wm):
            t = m[yi, xi, 4 * c:4 * c + 4]
            cx, cy = (t[0] + 0.5) * 32 + 32 * xi, (t[1] + 0.5) * 32 + 32 * yi
            bw, bh = max(np.exp(t[2]) * 32, 1), max(np.exp(t[3]) * 32, 1)
            sy, sx = gt.stored_hw[name][0] / img.shape[0], \
                gt.stored_hw[name][1] / img.shape[1]
            want_b.append([(cx - bw / 2) * sx, (cy - bh / 2) * sy,
                           (cx + bw / 2) * sx - 1, (cy + bh / 2) * sy - 1])
            want_c.append(c)
      b, s, c = (np.asarray(v) for v in got[name])
      np.testing.assert_allclose(b.reshape(-1, 4), want_b, rtol=1e-4,
                                 atol=1e-3)
      np.testing.assert_array_equal(c, want_c)
      np.testing.assert_allclose(s, [scores[name][k] for k in want_c])


def test_command_end_to_end(data, tmp_path):
  names = list(synth.CLASS_NAMES)
  loc = constant_box_model(np.array([0.5, 0.5, 0.7, 0.7]), 4 * 10)
  save_pretrained(tmp_path / "loc", loc, model_kwargs={**KW,
                                                       "num_classes": 40},
                  input_convention=CONV, source="test")
  cls = create_model(num_classes=10, init="he", rngs=nnx.Rngs(2), **KW)
  save_pretrained(tmp_path / "cls", cls, model_kwargs={**KW,
                                                       "num_classes": 10},
                  input_convention=CONV, source="test", class_names=names)
  out = tmp_path / "out"
  r1 = eval_command.main([
      "--task", "localisation", "--protocol", "centre-gt", "--model",
      str(tmp_path / "loc"), "--data-dir", str(data), "--scales", "40",
      "--normalisation", "crop_fraction", "--output", str(out / "p1")])
  saved = json.loads((out / "p1" / "results.json").read_text())
  assert saved["localisation_error"] == r1["localisation_error"]
  assert saved["num_examples"] == 6
  assert (out / "p1" / "results.md").read_text().startswith("# Localisation")
  direct = loc_eval.evaluate_centre_gt(
      loc, data_cfg(data), convention=CONV, split="validation", scale=40,
      normalisation="crop_fraction")
  assert r1["localisation_error"] == direct["localisation_error"]
  r2 = eval_command.main([
      "--task", "localisation", "--protocol", "dense", "--model",
      str(tmp_path / "loc"), "--classifier", str(tmp_path / "cls"),
      "--data-dir", str(data), "--scales", "40,56", "--normalisation",
      "crop_fraction", "--output", str(out / "p2")])
  assert 0.0 <= r2["localisation_error"] <= 1.0 and r2["num_examples"] == 6
  assert json.loads((out / "p2" / "results.json").read_text())[
      "localisation_error"] == r2["localisation_error"]
  with pytest.raises(ValueError, match="classifier"):
    eval_command.main(["--task", "localisation", "--protocol", "dense",
                       "--model", str(tmp_path / "loc"), "--data-dir",
                       str(data), "--scales", "40", "--normalisation",
                       "crop_fraction", "--output", str(out / "p3")])


def test_prepare_loc_folder_cli_matches_the_records(data, tmp_path):
  from vgg_jax.data import __main__ as data_main  # pylint: disable=g-import-not-at-top
  from vgg_jax.data import loc_records
  import shutil
  d = tmp_path / "copy"
  shutil.copytree(data, d, ignore=shutil.ignore_patterns("*.array_record",
                                                         "*.log.json"))
  assert data_main.main(["prepare", "loc_folder", "--data_dir", str(d)]) == 0
  for split in ("train", "validation"):
    a = loc_records.LocRecordSource(d / f"{split}.array_record")
    b = loc_records.LocRecordSource(data / f"{split}.array_record")
    assert len(a) == len(b) > 0
    for i in range(len(a)):
      assert a[i]["image_id"] == b[i]["image_id"]
      np.testing.assert_array_equal(a[i]["boxes"], b[i]["boxes"])


def test_picture_draws_the_merged_boxes(data, tmp_path):
  from PIL import Image
  from vgg_jax.localisation import predict as loc_predict
  names = list(synth.CLASS_NAMES)
  loc = constant_box_model(np.array([0.5, 0.5, 0.5, 0.5]))
  save_pretrained(tmp_path / "loc", loc, model_kwargs={**KW, "num_classes": 4},
                  input_convention=CONV, source="test")
  cls = create_model(num_classes=10, init="he", rngs=nnx.Rngs(2), **KW)
  save_pretrained(tmp_path / "cls", cls, model_kwargs={**KW, "num_classes": 10},
                  input_convention=CONV, source="test", class_names=names)
  img = sorted((data / "validation").glob("*/*.jpg"))[0]
  out = tmp_path / "boxes.png"
  assert loc_predict.main([str(img), "--model", str(tmp_path / "loc"),
                           "--classifier", str(tmp_path / "cls"),
                           "--scales", "32", "--normalisation",
                           "crop_fraction", "--top", "2",
                           "--boxes", str(out)]) == 0
  pic = np.asarray(Image.open(out))
  orig = np.asarray(Image.open(img).convert("RGB"))
  assert pic.shape == orig.shape
  # The single-position map at Q=32 on a 50x50 image: one box, the centre
  # half of the 32 window, mapped back (x 50/32): pixels 12.5..37.5; the
  # drawn outline changes pixels on its edge and nowhere far outside it.
  changed = np.any(pic != orig, axis=-1)
  assert changed[20, 12:14].any() and changed[20, 36:39].any()
  assert not changed[45:, :].any()


def test_split_model_arg():
  split = loc_command.split_model_arg
  assert split("runs/loc") == ("runs/loc", None)
  assert split("runs/loc:256") == ("runs/loc", [256])
  assert split("runs/loc:352,384") == ("runs/loc", [352, 384])
  # A colon that is not followed by integers stays part of the path.
  assert split("C:/runs/loc") == ("C:/runs/loc", None)
  assert split("gs://b/loc:64") == ("gs://b/loc", [64])


def test_fusion_with_per_localiser_scales(data, tmp_path):
  """Table 9's fusion: ``--model L1:40 --model L2:56`` unites L1's boxes at
  Q=40 with L2's at Q=56 only (each checked against the box head run alone
  by test_dense_equals_each_image_alone)."""
  names = list(synth.CLASS_NAMES)
  cfg = data_cfg(data)
  loc1 = constant_box_model(np.array([0.5, 0.5, 0.7, 0.7]), 40)
  loc2 = constant_box_model(np.array([0.4, 0.6, 0.5, 0.9]), 40)
  for d, m in (("l1", loc1), ("l2", loc2)):
    save_pretrained(tmp_path / d, m, model_kwargs={**KW, "num_classes": 40},
                    input_convention=CONV, source="test")
  cls = create_model(num_classes=10, init="he", rngs=nnx.Rngs(2), **KW)
  save_pretrained(tmp_path / "cls", cls, model_kwargs={**KW,
                                                       "num_classes": 10},
                  input_convention=CONV, source="test", class_names=names)
  post, post_names = loc_command.classifier_posteriors(
      [str(tmp_path / "cls")], cfg, input_pipeline.dataset_info(cfg),
      "validation", "synth", [48], batch_size=4, bucket_step=32, limit=None)
  post = np.asarray(post)
  fused = loc_eval.evaluate_dense(
      [(loc1, CONV, "crop_fraction", [40]), (loc2, CONV, "crop_fraction",
                                             [56])],
      post, post_names, cfg, convention=CONV, split="validation",
      scales=[48], normalisation="crop_fraction", batch_size=4,
      return_dense=True)
  assert fused["localiser_scales"] == [[40], [56]]
  assert fused["scales"] == [40, 56]
  gt = loc_eval.load_ground_truth(LocEvalSource(cfg, "validation"))
  top, scores = loc_eval.top5_from_posteriors(post, post_names)
  alone = [loc_eval.dense_boxes(
      m, cfg, convention=CONV, split="validation", scale=q,
      normalisation="crop_fraction", top_classes=top, class_scores=scores,
      stored_hw=gt.stored_hw, batch_size=4)[0]
           for m, q in ((loc1, 40), (loc2, 56))]
  for name, d in fused["dense"].items():
    want = np.concatenate([np.asarray(a[name][0]).reshape(-1, 4)
                           for a in alone])
    got = np.asarray(d.boxes).reshape(-1, 4)
    assert len(got) == len(want)  # nothing from L1 at 56 or L2 at 40
    rows = lambda b: b[np.lexsort(b.T[::-1])]  # noqa: E731  (row order)
    np.testing.assert_allclose(rows(got), rows(want), rtol=1e-5, atol=1e-4)
  # The command: the same error, the scales written per localiser.
  r = eval_command.main([
      "--task", "localisation", "--protocol", "dense",
      "--model", f"{tmp_path / 'l1'}:40", "--model", f"{tmp_path / 'l2'}:56",
      "--classifier", str(tmp_path / "cls"), "--data-dir", str(data),
      "--scales", "48", "--normalisation", "crop_fraction",
      "--output", str(tmp_path / "out")])
  assert r["localisation_error"] == fused["localisation_error"]
  assert r["models"] == [str(tmp_path / "l1"), str(tmp_path / "l2")]
  saved = json.loads((tmp_path / "out" / "results.json").read_text())
  assert saved["localiser_scales"] == [[40], [56]]
  assert "(Q=56)" in (tmp_path / "out" / "results.md").read_text()
  with pytest.raises(ValueError, match="centre-gt"):
    eval_command.main(["--task", "localisation", "--protocol", "centre-gt",
                       "--model", f"{tmp_path / 'l1'}:40", "--data-dir",
                       str(data), "--scales", "40", "--normalisation",
                       "crop_fraction", "--output", str(tmp_path / "o2")])
