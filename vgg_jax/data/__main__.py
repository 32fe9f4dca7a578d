"""python -m vgg_jax.data {prepare,stats} ... (see vgg_jax/data/__init__.py)."""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

from vgg_jax import files
from vgg_jax import input_pipeline
from vgg_jax.data import prepare
from vgg_jax.data import stats


def _prepare_loc(args) -> dict:
  """Appendix A's box records: the ILSVRC-2012 tars (imagenet2012_loc) or a
  VOC folder DATA_DIR/<split>/<class>/x.jpg + x.xml (loc_folder)."""
  from vgg_jax.data import loc_records  # pylint: disable=g-import-not-at-top
  if not args.data_dir:
    raise ValueError(f"prepare {args.name} needs --data_dir")
  if args.name == "imagenet2012_loc":
    if not args.manual_dir:
      raise ValueError("prepare imagenet2012_loc needs --manual_dir (the "
                       "image tars and the bbox tars)")
    result = loc_records.prepare_imagenet2012_loc(args.manual_dir,
                                                  args.data_dir)
  else:
    index = json.loads(pathlib.Path(
        args.class_index or pathlib.Path(args.data_dir) / "class_index.json"
    ).read_text())
    names = sorted(index, key=index.get)
    result = {}
    for split in ("train", "validation"):
      if (pathlib.Path(args.data_dir) / split).is_dir():
        plog = loc_records.PrepareLog()
        result[split] = loc_records.prepare_split(
            loc_records.iter_voc_folder(args.data_dir, split, names, plog),
            args.data_dir, split, plog)
  return {k: {"records": v["records"], "counts": v["counts"]}
          for k, v in result.items()}


def _parser():
  p = argparse.ArgumentParser(prog="python -m vgg_jax.data",
                              description=__doc__)
  sub = p.add_subparsers(dest="command", required=True)
  pp = sub.add_parser(
      "prepare", help="build a TFDS dataset as ArrayRecord, or index a folder",
      description="NAME: a TFDS dataset (imagenet2012 needs --manual_dir with "
      "the ILSVRC-2012 tars), 'folder' (DATA_DIR/<split>/<class>/<images>), "
      "'imagenet2012_loc' (--manual_dir with the image and bbox tars: "
      "localisation records, Appendix A) or 'loc_folder' (DATA_DIR/<split>/"
      "<class>/x.jpg + x.xml and DATA_DIR/class_index.json -> records).")
  pp.add_argument("name")
  pp.add_argument("--data_dir", default=None,
                  help="TFDS data_dir, or the folder root for 'folder'")
  pp.add_argument("--manual_dir", default=None,
                  help="where the manually downloaded files are (imagenet2012)")
  pp.add_argument("--class_index", default=None,
                  help="folder: class-index JSON (default DATA_DIR/class_index.json)")
  pp.add_argument("--train_split", default="train")
  pp.add_argument("--check", action="store_true",
                  help="folder: decode every image and list those that fail")
  ps = sub.add_parser(
      "stats", help="mean RGB and RGB-covariance PCA of a training split "
      "(and, with --mean_image, its per-pixel mean image)")
  ps.add_argument("--source", default="tfds",
                  choices=list(input_pipeline.source_names()))
  ps.add_argument("--name", default="imagenet2012", help="TFDS dataset name")
  ps.add_argument("--data_dir", default=None)
  ps.add_argument("--split", default="train")
  ps.add_argument("--class_index", default=None)
  ps.add_argument("--max_images", type=int, default=None,
                  help="a seeded random subset of this many images")
  ps.add_argument("--side", type=int, default=None,
                  help="rescale each image's shorter side to this first")
  ps.add_argument("--seed", type=int, default=0)
  ps.add_argument("--output", default=None, help="also write the JSON here")
  ps.add_argument("--mean_image", default=None, metavar="FILE.npy",
                  help="also compute Krizhevsky's per-pixel mean image (the "
                  "mean of the images rescaled to 256, central 256x256 "
                  "square; float32 256x256x3) and write it here, e.g. next "
                  "to --output; the AlexNet config's data.mean_image")
  return p


def main(argv=None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  args = _parser().parse_args(argv)
  try:
    if args.command == "prepare":
      if args.name in ("imagenet2012_loc", "loc_folder"):
        result = _prepare_loc(args)
      elif args.name == "folder":
        if not args.data_dir:
          raise ValueError("prepare folder needs --data_dir")
        result = prepare.prepare_folder(
            args.data_dir, class_index_path=args.class_index,
            train_split=args.train_split, check=args.check)
      else:
        result = prepare.prepare_tfds(args.name, data_dir=args.data_dir,
                                      manual_dir=args.manual_dir)
    else:
      cfg = input_pipeline.default_data_config(args.source)
      cfg.name = args.name
      cfg.data_dir = args.data_dir
      cfg.class_index_path = args.class_index
      result = stats.compute_stats(cfg, split=args.split,
                                   max_images=args.max_images, side=args.side,
                                   seed=args.seed, mean_image=args.mean_image,
                                   show_progress=True)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  text = json.dumps(result, indent=1)
  print(text)
  if args.command == "stats" and args.output:
    files.atomic_write(args.output, lambda f: f.write((text + "\n").encode()))
  if args.command == "stats" and "mean_rgb" in result:
    print("# for the data config:\n"
          f"data.mean_rgb = {tuple(round(v, 3) for v in result['mean_rgb'])}\n"
          f"data.pca_eigval = {tuple(round(v, 5) for v in result['pca_eigval'])}\n"
          "data.pca_eigvec = "
          f"{tuple(tuple(round(v, 4) for v in r) for r in result['pca_eigvec'])}")
  if args.command == "stats" and "mean_image" in result:
    print(f"data.mean_image = {result['mean_image']!r}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
