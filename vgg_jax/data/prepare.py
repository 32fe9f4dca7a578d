"""Preparing datasets: TFDS builds as ArrayRecord, class-folder indices."""

from __future__ import annotations

import logging
import pathlib

from vgg_jax import input_pipeline
from vgg_jax import preprocess
from vgg_jax import progress

log = logging.getLogger(__name__)

ILSVRC_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def prepare_tfds(name: str, *, data_dir: str | None,
                 manual_dir: str | None = None) -> dict[str, int]:
  """Builds TFDS dataset ``name`` as ArrayRecord; returns {split: examples}.

  ``tfds build`` wants apache_beam for ArrayRecord; calling the builder
  directly does not (checked for imagenet2012 with tensorflow-datasets
  4.9.10).  TFDS writes into an ``incomplete.*`` folder and renames it when
  done, so an interrupted build is never taken for a finished one.
  """
  if name == "fashion_mnist" and not data_dir:
    idx = pathlib.Path(input_pipeline.FASHION_MNIST_DIR)
    if (idx / "train-images-idx3-ubyte.gz").exists():
      log.info("Fashion-MNIST is installed as IDX files in %s (Debian's "
               "dataset-fashion-mnist): nothing to prepare", idx)
      return {"train": 60000, "test": 10000}
  tfds = input_pipeline.tfds_module()
  if name.startswith("imagenet2012"):
    if not manual_dir:
      raise ValueError(
          f"{name} is built from the ILSVRC-2012 tars you download yourself "
          "(https://image-net.org/download-images): pass --manual_dir DIR "
          f"where DIR holds {' and/or '.join(ILSVRC_TARS)}")
    found = [t for t in ILSVRC_TARS if (pathlib.Path(manual_dir) / t).exists()]
    if not found:
      raise FileNotFoundError(
          f"--manual_dir {manual_dir} holds neither of {ILSVRC_TARS}; put the "
          "ILSVRC-2012 training and/or validation tars there")
    log.info("building %s from %s", name, found)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"TFDS knows no dataset {name!r}: {e}") from e
  download_config = tfds.download.DownloadConfig(
      manual_dir=str(manual_dir) if manual_dir else None)
  try:
    builder.download_and_prepare(file_format="array_record",
                                 download_config=download_config)
  except (OSError, ConnectionError) as e:
    hint = (" (for Fashion-MNIST without internet: `apt-get install "
            "dataset-fashion-mnist` and use source='fashion_mnist')"
            if name == "fashion_mnist" else "")
    raise OSError(f"preparing {name} failed: {e}{hint}") from e
  return {str(k): v.num_examples for k, v in builder.info.splits.items()}


def prepare_folder(data_dir: str, *, class_index_path: str | None = None,
                   train_split: str = "train", check: bool = False) -> dict:
  """Writes (or reads) the class index and summarises every split folder.

  Returns {"class_index": path, "num_classes": N, "splits": {split:
  examples}, "undecodable": [names]} (the last only filled with ``check``).
  """
  root = pathlib.Path(data_dir)
  index = input_pipeline.load_or_create_class_index(
      root, class_index_path, train_split)
  splits = {}
  undecodable = []
  for split_dir in sorted(d for d in root.iterdir() if d.is_dir()):
    if not any(c.is_dir() for c in split_dir.iterdir()):
      continue
    src = input_pipeline.FolderImageSource(root, split_dir.name,
                                           class_index_path, train_split)
    splits[split_dir.name] = len(src)
    if check:
      with progress.Progress(len(src), desc=f"checking {split_dir.name}",
                             unit="images") as bar:
        for i in range(len(src)):
          try:
            src.get(i)
          except preprocess.DecodeError as e:
            undecodable.append(str(e))
          bar.update(1)
  return {"class_index": str(class_index_path or root / "class_index.json"),
          "num_classes": len(index), "splits": splits,
          "undecodable": undecodable}
