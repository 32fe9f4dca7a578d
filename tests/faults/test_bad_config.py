"""Bad configs and flags (docs/reliability.md, fault 9): each is a clear
error before any compute, naming the field and what was expected.

The command-line cases run the real ``python -m vgg_jax.main``; they check
that the workdir was not even created (nothing computed, nothing written).
"""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _fault_helpers as H  # noqa: E402  pylint: disable=g-import-not-at-top

sys.path.insert(0, str(H.REPO))
from experiments import fashion_mnist  # noqa: E402  pylint: disable=g-import-not-at-top
from vgg_jax import config_checks  # noqa: E402

# (flag overrides, extra environment, texts the error must contain)
CLI_CASES = {
    "unknown field": (["--config.lerning_rate=0.1"], {},
                      ["config field 'lerning_rate' does not exist",
                       "--config.lerning_rate=0.1"]),
    "unknown nested field": (["--config.model.widht_mult=0.5"], {},
                             ["'widht_mult' does not exist",
                              "did you mean model.width_mult"]),
    "wrong type": (["--config.batch_size=many"], {},
                   ["--config.batch_size=many", "invalid literal for int"]),
    "negative lr": (["--config.lr=-0.01"], {}, ["config.lr = -0.01",
                                                 "expected a learning rate >= 0"]),
    "unknown net": (["--config.model.name=F"], {}, ["config.model.name = 'F'",
                                                    "expected one of"]),
    "crop larger than the scale": (
        ["--config.data.crop_size=48"], {},
        ["config.data.train_scale", "crop_size 48",
         "config.data.eval_scale"]),
    "batch not divisible by the devices": (
        ["--config.batch_size=15"],
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        ["config.batch_size = 15", "multiple of the 2 data-parallel devices"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_flag_is_refused_before_anything_is_written(case, tmp_path):
  overrides, extra_env, texts = CLI_CASES[case]
  workdir = tmp_path / "wd"
  proc = H.run(workdir, list(H.TINY_NET) + overrides, extra_env=extra_env)
  assert proc.returncode != 0, proc.stdout[-2000:]
  for text in texts:
    assert text in proc.stderr, (text, proc.stderr[-3000:])
  # A message, not a stack trace (except ConfigError's own, which lists
  # every problem).
  assert "Traceback" not in proc.stderr or "ConfigError" in proc.stderr
  assert not workdir.exists()
  H.report(f"bad_flag: {case}", faults_injected=1, bad_inputs_refused=1)


def _config(**fields):
  c = fashion_mnist.get_config()
  for key, value in fields.items():
    target = c
    *path, last = key.split(".")
    for p in path:
      target = target[p]
    with target.ignore_type():
      target[last] = value
  return c


@pytest.mark.parametrize("field,value,expected", [
    ("lr", -1.0, "a learning rate >= 0"),
    ("lr", float("nan"), "a learning rate >= 0"),
    ("batch_size", 0, "an integer >= 1"),
    ("eval_batch_size", -8, "an integer >= 1"),
    ("model.width_mult", 0.0, "a number > 0"),
    ("model.dropout_rate", 1.0, "a number >= 0 and < 1"),
    ("model.init", "zeros", "one of"),
    ("model.dtype", "float16", "one of"),
    ("optimizer.momentum", 1.5, "a number >= 0 and < 1"),
    ("optimizer.weight_decay", -5e-4, "a number >= 0"),
    ("lr_schedule", "linear", "one of"),
    ("total_steps", -3, "an integer >= 0"),
    ("keep_checkpoints", 0, "an integer >= 1"),
    ("data.source", "s3", "one of"),
    ("data.train_scale", (512, 256), "S_min <= S_max"),
    ("data.eval_scale", 16, "Q >= data.crop_size"),
    ("data.std_rgb", (0.0,), "each > 0"),
    ("data.image_channels", 2, "1 (grey) or 3 (RGB)"),
])
def test_each_impossible_value_names_its_field(field, value, expected):
  found = config_checks.problems(_config(**{field: value}), device_count=1)
  assert len(found) >= 1
  assert any(f.startswith(f"config.{field} = ") and expected in f
             for f in found), found
  H.report(f"bad_value: {field}={value!r}", faults_injected=1,
           bad_inputs_refused=1)


def test_the_shipped_configs_pass_and_every_problem_is_reported_at_once():
  import importlib  # pylint: disable=g-import-not-at-top
  for name in ("fashion_mnist", "configA", "configA_LRN", "configB",
               "configC", "configD", "configE", "alexnet"):
    config = importlib.import_module(f"experiments.{name}").get_config()
    assert config_checks.problems(config, device_count=4) == [], name
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.validate(_config(lr=-1.0, batch_size=0), device_count=1)
  assert "config.lr" in str(e.value) and "config.batch_size" in str(e.value)


@pytest.mark.slow
def test_resumed_workdir_with_a_changed_model_is_refused(tmp_path):
  data_dir = H.tiny_fashion_mnist(tmp_path / "fmnist")
  workdir = tmp_path / "wd"
  flags = H.tiny_flags(data_dir, total_steps=2, eval_every_steps=2)
  proc = H.run(workdir, flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  before = H.committed_steps(workdir)
  proc = H.run(workdir, flags + ["--config.model.name=B"])
  assert proc.returncode != 0
  assert "different config" in proc.stderr
  assert "model.name: workdir has 'A-BN', this run has 'B'" in proc.stderr
  assert H.committed_steps(workdir) == before  # nothing was computed
  H.report("bad_flag: changed model on resume", faults_injected=1,
           bad_inputs_refused=1)
