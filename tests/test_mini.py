"""experiments/mini/run.py end to end on a tiny slice (``--tiny``).

Runs the real command lines (data preparation, training stages, evaluation,
--from-posteriors) as the full run does, with nets A and C and a few steps,
then checks, independently of run.py's own bookkeeping:

- the tables exist (markdown, JSON, plot) with every section;
- every error in them is recomputed here from the saved posteriors (.npz
  written by ``python -m vgg_jax.evaluate --save-posteriors``) with a
  top-k count written differently from the evaluator's, so no number can
  be invented or mis-copied;
- the stages chain as the paper's: C at S=32 starts from A, S=64 from S=32,
  jittered from S=64; the init-claim runs come from metrics the CLI wrote;
- a second invocation starts no command and gives the same tables.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).absolute().parents[1]
RUN = REPO / "experiments" / "mini" / "run.py"
IDX = pathlib.Path("/usr/share/datasets/fashion-mnist")

# About 20 command lines, each with its own start-up: slow.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (IDX / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Fashion-MNIST IDX files not installed")]


def _run(workdir):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, str(RUN), "--workdir", str(workdir),
                         "--tiny"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=1800)


def _errors(posteriors, labels, k):
  """Top-k error in %: the label's rank by counting larger scores."""
  true_score = posteriors[np.arange(len(labels)), labels]
  rank = (posteriors > true_score[:, None]).sum(axis=1)
  return 100.0 * float(np.mean(rank >= k))


def _load(npz):
  z = np.load(npz, allow_pickle=False)
  return {k.split("/", 1)[-1]: z[k] for k in z.files}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mini")
  first = _run(workdir)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  return workdir, first


def test_tables_written(tiny_run):
  workdir, first = tiny_run
  md = (workdir / "tables.md").read_text()
  for section in ("Table 3", "Table 4", "Table 5", "Table 6",
                  "Initialisation"):
    assert section in md
  assert (workdir / "tables.png").stat().st_size > 1000
  report = json.loads((workdir / "tables.json").read_text())
  nets3 = {(r["net"], r["what"]) for r in report["table3"]}
  assert nets3 == {("A", "s32"), ("C", "s32"), ("C", "s64"),
                   ("C", "jitter")}
  assert {r["what"] for r in report["table5"]} == {
      "dense", "multicrop", "dense+multicrop"}


def test_every_number_comes_from_posteriors(tiny_run):
  workdir, _ = tiny_run
  report = json.loads((workdir / "tables.json").read_text())
  single_q = {"s32": [32], "s64": [64], "jitter": [64]}
  multi_q = {"s32": [32, 64], "s64": [32, 64, 96], "jitter": [32, 64]}
  checked = 0
  for table, qs in (("table3", single_q), ("table4", multi_q)):
    for row in report[table]:
      (npz,) = row["files"]
      d = _load(npz)
      post = np.mean([d[f"dense@{q}"] for q in qs[row["what"]]], axis=0)
      labels = d["labels"]
      assert len(labels) == report["mode"]["test_limit"]
      assert row["top1"][0] == pytest.approx(_errors(post, labels, 1),
                                             abs=0.006)
      assert row["top5"][0] == pytest.approx(_errors(post, labels, 5),
                                             abs=0.006)
      checked += 1
  for row in report["table5"]:
    (npz,) = row["files"]
    d = _load(npz)
    parts = {"dense": ["dense"], "multicrop": ["multicrop"],
             "dense+multicrop": ["dense", "multicrop"]}[row["what"]]
    post = np.mean([np.mean([d[f"{p}@{q}"] for q in (32, 64)], axis=0)
                    for p in parts], axis=0)
    assert row["top1"][0] == pytest.approx(_errors(post, d["labels"], 1),
                                           abs=0.006)
    checked += 1
  assert checked == 4 + 3 + 3


def test_stages_chain_like_the_paper(tiny_run):
  workdir, _ = tiny_run
  runs = workdir / "runs"
  cfg = lambda name: json.loads((runs / name / "config.json").read_text())
  assert cfg("C_s32_seed0")["init_from_a"] == str(runs / "A_s32_seed0")
  assert cfg("C_s64_seed0")["init_from"] == str(runs / "C_s32_seed0")
  assert cfg("C_jitter_seed0")["init_from"] == str(runs / "C_s64_seed0")
  assert cfg("C_jitter_seed0")["data"]["train_scale"] == [32, 64]
  assert cfg("C_s64_seed0")["lr"] == pytest.approx(1e-3)
  report = json.loads((workdir / "tables.json").read_text())
  init = report["init_claim"]
  assert set(init) == {"paper", "paper_from_a", "glorot"}
  assert cfg("init_C_paper")["model"]["init"] == "paper"
  assert cfg("init_C_paper_from_a")["init_from_a"] == str(
      runs / "A_s32_seed0")
  assert cfg("init_C_glorot")["model"]["init"] == "glorot"
  for variant, r in init.items():
    recs = [json.loads(l) for l in (pathlib.Path(r["workdir"]) /
                                     "metrics.jsonl").read_text().split("\n")
            if l]
    evals = [[x["step"], round(100 * x["val_top1"], 2)] for x in recs
             if x["kind"] == "eval"]
    assert r["val_top1_accuracy"] == evals and evals


def test_second_invocation_reuses_everything(tiny_run):
  workdir, _ = tiny_run
  before = (workdir / "tables.json").read_text()
  second = _run(workdir)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "$ " not in second.stdout  # no command line was started
  assert "[skip]" in second.stdout
  assert (workdir / "tables.json").read_text() == before
