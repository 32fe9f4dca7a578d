"""vgg_jax/xla_cpu.py: the XLA:CPU options the commands run with."""

import os
import subprocess
import sys
import textwrap

import pytest

from vgg_jax import xla_cpu

OPTION = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def test_flags_added_kept_or_left_to_the_user():
  assert xla_cpu.xla_flags({}, jaxlib_version="0.10.2") == OPTION
  # Appended to what the user set, which stays first and unchanged.
  assert xla_cpu.xla_flags(
      {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
      jaxlib_version="0.10.2") == (
          f"--xla_force_host_platform_device_count=2 {OPTION}")
  # The user's own value of the option wins; so does turning it off.
  assert xla_cpu.xla_flags(
      {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"},
      jaxlib_version="0.10.2") is None
  assert xla_cpu.xla_flags({xla_cpu.OFF: "0"}, jaxlib_version="0.10.2") is None
  # Another jaxlib may not know the option (XLA aborts on unknown flags).
  assert xla_cpu.xla_flags({}, jaxlib_version="0.11.0") is None
  env = {}
  assert xla_cpu.apply(env) and env["XLA_FLAGS"].endswith(OPTION)
  assert not xla_cpu.apply(env)  # idempotent: already there


_PROBE = textwrap.dedent("""
    import os, sys
    from vgg_jax import xla_cpu
    if sys.argv[1] == "apply":
      xla_cpu.apply()
    import jax, jax.numpy as jnp
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    text = conv.lower(jnp.zeros((8, 56, 56, 64)),
                      jnp.zeros((3, 3, 64, 64))).compile().as_text()
    print("YNN" if "__ynn_fusion" in text else "EIGEN")
""")


def _compiled_conv_kind(mode: str) -> str:
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", xla_cpu.OFF)}
  if mode == "off":
    env[xla_cpu.OFF] = "0"
  out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env,
                       capture_output=True, text=True, check=True, timeout=120)
  return out.stdout.split()[-1]


@pytest.mark.skipif(not xla_cpu._jaxlib_version().startswith(
    xla_cpu.MEASURED_JAXLIB), reason="the option is for jaxlib 0.10.x")
def test_option_moves_convolutions_from_ynnpack_to_eigen():
  # What the option is for: XLA:CPU compiles a VGG-sized convolution as a
  # YNNPACK fusion by default, and as its own (Eigen) convolution with it.
  assert _compiled_conv_kind("off") == "YNN"
  assert _compiled_conv_kind("apply") == "EIGEN"


def test_entry_points_apply_it_before_jax_starts():
  # Each command applies the option in time: importing it starts no JAX
  # backend (XLA reads XLA_FLAGS when the first one starts), and after its
  # entry point ran, XLA_FLAGS has the option.
  probe = textwrap.dedent("""
      import os, sys, contextlib, io
      import vgg_jax.main, vgg_jax.evaluate, vgg_jax.features
      from jax._src import xla_bridge
      assert not xla_bridge._backends, "a backend started at import"
      assert "ynn_fusion_type" in os.environ.get("XLA_FLAGS", ""), "main"
      for name, entry, argv in [
          ("evaluate", vgg_jax.evaluate.main, ["--help"]),
          ("features", vgg_jax.features.main, ["presets"])]:
        os.environ.pop("XLA_FLAGS")
        with contextlib.redirect_stdout(io.StringIO()):
          try:
            entry(argv)
          except SystemExit:
            pass
        assert "ynn_fusion_type" in os.environ.get("XLA_FLAGS", ""), name
      assert not xla_bridge._backends, "a backend started"
      print("ok")
  """)
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", xla_cpu.OFF)}
  out = subprocess.run([sys.executable, "-c", probe], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.split()[-1] == "ok", out.stderr
