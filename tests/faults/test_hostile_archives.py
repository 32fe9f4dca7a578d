"""Hostile ILSVRC-style tars: nothing is ever written outside the output.

`python -m vgg_jax.data prepare imagenet2012 --manual_dir M` hands the
user's tars to TFDS' imagenet2012 builder, which reads them as streams
(``tarfile.extractfile``; the training tar's per-synset tars through
``iter_archive(..., TAR_STREAM)``) and never extracts a member to disk. The
first test proves that on hostile tars with TFDS' own reading functions; the
second that ``prepare`` refuses such tars outright, naming every offending
member, before anything is written.

Every tar is built here, in a temp dir, with members a real ILSVRC tar
never has: ``../evil``, an absolute name, a symlink and a hard link pointing
outside (and a file written "through" the symlink), a device node, a fifo.
"""

import contextlib
import io
import pathlib
import tarfile

import pytest

from vgg_jax.data import __main__ as cli
from vgg_jax.data import prepare

TRAIN, VAL = prepare.ILSVRC_TARS


def _file(tar, name, data=b"\xff\xd8 not really a jpeg"):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _special(tar, name, kind, linkname=""):
  info = tarfile.TarInfo(name)
  info.type = kind
  info.linkname = linkname
  if kind == tarfile.CHRTYPE:
    info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
  tar.addfile(info)


def _hostile_members(tar, outside: pathlib.Path):
  """Each trick at once, aimed at ``outside`` (a dir beside the output)."""
  _file(tar, "ILSVRC2012_val_00000001.JPEG")  # one honest member
  _file(tar, "../evil-dotdot")
  _file(tar, "sub/../../evil-nested-dotdot")
  _file(tar, str(outside / "evil-absolute"))
  _special(tar, "link", tarfile.SYMTYPE, str(outside))
  _file(tar, "link/evil-through-symlink")
  _special(tar, "hard", tarfile.LNKTYPE, str(outside / "secret"))
  _special(tar, "null", tarfile.CHRTYPE)
  _special(tar, "pipe", tarfile.FIFOTYPE)


HOSTILE = {  # member name -> the reason prepare must give
    "../evil-dotdot": "'..' in the name",
    "sub/../../evil-nested-dotdot": "'..' in the name",
    "link": "symlink to",
    "hard": "hard link to",
    "null": "device node",
    "pipe": "fifo",
}


def _tree(root: pathlib.Path):
  return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def hostile(tmp_path, monkeypatch):
  """manual/ with a hostile val tar and a train tar whose synset tar is
  hostile (and a hostile outer member); cwd deep inside tmp_path so that a
  relative ``../`` would land in tmp_path/work."""
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "secret").write_text("not yours")
  manual = tmp_path / "manual"
  manual.mkdir()
  with tarfile.open(manual / VAL, "w") as tar:
    _hostile_members(tar, outside)
  inner = io.BytesIO()
  with tarfile.open(fileobj=inner, mode="w") as tar:
    _file(tar, "n01440764_1.JPEG")
    _hostile_members(tar, outside)
  with tarfile.open(manual / TRAIN, "w") as tar:
    _file(tar, "n01440764.tar", inner.getvalue())
    _file(tar, "../n01443537.tar", inner.getvalue())
  work = tmp_path / "work" / "deep"
  work.mkdir(parents=True)
  monkeypatch.chdir(work)
  return dict(root=tmp_path, outside=outside, manual=manual,
              before=_tree(tmp_path))


def _nothing_written(h):
  assert _tree(h["root"]) == h["before"]
  assert (h["outside"] / "secret").read_text() == "not yours"
  for evil in ("evil-dotdot", "evil-nested-dotdot", "evil-absolute",
               "evil-through-symlink", "n01443537.tar"):
    hits = [p for p in h["root"].rglob(evil)] + [
        p for p in h["root"].parent.glob(evil)]
    assert not hits, hits


