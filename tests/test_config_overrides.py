"""Every field of every experiment config can be set from the command line.

Issue: ``--config.data.data_dir=gs://BUCKET/tfds`` (what the README and the
pod launcher tell a user to pass) was rejected by the flag parser because
the field's default was a bare ``None``.  This test parses, for every config
file and every stage it accepts, an override of EVERY leaf field through
the real flag parser of ``vgg_jax.main`` (absl flags + ml_collections'
``DEFINE_config_file`` as main.py defines them), with a value of the
field's type that differs from the default, and checks that each value
arrived in the parsed config.
"""

from __future__ import annotations

import glob
import os
import sys

from absl import flags
import ml_collections
from ml_collections import config_dict
import pytest

from vgg_jax import main as vgg_main  # defines --config, --workdir, ...

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS

# Stage arguments (the text after ":") each config file accepts.
VGG_STAGES = ("s256", "s384", "jitter")
MINI_STAGES = ("s32", "s64", "jitter")
STAGES_BY_FILE = {
    "experiments/configA.py": ("s256",),
    "experiments/configA_LRN.py": ("s256",),
    "experiments/configB.py": ("s256",),
    "experiments/configB_shallow.py": ("s256",),
    "experiments/configC.py": VGG_STAGES,
    "experiments/configD.py": VGG_STAGES,
    "experiments/configE.py": VGG_STAGES,
    "experiments/alexnet.py": (None,),
    "experiments/fashion_mnist.py": (None,),
    "experiments/fashion_mnist_net_a.py": (None,),
    "experiments/mini/configA.py": ("s32",),
    "experiments/mini/configA_LRN.py": ("s32",),
    "experiments/mini/configB.py": ("s32",),
    "experiments/mini/configC.py": MINI_STAGES,
    "experiments/mini/configD.py": MINI_STAGES,
    "experiments/mini/configE.py": MINI_STAGES,
    "experiments/mini/init_claim.py": ("paper", "paper_from_a", "glorot"),
    # Appendix A: Table 8's rows (regression, layers, S) and Table 9's S.
    "experiments/localisation/configD_loc.py": (
        "scr,fc,384", "pcr,fc,384", "pcr,all,384", "pcr,all,256"),
    "experiments/localisation/synth.py": ("scr,all", "pcr,fc",
                                           "scr,all,centred_log"),
    "experiments/localisation/synth_classifier.py": (None,),
}
NOT_CONFIGS = {"experiments/mini/base.py", "experiments/mini/run.py",
               # drivers that run several configs, not configs themselves
               "experiments/localisation/run_synth.py",
               "experiments/transfer/run_evidence.py"}


def _config_files():
  found = set()
  for pattern in ("experiments/*.py", "experiments/*/*.py"):
    for path in glob.glob(os.path.join(REPO, pattern)):
      rel = os.path.relpath(path, REPO)
      if os.path.basename(rel) != "__init__.py" and rel not in NOT_CONFIGS:
        found.add(rel)
  return sorted(found)


def test_every_config_file_is_listed():
  # A new experiment file must be added above, with its stages.
  assert set(_config_files()) == set(STAGES_BY_FILE), (
      "config files and STAGES_BY_FILE differ: "
      f"{set(_config_files()) ^ set(STAGES_BY_FILE)}")


def _leaves(cfg: ml_collections.ConfigDict, prefix: str = ""):
  """(dotted path, declared type, current value) of every leaf field."""
  for key in sorted(cfg.keys()):
    path = f"{prefix}{key}"
    value = cfg[key]
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, path + ".")
    else:
      try:
        field_type = cfg.get_ref(key).get_type()
      except ValueError:  # a bare None: the parser cannot know its type
        raise AssertionError(
            f"field {path} is a bare None; make it a typed placeholder "
            "(config_dict.placeholder(T))") from None
      yield path, field_type, value


