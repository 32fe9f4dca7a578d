"""Import published weights: read, convert, check, save (and the command).

    python -m vgg_jax.weights --from keras \
        --input vgg16_weights_tf_dim_ordering_tf_kernels.h5 --output DIR
    python -m vgg_jax.weights --from torchvision \
        --input vgg16-397923af.pth --output DIR

Everything is read and checked before anything is written, and the output
is written atomically (``save_pretrained``): on any error nothing is left at
``--output``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import sys

from vgg_jax import conventions
from vgg_jax.weights.converters import (convert_keras, convert_torchvision,
                                        read_keras_h5, resolve_name)
from vgg_jax.weights.errors import WeightsError
from vgg_jax.weights.pretrained import read_metadata, save_pretrained
from vgg_jax.weights.pth import read_torch_state_dict
from vgg_jax.weights.tensors import model_from_flat

# What each source's weights expect of their input (paper §3.1 subtracts
# the mean RGB; torchvision's also divide by the std).
SOURCES = {"keras": conventions.CAFFE, "torchvision": conventions.TORCHVISION}


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def import_weights(source: str, input_path: str | os.PathLike,
                   output_dir: str | os.PathLike, *, model: str | None = None,
                   overwrite: bool = False) -> pathlib.Path:
  """Convert a published weight file into a pretrained directory.

  Args:
    source: 'keras' (vgg16/vgg19 .h5) or 'torchvision' (.pth/.safetensors).
    input_path: the weight file.
    output_dir: where to write; nothing is left there on any error.
    model: optional net name to insist on ('vgg16', 'D', 'vgg16_bn', ...);
      read off the tensors otherwise.
  """
  if source not in SOURCES:
    raise WeightsError(f"unknown source {source!r}; expected one of "
                       f"{sorted(SOURCES)}")
  input_path, output_dir = pathlib.Path(input_path), pathlib.Path(output_dir)
  if model is not None:
    resolve_name(model)  # an unknown name fails before reading the file
  if output_dir.exists() and (not output_dir.is_dir() or any(
      output_dir.iterdir())) and not overwrite:
    raise FileExistsError(f"{output_dir} exists and is not empty; pass "
                          "--overwrite or choose another --output")
  what = str(input_path)
  if source == "keras":
    kwargs, flat = convert_keras(read_keras_h5(input_path), model=model,
                                 what=what)
  else:
    kwargs, flat = convert_torchvision(read_torch_state_dict(input_path),
                                       model=model, what=what)
  net = model_from_flat(kwargs, flat)
  return save_pretrained(
      output_dir, net, model_kwargs=kwargs,
      input_convention=SOURCES[source], source=f"{source}:{input_path.name}",
      extra={"imported_from": source, "input_sha256": _sha256(input_path)},
      overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m vgg_jax.weights",
      description="Import published VGG weights into vgg_jax's pretrained "
      "format (orbax params + metadata.json with the input convention).")
  parser.add_argument("--from", dest="source", required=True,
                      choices=sorted(SOURCES),
                      help="keras: vgg16/vgg19_weights_tf_dim_ordering_tf_"
                      "kernels.h5 (BGR, 0-255, mean pixel); torchvision: "
                      "vgg11/13/16/19(_bn) state dict, .pth or .safetensors "
                      "(RGB, [0,1], mean/std)")
  parser.add_argument("--input", required=True, help="the weight file")
  parser.add_argument("--output", required=True,
                      help="directory to create (must not exist or be empty)")
  parser.add_argument("--model", default=None,
                      help="net to insist on (vgg16, D, vgg16_bn, ...); "
                      "read off the tensors when omitted")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a non-empty --output directory")
  args = parser.parse_args(argv)
  try:
    out = import_weights(args.source, args.input, args.output,
                         model=args.model, overwrite=args.overwrite)
  except (WeightsError, FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  metadata = read_metadata(out)
  print(f"wrote {out}: {metadata['model']} from {metadata['source']}, input "
        f"convention {metadata['input_convention']}")
  return 0