def test_tfds_reads_hostile_tars_as_streams_writing_nothing(hostile):
  """What the imagenet2012 builder does with the tars, step for step."""
  tfds = pytest.importorskip("tensorflow_datasets")
  seen = []
  # Validation labels: the builder lists the val tar's names.
  with tarfile.open(hostile["manual"] / VAL, mode="r:") as tar:
    tar.getnames()
  for fname, fobj in tfds.download.iter_archive(
      hostile["manual"] / VAL, tfds.download.ExtractMethod.TAR):
    seen.append(fname)
    fobj.read()
  for fname, fobj in tfds.download.iter_archive(
      hostile["manual"] / TRAIN, tfds.download.ExtractMethod.TAR):
    for inner_name, image in tfds.download.iter_archive(
        io.BytesIO(fobj.read()), tfds.download.ExtractMethod.TAR_STREAM):
      seen.append(f"{fname}:{inner_name}")
      image.read()
  # TFDS silently skips the '..' and absolute names, the links, the device
  # and the fifo (a silent drop: why prepare refuses such tars loudly); a
  # name "through" the symlink comes through as a mere string (the
  # builder's 'file_name' feature). No member became a file anywhere.
  for where in ("", "n01440764.tar:"):
    assert f"{where}ILSVRC2012_val_00000001.JPEG" in seen
    assert f"{where}link/evil-through-symlink" in seen
  assert not [s for s in seen if "evil-dotdot" in s or "absolute" in s
              or s.split(":")[-1] in ("link", "hard", "null", "pipe")]
  _nothing_written(hostile)


def test_prepare_refuses_hostile_tars_before_writing(hostile):
  out = hostile["root"] / "tfds_out"
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    rc = cli.main(["prepare", "imagenet2012", "--manual_dir",
                   str(hostile["manual"]), "--data_dir", str(out)])
  msg = err.getvalue()
  assert rc == 2, msg
  assert msg.startswith("error: ") and "nothing was written" in msg
  assert "Re-download the tars" in msg
  for where in (VAL, f"{TRAIN}/n01440764.tar"):
    for name, why in HOSTILE.items():
      assert f"{where}: {name!r} ({why}" in msg, (where, name, msg)
    absolute = str(hostile["outside"] / "evil-absolute")
    assert f"{where}: {absolute!r} (absolute name)" in msg
  assert f"{TRAIN}: '../n01443537.tar' ('..' in the name)" in msg
  assert not out.exists()
  _nothing_written(hostile)


@pytest.mark.parametrize("name,why", sorted(HOSTILE.items()))
def test_each_trick_alone_is_refused(tmp_path, name, why):
  """One hostile member among honest ones is enough to refuse the tar."""
  outside = tmp_path / "outside"
  outside.mkdir()
  manual = tmp_path / "manual"
  manual.mkdir()
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as full:
    _hostile_members(full, outside)
  with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as full, \
      tarfile.open(manual / VAL, "w") as tar:
    for m in full:
      if m.name in (name, "ILSVRC2012_val_00000001.JPEG"):
        tar.addfile(m, full.extractfile(m) if m.isfile() else None)
  with pytest.raises(ValueError) as e:
    prepare.check_ilsvrc_tars(manual)
  assert "hold 1 member(s)" in str(e.value)
  assert f"{VAL}: {name!r} ({why}" in str(e.value)


def test_honest_tars_pass_the_check(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  inner = io.BytesIO()
  with tarfile.open(fileobj=inner, mode="w") as tar:
    for i in range(3):
      _file(tar, f"n01440764_{i}.JPEG")
  with tarfile.open(manual / TRAIN, "w") as tar:
    _file(tar, "n01440764.tar", inner.getvalue())
  with tarfile.open(manual / VAL, "w") as tar:
    for i in range(2):
      _file(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG")
  assert prepare.check_ilsvrc_tars(manual) == {
      TRAIN: 1, f"{TRAIN}/n01440764.tar": 3, VAL: 2}