def _new_value(path, field_type, value):
  """(command-line text, expected parsed value): of the field's type, and
  different from the current value."""
  if field_type is bool:
    return str(not value).lower(), (not value)
  if field_type is int:
    new = 7 if value is None else value + 3
    return str(new), new
  if field_type is float:
    new = 0.25 if value is None else value + 0.5
    return repr(new), new
  if field_type is str:
    new = "/tmp/override" if value is None else (value or "x") + "_override"
    return new, new
  if field_type is tuple:
    # Element type from the current value; an empty tuple holds names
    # (frozen_layers) or epochs (lr_boundaries_epochs).
    if value and isinstance(value[0], tuple):  # a matrix (pca_eigvec)
      new = tuple(tuple(v + 0.5 for v in row) for row in value)
    elif value and isinstance(value[0], float):
      new = tuple(v + 0.5 for v in value)
    elif value and isinstance(value[0], int):
      new = tuple(v + 16 for v in value)
    elif value and isinstance(value[0], str):
      new = tuple(v + "_x" for v in value)
    elif path.endswith("epochs"):
      new = (1.5, 2.5)
    else:
      new = ("fc1", "block1*")
    return repr(new), new
  raise AssertionError(f"field {path}: type {field_type} (value {value!r}) "
                       "has no command-line form: make it a typed "
                       "placeholder (config_dict.placeholder(T))")


def _parse(argv):
  """Parses argv with main.py's flags as ``app.run`` does (ml_collections
  reads the overrides from sys.argv), forgetting a previous parse's
  per-field override flags (ml_collections defines one per --config.X)."""
  sys.argv = list(argv)
  FLAGS.unparse_flags()
  for name in list(FLAGS):
    if name.startswith("config."):
      delattr(FLAGS, name)
  FLAGS(argv)
  return FLAGS.config


@pytest.fixture(autouse=True)
def _restore_argv():
  saved = list(sys.argv)
  yield
  sys.argv = saved
  FLAGS.unparse_flags()


CASES = [(f, s) for f, stages in STAGES_BY_FILE.items() for s in stages]


@pytest.mark.parametrize("path,stage", CASES,
                         ids=[f"{f}:{s}" for f, s in CASES])
def test_every_field_overridable(path, stage):
  spec = os.path.join(REPO, path) + (f":{stage}" if stage else "")
  assert vgg_main.multihost_requested is not None  # main's flags are defined
  base = _parse(["main", f"--config={spec}", "--workdir=/tmp/unused"])
  leaves = list(_leaves(base))
  assert len(leaves) > 40, leaves  # the whole tree was walked
  argv = ["main", f"--config={spec}", "--workdir=/tmp/unused"]
  expected = {}
  for field, field_type, value in leaves:
    text, new = _new_value(field, field_type, value)
    assert new != value, field
    argv.append(f"--config.{field}={text}")
    expected[field] = new
  cfg = _parse(argv)
  for field, new in expected.items():
    got = cfg
    for part in field.split("."):
      got = got[part]
    if isinstance(new, tuple):
      got = tuple(got)
    assert got == new, f"{path}:{stage} --config.{field}: got {got!r}, " \
                       f"expected {new!r}"


def test_data_dir_override_as_documented():
  # The README's ImageNet flow, verbatim.
  cfg = _parse(["main", "--config=" + os.path.join(
      REPO, "experiments/configA.py"), "--workdir=/tmp/unused",
                "--config.data.data_dir=gs://BUCKET/tfds",
                "--config.data.class_index_path=/data/class_index.json"])
  assert cfg.data.data_dir == "gs://BUCKET/tfds"
  assert cfg.data.class_index_path == "/data/class_index.json"
  # Unset, they read as None, which the pipeline treats as "not given".
  cfg = _parse(["main", "--config=" + os.path.join(
      REPO, "experiments/configA.py"), "--workdir=/tmp/unused"])
  assert cfg.data.data_dir is None and cfg.data.class_index_path is None
  assert isinstance(cfg.data.get_ref("data_dir"), config_dict.FieldReference)
