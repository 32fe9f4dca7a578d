"""Box annotations in ILSVRC's published layouts (Appendix A data): tiny tars
built from real photos with each real defect, joined, counted, written to
ArrayRecord and read back."""

import collections
import io
import tarfile

import numpy as np
import pytest

from tests import data_fixtures as fx
from vgg_jax.data import loc_records as L
from vgg_jax.data import voc_xml as V

SYNSETS = ["n01440764", "n01443537", "n09999999"]


def _xml(folder, filename, size, objects):
  """An annotation written by hand (not by the code under test)."""
  size_xml = ("" if size is None else
              f"<size><width>{size[0]}</width><height>{size[1]}</height>"
              "<depth>3</depth></size>")
  objs = "".join(
      f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0"
      f"</truncated><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
      f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>"
      "</object>" for n, b in objects)
  return (f"<annotation><folder>{folder}</folder><filename>{filename}"
          f"</filename><source><database>ILSVRC_2012</database></source>"
          f"{size_xml}<segmented>0</segmented>{objs}</annotation>").encode()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _photo(i):
  return fx.varied_photo(i, np.random.default_rng(i))


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory):
  root = tmp_path_factory.mktemp("ilsvrc")
  imgs = {}  # stem -> (bytes, (h, w))
  for si, syn in enumerate(SYNSETS[:2]):
    for j in range(3):
      p = _photo(10 * si + j)
      imgs[f"{syn}_{j}"] = (fx.jpeg_bytes(p), p.shape[:2])
  imgs["n01440764_empty"] = (b"", None)
  with tarfile.open(root / L.TRAIN_IMAGES, "w") as outer:
    for syn in SYNSETS[:2]:
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode="w") as inner:
        for stem, (data, _) in imgs.items():
          if stem.startswith(syn):
            _add(inner, f"{stem}.JPEG", data)
      _add(outer, f"{syn}.tar", buf.getvalue())
  hw = {k: v[1] for k, v in imgs.items()}
  a0 = hw["n01440764_0"]
  a1 = hw["n01440764_1"]
  b0 = hw["n01443537_0"]
  xmls = {
      # clean
      "n01440764/n01440764_0.xml": _xml("n01440764", "n01440764_0",
                                        (a0[1], a0[0]),
                                        [("n01440764", (10, 20, 100, 120))]),
      # no <size>; one box past the right edge, one with reversed x ends
      "n01440764/n01440764_1.xml": _xml(
          "n01440764", "n01440764_1", None,
          [("n01440764", (5, 6, a1[1] + 50, 40)),
           ("n01440764", (90, 10, 30, 60))]),
      # n01440764_2: no annotation at all.
      # undecodable image: a malformed box and one wholly outside
      "n01440764/n01440764_empty.xml": _xml("n01440764", "n01440764_empty",
                                            (500, 375),
                                            [("n01440764", ("x", 1, 2, 3))]),
      # an annotation whose image does not exist
      "n01440764/n01440764_999.xml": _xml("n01440764", "n01440764_999",
                                          (500, 375),
                                          [("n01440764", (1, 1, 9, 9))]),
      # <size> twice the decoded image: boxes rescaled by 1/2
      "n01443537/n01443537_0.xml": _xml("n01443537", "n01443537_0",
                                        (2 * b0[1], 2 * b0[0]),
                                        [("n01443537", (20, 40, 201, 241))]),
      # objects of another class, an unknown name and a box wholly outside
      "n01443537/n01443537_1.xml": _xml(
          "n01443537", "n01443537_1", None,
          [("n01443537", (1, 2, 30, 40)), ("n09999999", (50, 60, 70, 80)),
           ("n0000bogus", (1, 1, 5, 5)),
           ("n01443537", (5000, 5000, 5010, 5010))]),
      # unparseable and unsafe (billion laughs) files
      "n01443537/n01443537_2.xml": (
          b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          b'<!ENTITY lol2 "&lol;&lol;&lol;">]><annotation>&lol2;'
          b"</annotation>"),
  }
  with tarfile.open(root / L.TRAIN_BOXES, "w:gz") as tar:
    for name, data in xmls.items():
      _add(tar, name, data)
    _add(tar, "n01440764/broken.xml", b"<annotation><object>")
  val = {}
  with tarfile.open(root / L.VAL_IMAGES, "w") as tar:
    for i in range(3):
      p = _photo(100 + i)
      name = f"ILSVRC2012_val_{i + 1:08d}"
      val[name] = p.shape[:2]
      _add(tar, f"{name}.JPEG", fx.jpeg_bytes(p))
  with tarfile.open(root / L.VAL_BOXES, "w:gz") as tar:
    v1 = val["ILSVRC2012_val_00000001"]
    _add(tar, "val/ILSVRC2012_val_00000001.xml",
         _xml("val", "ILSVRC2012_val_00000001", (v1[1], v1[0]),
              [("n01443537", (3, 4, 50, 60))]))
    v2 = val["ILSVRC2012_val_00000002"]
    _add(tar, "val/ILSVRC2012_val_00000002.xml",
         _xml("val", "ILSVRC2012_val_00000002", (v2[1], v2[0]),
              [("n01440764", (3, 4, 50, 60)), ("n01443537", (9, 9, 20, 20)),
               ("n01440764", (30, 40, 80, 90))]))
  return root, hw, val


