#!/usr/bin/env bash
# Installs everything vgg_jax needs on a fresh Debian/Python 3.11 machine:
# the embedded dataset (Debian's dataset-fashion-mnist) and a virtualenv in
# .venv with the package and its test extras.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
APT_PACKAGES=""
[ -d /usr/share/datasets/fashion-mnist ] || APT_PACKAGES="dataset-fashion-mnist"
# A compiler and libjpeg-turbo's headers build the optional crop-aware JPEG
# decoder (vgg_jax/_jpegcrop.c); without them it is skipped (slower input).
{ [ -f /usr/include/jpeglib.h ] && command -v cc >/dev/null; } ||
  APT_PACKAGES="$APT_PACKAGES gcc libjpeg62-turbo-dev"
if [ -n "$APT_PACKAGES" ]; then
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q $APT_PACKAGES >/dev/null
fi
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# libtpu, for `python -m vgg_jax.aot` (compiling the training step for TPU
# pods on this machine: tests/test_aot.py).  Into .libtpu/, not the venv:
# with libtpu importable, every other JAX process would try to start a TPU.
# vgg_jax.aot finds .libtpu/ by itself.  The version jax[tpu] pins for this
# jax (0.10.x: libtpu 0.0.42.*).
[ -d .libtpu/libtpu ] ||
  .venv/bin/python -m pip install -q --target .libtpu 'libtpu==0.0.42.*'
