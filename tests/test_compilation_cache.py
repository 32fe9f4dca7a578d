"""vgg_jax.main turns on JAX's persistent compilation cache unless told not to."""

import types

from vgg_jax import main as main_lib


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
  path = main_lib.enable_compilation_cache(
      jax, environ={"XDG_CACHE_HOME": str(tmp_path)})
  assert path == str(tmp_path / "vgg_jax" / "jax_compilation")
  assert jax.config.updates == {
      "jax_compilation_cache_dir": path,
      "jax_persistent_cache_min_compile_time_secs": 0,
      "jax_persistent_cache_min_entry_size_bytes": 0}


def test_a_cache_the_user_chose_is_left_alone(tmp_path):
  jax = _fake_jax()
  env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine")}
  assert main_lib.enable_compilation_cache(jax, environ=env) == env[
      "JAX_COMPILATION_CACHE_DIR"]
  assert jax.config.updates == {}
  jax = _fake_jax(cache_dir="/set/in/python")
  assert main_lib.enable_compilation_cache(jax, environ={}) == "/set/in/python"
  assert jax.config.updates == {}


def test_switched_off_by_the_environment():
  jax = _fake_jax()
  assert main_lib.enable_compilation_cache(
      jax, environ={"VGG_JAX_COMPILATION_CACHE": "0"}) is None
  assert jax.config.updates == {}
