"""The split of vgg_jax.weights keeps its public names and its boundaries."""

import ast
import pathlib
import subprocess
import sys

from vgg_jax import weights

# Every public name of vgg_jax.weights when it was one module: callers
# elsewhere use these, so they must stay importable from the package.
PUBLIC_BEFORE_THE_SPLIT = [
    "FORMAT", "PARAMS_DIR", "METADATA_FILE", "MODEL_KWARGS", "WeightsError",
    "InputConvention", "save_pretrained", "read_metadata",
    "input_convention_of", "load_pretrained", "read_torch_state_dict",
    "convert_torchvision", "read_keras_h5", "convert_keras",
    "model_from_flat", "import_weights", "main",
]
PACKAGE = pathlib.Path(weights.__file__).parent


def test_public_names_are_reexported():
  missing = [n for n in PUBLIC_BEFORE_THE_SPLIT if not hasattr(weights, n)]
  assert not missing
  assert set(PUBLIC_BEFORE_THE_SPLIT) <= set(weights.__all__)
  assert weights.FORMAT == "vgg_jax.pretrained.v1"
  assert issubclass(weights.WeightsError, ValueError)


def test_no_module_imports_another_modules_private_names():
  offenders = []
  for path in sorted(PACKAGE.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
          "vgg_jax"):
        offenders += [f"{path.name}: {node.module}.{a.name}"
                      for a in node.names if a.name.startswith("_")]
      elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and (
          not node.attr.startswith("__")) and isinstance(
              node.value, ast.Name) and node.value.id in (
                  "weights", "pretrained", "pth", "converters", "tensors",
                  "cli", "errors"):
        offenders.append(f"{path.name}: {node.value.id}.{node.attr}")
  assert not offenders


def test_command_line_help_keeps_its_flags():
  proc = subprocess.run([sys.executable, "-m", "vgg_jax.weights", "--help"],
                        capture_output=True, text=True, check=True)
  for flag in ("--from", "--input", "--output", "--model", "--overwrite",
               "{keras,torchvision}"):
    assert flag in proc.stdout