def test_train_join_and_defect_counts(ilsvrc):
  root, hw, _ = ilsvrc
  plog = L.PrepareLog()
  exs = {e.image_id: e for e in L.iter_ilsvrc_train(
      root / L.TRAIN_IMAGES, root / L.TRAIN_BOXES, SYNSETS, plog)}
  c = plog.counts
  assert set(exs) == {"n01440764_0", "n01440764_1", "n01443537_0",
                      "n01443537_1"}
  np.testing.assert_array_equal(exs["n01440764_0"].boxes, [[10, 20, 100, 120]])
  assert exs["n01440764_0"].label == 0 and exs["n01443537_0"].label == 1
  w1 = hw["n01440764_1"][1]
  np.testing.assert_array_equal(exs["n01440764_1"].boxes,
                                [[5, 6, w1 - 1, 40], [30, 10, 90, 60]])
  np.testing.assert_allclose(exs["n01443537_0"].boxes, [[10, 20, 100, 120]])
  np.testing.assert_array_equal(exs["n01443537_1"].box_labels, [1, 2])
  assert (exs["n01440764_0"].height,
          exs["n01440764_0"].width) == hw["n01440764_0"]
  assert c["clipped"] == 1
  assert c["swapped_coordinates"] == 1
  assert c["missing_size"] == 2
  assert c["size_mismatch"] == 1
  assert c["malformed_box"] == 1
  assert c["outside_image"] == 1
  assert c["unknown_name"] == 1
  assert c["other_class_object"] == 1
  assert c["several_classes"] == 1
  assert c["unsafe_xml"] == 1
  assert c["unparseable_xml"] == 1
  assert c["undecodable_image"] == 1
  assert len(plog.undecodable) == 1 and "n01440764_empty" in plog.undecodable[0]
  # _2 of both classes have no usable annotation (none / unsafe).
  assert c["images"] == 7 and c["images_without_boxes"] == 2
  assert c["images_with_boxes"] == 4
  assert c["annotations_without_image"] == 2  # _999 and broken.xml
  assert c["boxes"] == 6


def test_val_join_labels_from_xml(ilsvrc):
  root, _, _ = ilsvrc
  plog = L.PrepareLog()
  exs = list(L.iter_ilsvrc_val(root / L.VAL_IMAGES, root / L.VAL_BOXES,
                               SYNSETS, plog))
  assert [e.image_id for e in exs] == [f"ILSVRC2012_val_{i:08d}"
                                       for i in (1, 2, 3)]
  assert [e.label for e in exs] == [1, 0, -1]  # 3 has no XML: kept, -1
  assert len(exs[1].boxes) == 3 and plog.counts["several_classes"] == 1
  assert plog.counts["images_without_boxes"] == 1


