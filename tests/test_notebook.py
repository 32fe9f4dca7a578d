"""notebooks/evaluate.ipynb runs headlessly on tiny data (so it cannot rot)."""

import os
import pathlib
import sys

import nbformat
import numpy as np
import pytest
from flax import nnx
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_evaluate_notebook_executes(tmp_path, monkeypatch):
  import skimage.data
  from nbclient import NotebookClient
  from vgg_jax import input_pipeline, weights
  from vgg_jax.models import create_model
  kw = dict(name="A", width_mult=0.125, fc_width=32, num_classes=10,
            head_window=1, in_channels=1)
  cfg = input_pipeline.default_data_config("fashion_mnist")
  model = create_model(rngs=nnx.Rngs(0), init="he", **kw)
  weights.save_pretrained(
      tmp_path / "model", model, model_kwargs=kw,
      input_convention=input_pipeline.input_convention(cfg), source="test",
      class_names=list(input_pipeline.FASHION_MNIST_CLASSES),
      extra={"train_scale": 32, "crop_size": 32})
  Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.jpg")
  env = {"VGG_MODEL_DIR": str(tmp_path / "model"),
         "VGG_IMAGE": str(tmp_path / "coffee.jpg"), "VGG_SCALE": "96",
         "VGG_DATA": "fashion_mnist", "VGG_SPLIT": "test",
         "VGG_PROTOCOL": "dense+multicrop", "VGG_SCALES": "32,48",
         "VGG_LIMIT": "10", "VGG_OUTPUT": str(tmp_path / "out")}
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep
                     + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(ROOT / "notebooks" / "evaluate.ipynb", as_version=4)
  client = NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError on any failing cell
  outputs = "\n".join(
      o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
      for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "1. " in outputs and "%" in outputs  # the top-5 list
  assert "score map (3, 4)" in outputs  # 96x144 image, 32 px per position
  assert any("image/png" in o.get("data", {}) for c in nb.cells
             if c.cell_type == "code" for o in c.get("outputs", []))
  assert "| A | 32 | 32,48 | multi-crop & dense |" in outputs
  assert "10 evaluated, 0 could not be decoded" in outputs
  assert (tmp_path / "out" / "results.json").is_file()
