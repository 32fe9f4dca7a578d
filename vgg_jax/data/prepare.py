"""Preparing datasets: TFDS builds as ArrayRecord, class-folder indices."""

from __future__ import annotations

import logging
import pathlib
import posixpath
import tarfile

from vgg_jax import input_pipeline
from vgg_jax import preprocess
from vgg_jax import progress

log = logging.getLogger(__name__)

ILSVRC_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def _member_problem(member: tarfile.TarInfo) -> str | None:
  """Why ``member`` cannot be in an ILSVRC-2012 tar, or None if it can."""
  name = member.name
  if name.startswith("/") or posixpath.isabs(name):
    return "absolute name"
  if ".." in name.replace("\\", "/").split("/"):
    return "'..' in the name"
  if member.issym():
    return f"symlink to {member.linkname}"
  if member.islnk():
    return f"hard link to {member.linkname}"
  if member.ischr() or member.isblk():
    return "device node"
  if member.isfifo():
    return "fifo"
  if not (member.isfile() or member.isdir()):
    return f"tar member of type {member.type!r}"
  return None


def check_ilsvrc_tars(manual_dir: str | pathlib.Path) -> dict[str, int]:
  """Refuse ILSVRC-2012 tars holding members that are not plain files.

  TFDS reads the tars as streams (``tarfile.extractfile``, never
  ``extract``), so no member name reaches the file system; still, a member
  named ``../x`` or ``/x``, a link, a device node or a fifo is no image, and
  a tar holding one is damaged or forged: it is refused before anything is
  written, with every offender listed. Reads only the members' headers
  (inner tars of the training tar included). Returns {tar: members}.
  """
  counts, problems = {}, []

  def check(members, where):
    n = 0
    for m in members:
      n += 1
      why = _member_problem(m)
      if why:
        problems.append(f"{where}: {m.name!r} ({why})")
    return n

  for tar_name in ILSVRC_TARS:
    path = pathlib.Path(manual_dir) / tar_name
    if not path.exists():
      continue
    try:
      with tarfile.open(path, mode="r:") as outer:
        members = list(outer)
        counts[tar_name] = check(members, tar_name)
        if tar_name == "ILSVRC2012_img_train.tar":
          # One tar per synset inside (n01440764.tar, ...).
          for m in members:
            if m.isfile() and _member_problem(m) is None:
              with tarfile.open(fileobj=outer.extractfile(m),
                                mode="r:") as inner:
                counts[f"{tar_name}/{m.name}"] = check(
                    inner, f"{tar_name}/{m.name}")
    except tarfile.TarError as e:
      raise ValueError(f"{path} is not a readable tar ({e}); re-download "
                       "it from https://image-net.org") from e
  if problems:
    shown = "\n  ".join(problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    raise ValueError(
        f"the ILSVRC-2012 tars in {manual_dir} hold {len(problems)} "
        f"member(s) that are not plain image files (nothing was written):"
        f"\n  {shown}{more}\nRe-download the tars from "
        "https://image-net.org/download-images (or remove those members) "
        "and run again")
  return counts


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
    counts = check_ilsvrc_tars(manual_dir)
    log.info("building %s from %s (%d tar members checked: plain files)",
             name, found, sum(counts.values()))
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