def test_records_round_trip(ilsvrc, tmp_path):
  root, _, _ = ilsvrc
  plog = L.PrepareLog()
  exs = list(L.iter_ilsvrc_train(root / L.TRAIN_IMAGES, root / L.TRAIN_BOXES,
                                 SYNSETS, plog))
  out = L.prepare_split(iter(exs), tmp_path, "train", plog)
  assert out["records"] == len(exs) == 4
  assert not list(tmp_path.glob(".*tmp"))
  src = L.LocRecordSource(tmp_path / "train.array_record")
  assert len(src) == 4
  for i, ex in enumerate(exs):
    r = src[i]
    assert r["image"] == ex.image and r["image_id"] == ex.image_id
    assert r["label"] == ex.label and (r["height"], r["width"]) == (
        ex.height, ex.width)
    np.testing.assert_allclose(r["boxes"], ex.boxes, atol=1e-3)
    np.testing.assert_array_equal(r["box_labels"], ex.box_labels)
  assert (tmp_path / "train.log.json").exists()


def test_prepare_command(ilsvrc, tmp_path):
  root, _, _ = ilsvrc
  res = L.prepare_imagenet2012_loc(root, tmp_path, synsets=SYNSETS)
  assert res["train"]["records"] == 4 and res["validation"]["records"] == 3
  with pytest.raises(FileNotFoundError, match="neither"):
    L.prepare_imagenet2012_loc(tmp_path / "nothing", tmp_path, SYNSETS)


def test_safe_parse_refuses_entities():
  with pytest.raises(V.UnsafeXML):
    V.safe_parse(b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                 b"<a>&x;</a>")
  counts = collections.Counter()
  assert V.parse_voc_xml(b"<a>&undeclared;</a>", counts) is None
  assert counts["unparseable_xml"] == 1
  ann = V.parse_voc_xml(V.to_voc_xml(folder="f", filename="x",
                                     size_wh=(40, 30),
                                     objects=[("n1", (1, 2, 3, 4))]), counts)
  assert ann.size_wh == (40, 30) and ann.objects[0].box == (1, 2, 3, 4)


def test_voc_folder_source(tmp_path):
  """Users' own data: ROOT/<split>/<class>/x.jpg with x.xml beside it."""
  d = tmp_path / "train" / "n01443537"
  d.mkdir(parents=True)
  p = _photo(3)
  (d / "a.jpg").write_bytes(fx.jpeg_bytes(p))
  (d / "a.xml").write_bytes(_xml("n01443537", "a", (p.shape[1], p.shape[0]),
                                 [("n01443537", (1, 2, 30, 40))]))
  (d / "b.jpg").write_bytes(fx.jpeg_bytes(_photo(4)))  # no XML
  plog = L.PrepareLog()
  exs = list(L.iter_voc_folder(tmp_path, "train", SYNSETS, plog))
  assert [e.image_id for e in exs] == ["a", "b"]
  assert [e.label for e in exs] == [1, 1]
  np.testing.assert_array_equal(exs[0].boxes, [[1, 2, 30, 40]])
  assert len(exs[1].boxes) == 0
  assert plog.counts["images_without_boxes"] == 1
  (tmp_path / "train" / "stranger").mkdir()
  with pytest.raises(ValueError, match="stranger"):
    list(L.iter_voc_folder(tmp_path, "train", SYNSETS, L.PrepareLog()))
  with pytest.raises(FileNotFoundError, match="expected"):
    list(L.iter_voc_folder(tmp_path, "test", SYNSETS, L.PrepareLog()))


def test_annotation_tar_with_nested_class_tars(tmp_path):
  inner = io.BytesIO()
  with tarfile.open(fileobj=inner, mode="w:gz") as t:
    _add(t, "n01440764/n01440764_5.xml",
         _xml("n01440764", "n01440764_5", (50, 40),
              [("n01440764", (1, 2, 3, 4))]))
  with tarfile.open(tmp_path / "boxes.tar.gz", "w:gz") as t:
    _add(t, "n01440764.tar.gz", inner.getvalue())
    _add(t, "n01443537/n01443537_1.xml",
         _xml("n01443537", "n01443537_1", (50, 40), []))
  counts = collections.Counter()
  anns = L.read_annotation_tar(tmp_path / "boxes.tar.gz", counts)
  assert set(anns) == {"n01440764_5", "n01443537_1"}
  assert anns["n01440764_5"].objects[0].box == (1, 2, 3, 4)
  assert counts["annotation_files"] == 2
