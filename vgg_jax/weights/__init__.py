"""Pretrained weights: the on-disk format, and importers of published weights.

The package, by job:

- ``pretrained``: the format every part of vgg_jax loads (``DIR/params/``
  orbax checkpoint + ``DIR/metadata.json`` with the create_model kwargs and
  the input convention), written atomically; ``save_pretrained``,
  ``load_pretrained``, ``read_metadata``, ``input_convention_of``.
- ``pth``: ``read_torch_state_dict``, torch ``.pth`` files read by a
  restricted unpickler (tensors only, no torch, no code run, sizes checked
  before allocating) and ``.safetensors``.
- ``converters``: Keras/Caffe ``.h5`` (``read_keras_h5``, ``convert_keras``)
  and torchvision state dicts (``convert_torchvision``) -> our flat weights.
- ``tensors``: the tensors a net holds and ``model_from_flat``.
- ``cli``: ``import_weights`` and ``python -m vgg_jax.weights`` (``main``).

Every public name is re-exported here: callers use ``vgg_jax.weights.X``.
"""

from vgg_jax.conventions import InputConvention
from vgg_jax.weights.cli import SOURCES, import_weights, main
from vgg_jax.weights.converters import (IMPORTABLE, convert_keras,
                                        convert_torchvision, read_keras_h5)
from vgg_jax.weights.errors import WeightsError
from vgg_jax.weights.pretrained import (FORMAT, METADATA_FILE, PARAMS_DIR,
                                        input_convention_of, load_pretrained,
                                        read_metadata, save_pretrained)
from vgg_jax.weights.pth import read_torch_state_dict
from vgg_jax.weights.tensors import (MODEL_KWARGS, expected_tensors,
                                     model_from_flat)

__all__ = [
    "FORMAT", "IMPORTABLE", "InputConvention", "METADATA_FILE",
    "MODEL_KWARGS", "PARAMS_DIR", "SOURCES", "WeightsError",
    "convert_keras", "convert_torchvision", "expected_tensors",
    "import_weights", "input_convention_of", "load_pretrained", "main",
    "model_from_flat", "read_keras_h5", "read_metadata",
    "read_torch_state_dict", "save_pretrained",
]
