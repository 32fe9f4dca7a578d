"""Input-pipeline throughput, images/s per CPU core, ours vs tf.data.

    python benchmarks/input_pipeline.py [--seconds 4] [--out benchmarks/results/input_pipeline.json]

Everything runs pinned to ONE core (sched_setaffinity, TF with one intra-op,
one inter-op and one tf.data thread) and rates are images per CPU-second of
the process (all threads), i.e. per core, and robust to other programs
sharing the machine; a machine with k free cores runs k grain workers.

Images: photo-sized JPEGs (quality 90) made from the photos scikit-image and
scikit-learn ship, at 500x375 (ImageNet's typical size), 640x427 and
1000x872.  Rows:

- train (paper 3.1): decode, rescale shorter side to S=256, random 224 crop,
  random flip, (ours also: PCA colour shift), float32 minus mean RGB;
- eval (paper 3.2): decode, rescale to Q=256, central 224 crop, minus mean;
- "grain pipeline": our full training iterator (grain, batching, skip
  counting) reading the JPEGs from a class folder, in the main thread;
- Fashion-MNIST: our vectorised in-memory training batches (32x32 crops);
- decode only: simplejpeg.decode_jpeg vs tf.io.decode_jpeg at full size
  (both are libjpeg-turbo): what a full decode costs;
- tf.data train, decode_and_crop: tf.data doing the training transform
  crop-aware as well (tf.io.decode_and_crop_jpeg of the crop's source
  window, then resize to 224): for reference, not the goal's baseline.

Both decode with libjpeg-turbo's defaults (accurate integer IDCT, fancy
upsampling).  Ours decodes crop-aware when the C extension
vgg_jax/_jpegcrop.c is built (printed; see docs/data.md): only the rows and
columns the 224 crop samples, bilinear with OpenCV's geometry (tf.data's
resize is bilinear too, half-pixel centres), at a 1/2-1/8 DCT scale when
the photo is at least twice S.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = [(500, 375), (640, 427), (1000, 872)]  # (width, height)
S = Q = 256
CROP = 224


def make_jpegs(size, count=32):
  import skimage.data  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = [skimage.data.astronaut(), skimage.data.coffee(),
            skimage.data.chelsea(), skimage.data.rocket(),
            skimage.data.hubble_deep_field()] + list(load_sample_images().images)
  rng = np.random.default_rng(0)
  out = []
  for i in range(count):
    p = Image.fromarray(photos[i % len(photos)][..., :3])
    if rng.random() < 0.5:
      p = p.transpose(Image.FLIP_LEFT_RIGHT)
    p = p.resize(size, Image.LANCZOS)
    buf = io.BytesIO()
    p.save(buf, format="JPEG", quality=90)
    out.append(buf.getvalue())
  return out


def cpu_seconds():
  # CPU time of this process (all its threads): images per CPU-second is
  # images/s per core, and unlike wall time it is not diluted when other
  # programs share the machine.
  return time.process_time()


def rate(fn, items, seconds):
  """Items per CPU-second of fn over items, cycling for ~``seconds``."""
  fn(items[0])  # warm-up
  n, t0, w0 = 0, cpu_seconds(), time.perf_counter()
  while time.perf_counter() - w0 < seconds:
    for it in items:
      fn(it)
    n += len(items)
  return n / (cpu_seconds() - t0)


class _BytesSource:
  """In-memory JPEGs with the interface of input_pipeline's image sources."""

  prescaled = False
  num_classes = 1
  class_names = ["c0"]

  def __init__(self, jpegs):
    self.jpegs = jpegs

  def __len__(self):
    return len(self.jpegs)

  def read(self, i):
    return self.jpegs[i], 0, str(i)

  def get(self, i, min_side=None):
    from vgg_jax import preprocess as P  # pylint: disable=g-import-not-at-top
    return P.decode_image(self.jpegs[i], min_side=min_side), 0, str(i)

  def label_and_name(self, i):
    return 0, str(i)


