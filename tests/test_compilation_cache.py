"""The commands turn on JAX's persistent compilation cache unless told not to
(vgg_jax/compilation_cache.py)."""

import types

from vgg_jax import compilation_cache


class _FakeConfig:
  def __init__(self, cache_dir=None):
    self.jax_compilation_cache_dir = cache_dir
    self.updates = {}

  def update(self, name, value):
    self.updates[name] = value


def _fake_jax(cache_dir=None):
  return types.SimpleNamespace(config=_FakeConfig(cache_dir))


def test_default_cache_under_xdg_cache_home_caches_every_program(tmp_path):
  jax = _fake_jax()
  path = compilation_cache.enable(
      jax, environ={"XDG_CACHE_HOME": str(tmp_path)})
  assert path == str(tmp_path / "vgg_jax" / "jax_compilation")
  assert jax.config.updates == {
      "jax_compilation_cache_dir": path,
      "jax_persistent_cache_min_compile_time_secs": 0,
      "jax_persistent_cache_min_entry_size_bytes": 0}


def test_a_cache_the_user_chose_is_left_alone(tmp_path):
  jax = _fake_jax()
  env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine")}
  assert compilation_cache.enable(jax, environ=env) == env[
      "JAX_COMPILATION_CACHE_DIR"]
  assert jax.config.updates == {}
  jax = _fake_jax(cache_dir="/set/in/python")
  assert compilation_cache.enable(jax, environ={}) == "/set/in/python"
  assert jax.config.updates == {}


def test_switched_off_by_the_environment():
  jax = _fake_jax()
  assert compilation_cache.enable(
      jax, environ={"VGG_JAX_COMPILATION_CACHE": "0"}) is None
  assert jax.config.updates == {}


def test_environment_for_child_processes_matches_enable(tmp_path):
  """A driver's children (run.py's commands, the test session's) cache the
  same programs as ``enable`` would: every one, in the given folder."""
  env = compilation_cache.environment(tmp_path)
  jax = _fake_jax()
  compilation_cache.enable(jax, environ={"XDG_CACHE_HOME": str(tmp_path)})
  assert {k.lower() for k in env} == set(jax.config.updates)
  assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path)
  assert int(env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]) == (
      jax.config.updates["jax_persistent_cache_min_compile_time_secs"]) == 0


def test_every_command_line_entry_point_enables_it():
  """vgg_jax.main, vgg_jax.evaluate (eval/command.py) and the transfer
  extractor call ``compilation_cache.enable`` before compiling."""
  import inspect
  from vgg_jax import main as main_lib
  from vgg_jax.eval import command
  from vgg_jax.transfer import __main__ as transfer_main
  for fn in (main_lib.main, command.main, transfer_main.main):
    assert "compilation_cache.enable(jax)" in inspect.getsource(fn), fn