def ours(jpegs, seconds, batch=16):
  """The pipeline's own per-example and per-batch code, without grain."""
  from vgg_jax import conventions  # pylint: disable=g-import-not-at-top
  from vgg_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  cfg = ip.default_data_config("folder")
  cfg.train_scale, cfg.eval_scale, cfg.crop_size = S, Q, CROP
  source = _BytesSource(jpegs)
  conv = conventions.PAPER
  train_batch = ip._TrainBatch(cfg, source, conv, seed=0)  # pylint: disable=protected-access
  eval_example = ip._EvalExample(  # pylint: disable=protected-access
      cfg, source, scale=Q, protocol="centre", convention=conv, batched=True,
      local_batch=batch, process_index=0, process_count=1)
  groups = [list(range(i, i + batch)) for i in range(0, len(jpegs), batch)]
  step = iter(range(10**9))

  def train(idx):
    first = next(step) * batch
    return train_batch({"index": np.asarray(idx), "position": np.arange(
        first, first + len(idx))})["image"]

  batcher = ip._EvalBatcher(conv)  # pylint: disable=protected-access

  def evaluate(idx):
    return batcher([eval_example(i) for i in idx])["image"]

  import simplejpeg  # pylint: disable=g-import-not-at-top
  return (rate(train, groups, seconds) * batch,
          rate(evaluate, groups, seconds) * batch,
          rate(simplejpeg.decode_jpeg, jpegs, seconds / 2))


def tf_data(jpegs, seconds):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  mean = tf.constant([123.68, 116.78, 103.94])

  def rescale(image, side):
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = side / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    return tf.image.resize(image, new)  # bilinear, float32

  def train(data):
    image = tf.io.decode_jpeg(data, channels=3)
    image = rescale(image, S)
    image = tf.image.random_crop(image, [CROP, CROP, 3])
    image = tf.image.random_flip_left_right(image)
    return image - mean

  def train_decode_and_crop(data):
    # The same work done crop-aware, as TF can: pick the crop in rescaled
    # coordinates, decode only its source window (decode_and_crop_jpeg, the
    # libjpeg-turbo partial decoding our C extension uses too) and resize
    # the window to 224 (geometry within a pixel of the rows above).
    shape = tf.image.extract_jpeg_shape(data)[:2]
    size = tf.cast(shape, tf.float32)
    scale = S / tf.reduce_min(size)
    new = tf.cast(tf.round(size * scale), tf.int32)
    start = tf.stack([tf.random.uniform([], 0, new[i] - CROP + 1, tf.int32)
                      for i in range(2)])
    lo = tf.cast(tf.floor(tf.cast(start, tf.float32) / scale), tf.int32)
    hi = tf.minimum(tf.cast(tf.math.ceil(
        tf.cast(start + CROP, tf.float32) / scale), tf.int32), shape)
    image = tf.io.decode_and_crop_jpeg(
        data, tf.concat([lo, hi - lo], 0), channels=3)
    image = tf.image.resize(image, [CROP, CROP])
    image = tf.image.random_flip_left_right(image)
    return image - mean

  def evaluate(data):
    image = rescale(tf.io.decode_jpeg(data, channels=3), Q)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    image = tf.image.crop_to_bounding_box(image, (h - CROP) // 2,
                                          (w - CROP) // 2, CROP, CROP)
    return image - mean

  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1

  def run(fn):
    ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat().map(
        fn, num_parallel_calls=1).with_options(options)
    it = iter(ds)
    return rate(lambda _: next(it).numpy(), [None] * len(jpegs), seconds)

  return (run(train), run(evaluate),
          run(lambda data: tf.io.decode_jpeg(data, channels=3)),
          run(train_decode_and_crop))


def grain_pipeline(jpegs, seconds):
  from vgg_jax import conventions  # pylint: disable=g-import-not-at-top
  from vgg_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    d = pathlib.Path(tmp) / "train" / "c0"
    d.mkdir(parents=True)
    for i, data in enumerate(jpegs):
      (d / f"{i}.JPEG").write_bytes(data)
    # Hard links make a 4096-file split: grain's index shuffle is pathologically
    # slow (ms per index) on a few dozen examples, fast (us) on real splits.
    for i in range(len(jpegs), 4096):
      os.link(d / f"{i % len(jpegs)}.JPEG", d / f"{i}.JPEG")
    cfg = ip.default_data_config("folder")
    cfg.data_dir, cfg.num_threads = tmp, 0
    it = ip.create_train_iterator(cfg, global_batch_size=8, seed=0,
                                  input_convention=conventions.PAPER,
                                  process_index=0, process_count=1)
    return rate(lambda _: next(it), [None] * 3, seconds) * 8


def fashion_mnist(seconds):
  from vgg_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  cfg = ip.default_data_config()
  cfg.num_threads = 0
  it = ip.create_train_iterator(cfg, global_batch_size=256, seed=0,
                                input_convention=ip.input_convention(cfg),
                                process_index=0, process_count=1)
  return rate(lambda _: next(it), [None] * 4, seconds) * 256


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--seconds", type=float, default=4.0)
  parser.add_argument("--out", default=str(
      ROOT / "benchmarks/results/input_pipeline.json"))
  args = parser.parse_args()
  os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
  rows = []
  for size in SIZES:
    jpegs = make_jpegs(size)
    o_train, o_eval, o_decode = ours(jpegs, args.seconds)
    t_train, t_eval, t_decode, t_train_crop = tf_data(jpegs, args.seconds)
    rows.append({"size": f"{size[0]}x{size[1]}",
                 "ours_train": o_train, "tf_data_train": t_train,
                 "ours_eval": o_eval, "tf_data_eval": t_eval,
                 "decode_only_simplejpeg": o_decode,
                 "decode_only_tf": t_decode,
                 "tf_data_train_decode_and_crop": t_train_crop})
  grain_rate = grain_pipeline(make_jpegs(SIZES[0]), args.seconds)
  try:
    fmnist = fashion_mnist(args.seconds)
  except FileNotFoundError:
    fmnist = None
  print(f"images per CPU-second, one core ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores on the machine)")
  print(f"{'JPEG size':>10} | {'train ours':>10} {'tf.data':>8} {'x':>5} | "
        f"{'eval ours':>10} {'tf.data':>8} {'x':>5} | "
        f"{'decode only: simplejpeg':>23} {'tf':>6} | "
        f"{'tf.data train, decode_and_crop':>30}")
  for r in rows:
    r["train_speedup"] = r["ours_train"] / r["tf_data_train"]
    r["eval_speedup"] = r["ours_eval"] / r["tf_data_eval"]
    print(f"{r['size']:>10} | {r['ours_train']:10.0f} {r['tf_data_train']:8.0f} "
          f"{r['train_speedup']:5.2f} | {r['ours_eval']:10.0f} "
          f"{r['tf_data_eval']:8.0f} {r['eval_speedup']:5.2f} | "
          f"{r['decode_only_simplejpeg']:23.0f} {r['decode_only_tf']:6.0f} | "
          f"{r['tf_data_train_decode_and_crop']:30.0f}")
  from vgg_jax import preprocess as P  # pylint: disable=g-import-not-at-top
  crop_aware = P._jpegcrop is not None  # pylint: disable=protected-access
  print(f"crop-aware C decoder (vgg_jax._jpegcrop): "
        f"{'built' if crop_aware else 'NOT BUILT: full decodes'}")
  print(f"full grain training iterator, 500x375 JPEGs from a folder: "
        f"{grain_rate:.0f} images/s")
  if fmnist:
    print(f"Fashion-MNIST training batches (vectorised, 32x32): "
          f"{fmnist:.0f} images/s")
  result = {"machine": {"cpu": platform.processor() or platform.machine(),
                        "cpu_count": os.cpu_count(), "cores_used": 1,
                        "python": platform.python_version()},
            "command": "python benchmarks/input_pipeline.py",
            "crop_aware_decoder": crop_aware,
            "S": S, "Q": Q, "crop": CROP, "rows": rows,
            "grain_train_iterator_500x375": grain_rate,
            "fashion_mnist_train": fmnist}
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.tmp")
  tmp.write_text(json.dumps(result, indent=1) + "\n")
  os.replace(tmp, out)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
