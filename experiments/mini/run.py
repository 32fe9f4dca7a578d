"""The paper's Tables 3-6 and its initialisation claim, in miniature.

    python experiments/mini/run.py --workdir workdirs/mini           # full
    python experiments/mini/run.py --workdir workdirs/mini_q --quick # ~10 min

Trains all six nets (A, A-LRN, B, C, D, E) with the paper's stages (§3.1) on
Fashion-MNIST upscaled (experiments/mini/base.py has the recipe), evaluates
them with the paper's test protocols (§3.2), and writes the tables
(WORKDIR/tables.md, .json) and a plot (WORKDIR/tables.png).  Everything
goes through the project's command lines, each in a subprocess:

- ``python -m vgg_jax.data prepare folder`` (class index of the PNG folder);
- ``python -m vgg_jax.main --config experiments/mini/configX.py:STAGE``;
- ``python -m vgg_jax.evaluate --model ... --save-posteriors`` (one pass per
  group of models), then ``--from-posteriors`` for every table cell group.

Resumable: a stage whose workdir's metrics.jsonl ends with a finished run is
skipped (an interrupted one resumes from its own checkpoint), an evaluation
or table whose results.json exists for the same command is reused.
``--tiny`` is for the test suite: nets A and C only, a few steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).absolute().parents[2]
if str(REPO) not in sys.path:  # run as a script from anywhere
  sys.path.insert(0, str(REPO))
from vgg_jax import compilation_cache  # pylint: disable=g-import-not-at-top,wrong-import-position  # noqa: E402
MINI = REPO / "experiments" / "mini"
FASHION_MNIST_IDX = pathlib.Path("/usr/share/datasets/fashion-mnist")
CLASS_FOLDERS = ("0_tshirt_top", "1_trouser", "2_pullover", "3_dress",
                 "4_coat", "5_sandal", "6_shirt", "7_sneaker", "8_bag",
                 "9_ankle_boot")
CONFIG_FILES = {"A": "configA.py", "A-LRN": "configA_LRN.py",
                "B": "configB.py", "C": "configC.py", "D": "configD.py",
                "E": "configE.py"}
# The stages the paper trains each net at (Tables 3 and 4).
NET_STAGES = {"A": ("s32",), "A-LRN": ("s32",), "B": ("s32",),
              "C": ("s32", "s64", "jitter"), "D": ("s32", "s64", "jitter"),
              "E": ("s32", "s64", "jitter")}
TRAIN_SCALE = {"s32": "32", "s64": "64", "jitter": "[32;64]"}
# Test scales (§3.2, Table 4): {S-32, S, S+32} for fixed S (S-32 < crop is
# dropped), {S_min, S_max} for jittered (the paper's middle, 48, is not a
# multiple of the nets' stride 32; see base.py).  Table 3: Q = S, and Q = 64
# for the jittered nets (the paper tests them at 384 like the S=384 nets).
MULTI_Q = {"s32": (32, 64), "s64": (32, 64, 96), "jitter": (32, 64)}
SINGLE_Q = {"s32": 32, "s64": 64, "jitter": 64}
INIT_CLAIM_RUNS = ("paper", "paper_from_a", "glorot")


@dataclasses.dataclass
class Mode:
  name: str
  train_examples: int  # of Fashion-MNIST's first 55,000 training images
  val_examples: int  # held out from the training set's last 5,000
  test_limit: int  # evaluate on the first N test images (of 10,000)
  steps: dict  # stage -> training steps (A's s32 has its own entry)
  eval_every: int
  seeds: tuple
  nets: tuple
  init_claim_steps: int
  init_net: str
  overrides: tuple = ()  # extra --config.x=y for every training run


MODES = {
    # Sized for the 90-minute budget on 2 cores (docs/mini_tables.md has
    # the timed run): 1,500/800/400/400 steps, 5,000 validation and 3,000
    # test images were estimated at ~110 minutes.
    "full": Mode("full", 55000, 2000, 2000,
                 {"A": 900, "s32": 500, "s64": 250, "jitter": 250}, 100,
                 (0, 1), tuple(NET_STAGES), 400, "E"),
    "quick": Mode("quick", 8000, 1000, 200,
                  {"A": 150, "s32": 60, "s64": 30, "jitter": 30}, 30,
                  (0,), tuple(NET_STAGES), 40, "E"),
    "tiny": Mode("tiny", 600, 200, 40,
                 {"A": 4, "s32": 2, "s64": 2, "jitter": 2}, 2,
                 (0,), ("A", "C"), 2, "C",
                 ("--config.model.width_mult=0.0625",
                  "--config.model.fc_width=16", "--config.eval_batch_size=100",
                  "--config.batch_size=32")),
}


# ---------------------------------------------------------------------------
# Small utilities


def atomic_write_text(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def python() -> str:
  return sys.executable


def run_cli(args: list[str], log_path: pathlib.Path) -> None:
  """Runs one command line; its output goes to ``log_path``."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                     if p])
  # One fixed CPU convolution (im2col) instead of timing the schedules of
  # every new conv shape at first compile (models/conv_autotune.py): the
  # miniature meets ~60 shapes (six nets, three scales, dense evaluation)
  # and each costs 4-12 s to time, more than most of its runs train.  Set
  # VGG_JAX_CONV_AUTOTUNE=1 to autotune anyway.
  env.setdefault("VGG_JAX_CONV_AUTOTUNE", "0")
  log_path.parent.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  print("$ " + " ".join(args), flush=True)
  with open(log_path, "a") as log:
    log.write("$ " + " ".join(args) + "\n")
    log.flush()
    proc = subprocess.run(args, cwd=REPO, env=env, stdout=log,
                          stderr=subprocess.STDOUT)
  if proc.returncode:
    raise SystemExit(f"command failed (exit {proc.returncode}) after "
                     f"{time.time() - t0:.0f}s; see {log_path}:\n"
                     + " ".join(args))
  print(f"  done in {time.time() - t0:.0f}s", flush=True)


# ---------------------------------------------------------------------------
# Data: Fashion-MNIST as a folder of PNGs (train / val / test).


def read_idx(path: pathlib.Path) -> np.ndarray:
  data = gzip.open(path).read()
  zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file")
  dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def prepare_data(root: pathlib.Path, mode: Mode, idx_dir: pathlib.Path,
                 logs: pathlib.Path) -> pathlib.Path:
  """DIR/data/fashion_mnist_png/{train,val,test}/<class>/<n>.png, once.

  Training images are the first ``train_examples`` of the training set,
  validation (for the plateau rule) the last ``val_examples``; the test
  split is the first ``test_limit`` images of Fashion-MNIST's test set.  Built under a temporary name and
  renamed when complete, so a half-written folder is never used.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  data = root / "data" / "fashion_mnist_png"
  if (data / "class_index.json").is_file():
    return data
  files = {k: idx_dir / f"{k}-ubyte.gz" for k in (
      "train-images-idx3", "train-labels-idx1", "t10k-images-idx3",
      "t10k-labels-idx1")}
  missing = [str(p) for p in files.values() if not p.is_file()]
  if missing:
    raise SystemExit(f"Fashion-MNIST IDX files not found: {missing}; "
                     "install them (`apt-get install dataset-fashion-mnist`) "
                     "or pass --fashion-mnist-dir")
  x, y = (read_idx(files["train-images-idx3"]),
          read_idx(files["train-labels-idx1"]))
  xt, yt = (read_idx(files["t10k-images-idx3"]),
            read_idx(files["t10k-labels-idx1"]))
  n_train, n_val = mode.train_examples, mode.val_examples
  if n_train > 55000 or n_val > 5000:
    raise ValueError("at most 55,000 training and 5,000 validation images")
  splits = {"train": range(n_train), "val": range(60000 - n_val, 60000)}
  tmp = root / "data" / ".fashion_mnist_png.partial"
  shutil.rmtree(tmp, ignore_errors=True)
  t0 = time.time()
  for split, images, labels, rows in (
      ("train", x, y, splits["train"]), ("val", x, y, splits["val"]),
      ("test", xt, yt, range(mode.test_limit))):
    for c in CLASS_FOLDERS:
      (tmp / split / c).mkdir(parents=True)
    for i in rows:
      Image.fromarray(images[i]).save(
          tmp / split / CLASS_FOLDERS[labels[i]] / f"{i:05d}.png")
  run_cli([python(), "-m", "vgg_jax.data", "prepare", "folder",
           "--data_dir", str(tmp)], logs / "prepare_data.log")
  os.replace(tmp, data)
  print(f"data: {n_train} train, {n_val} val, {mode.test_limit} test PNGs in "
        f"{time.time() - t0:.0f}s", flush=True)
  return data


# ---------------------------------------------------------------------------
# Training stages.


def stage_finished(workdir: pathlib.Path) -> bool:
  """True if the run's last metrics record is a finished run (not one
  stopped by a preemption or stop_after_steps, which is resumed)."""
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    return False
  last = None
  for line in path.read_text().splitlines():
    try:
      last = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut by a crash
  return bool(last and last.get("kind") == "final"
              and last.get("stopped_by") in ("total_steps", "plateau"))


def run_name(net: str, stage: str, seed: int) -> str:
  return f"{net}_{stage}_seed{seed}"


def train(root, mode, data, logs, *, config, name, steps, seed,
          init_from="", init_from_a="", extra=()) -> pathlib.Path:
  workdir = root / "runs" / name
  if stage_finished(workdir):
    print(f"[skip] {name}: finished run in {workdir}", flush=True)
    return workdir
  args = [python(), "-m", "vgg_jax.main", "--config", config,
          "--workdir", str(workdir), f"--config.data.data_dir={data}",
          f"--config.seed={seed}", f"--config.total_steps={steps}",
          f"--config.eval_every_steps={mode.eval_every}",
          f"--config.checkpoint_every_steps={mode.eval_every}",
          f"--config.init_from={init_from}",
          f"--config.init_from_a={init_from_a}", *mode.overrides, *extra]
  run_cli(args, logs / f"train_{name}.log")
  if not stage_finished(workdir):
    raise SystemExit(f"{name}: the training command returned but its "
                     f"metrics do not record a finished run ({workdir})")
  return workdir


def train_all(root, mode, data, logs) -> dict:
  """Every net at every stage for every seed, in dependency order."""
  runs = {}
  for seed in mode.seeds:
    for net in mode.nets:
      prev = None
      for stage in NET_STAGES[net]:
        cfg = f"{MINI / CONFIG_FILES[net]}:{stage}"
        steps = mode.steps["A" if net == "A" else stage]
        a_dir = root / "runs" / run_name("A", "s32", seed)
        runs[(net, stage, seed)] = train(
            root, mode, data, logs, config=cfg,
            name=run_name(net, stage, seed), steps=steps, seed=seed,
            init_from=str(prev) if prev else "",
            init_from_a=str(a_dir) if (stage == "s32" and net not in (
                "A", "A-LRN")) else "")
        prev = runs[(net, stage, seed)]
  return runs


def train_init_claim(root, mode, data, logs) -> dict:
  """The deepest net from N(0, 0.01), from N(0, 0.01) with A's layers, and
  from Glorot: the same short run each (paper §3.1)."""
  seed = mode.seeds[0]
  a_dir = root / "runs" / run_name("A", "s32", seed)
  out = {}
  for variant in INIT_CLAIM_RUNS:
    out[variant] = train(
        root, mode, data, logs,
        config=f"{MINI / 'init_claim.py'}:{variant}",
        name=f"init_{mode.init_net}_{variant}", steps=mode.init_claim_steps,
        seed=seed, init_from_a=str(a_dir) if variant == "paper_from_a" else "",
        extra=(f"--config.model.name={mode.init_net}",))
  return out


# ---------------------------------------------------------------------------
# Evaluation: one pass per group of models, posteriors saved.


EVAL_GROUPS = {  # stage -> (protocol computed, scales)
    "s32": ("dense", MULTI_Q["s32"]),
    "s64": ("dense", MULTI_Q["s64"]),
    # Table 5 compares dense, multi-crop and both on the jittered nets.
    "jitter": ("dense+multicrop", MULTI_Q["jitter"]),
}


def cached(out: pathlib.Path, command: list[str]) -> bool:
  """True if ``out`` holds results.json written by exactly ``command``."""
  stamp = out / "command.json"
  return ((out / "results.json").is_file() and stamp.is_file()
          and json.loads(stamp.read_text()) == command)


def run_cached(out: pathlib.Path, command: list[str], log: pathlib.Path
               ) -> dict:
  if cached(out, command):
    print(f"[skip] {out.name}: results.json exists", flush=True)
  else:
    (out / "command.json").unlink(missing_ok=True)
    run_cli(command, log)
    atomic_write_text(out / "command.json", json.dumps(command))
  return json.loads((out / "results.json").read_text())


def evaluate_all(root, mode, data, logs, runs) -> dict:
  """{run key: posteriors .npz} for every trained run."""
  posteriors = {}
  for stage, (protocol, scales) in EVAL_GROUPS.items():
    keys = sorted(k for k in runs if k[1] == stage)
    if not keys:
      continue
    out = root / "evals" / stage
    cmd = [python(), "-m", "vgg_jax.evaluate", "--data", "folder",
           "--data-dir", str(data), "--split", "test", "--protocol",
           protocol, "--scales", ",".join(map(str, scales)), "--best",
           "--limit", str(mode.test_limit), "--save-posteriors",
           "--output", str(out)]
    for k in keys:
      cmd += ["--model", str(runs[k]), "--arch", k[0]]
    run_cached(out, cmd, logs / f"evaluate_{stage}.log")
    for i, k in enumerate(keys):
      posteriors[k] = out / f"posteriors_{i}_{k[0]}.npz"
      if not posteriors[k].is_file():
        raise SystemExit(f"{posteriors[k]} missing after evaluation")
  return posteriors


def from_posteriors(root, logs, name, files, protocol, scales) -> list[dict]:
  """Rows of ``python -m vgg_jax.evaluate --from-posteriors``."""
  out = root / "tables" / name
  cmd = [python(), "-m", "vgg_jax.evaluate", "--from-posteriors",
         *map(str, files), "--protocol", protocol, "--scales",
         ",".join(map(str, scales)), "--output", str(out)]
  return run_cached(out, cmd, logs / f"table_{name}.log")["rows"]


# ---------------------------------------------------------------------------
# Tables.


def pct(x: float) -> float:
  return round(100.0 * x, 2)


def spread(values: list[float]) -> str:
  if len(values) == 1:
    return f"{values[0]:.2f}"
  return (f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} "
          f"(n={len(values)})")


def cell_rows(root, logs, mode, post, name, keys, protocol, scales):
  """{(net, stage): [top-1 %, ...], ...} over seeds, and top-5 likewise."""
  keys = [k for k in keys if k in post]
  if not keys:
    return {}
  rows = from_posteriors(root, logs, name, [post[k] for k in keys], protocol,
                         scales)
  out = {}
  for k, r in zip(keys, rows):  # one row per file, in order; then ensemble
    if r["num_examples"] != mode.test_limit:
      raise SystemExit(f"{name}: {r['num_examples']} examples, expected "
                       f"{mode.test_limit}")
    cell = out.setdefault((k[0], k[1]), {"top1": [], "top5": [],
                                         "files": []})
    cell["top1"].append(pct(r["top1_error"]))
    cell["top5"].append(pct(r["top5_error"]))
    cell["files"].append(str(post[k]))
  return out


def build_tables(root, mode, logs, post) -> dict:
  keys = sorted(post)
  by_stage = lambda st: [k for k in keys if k[1] == st]
  t3 = {}
  for st in ("s32", "s64", "jitter"):
    t3.update(cell_rows(root, logs, mode, post, f"t3_{st}", by_stage(st),
                        "dense", [SINGLE_Q[st]]))
  t4 = {}
  for st in ("s32", "s64", "jitter"):
    t4.update(cell_rows(root, logs, mode, post, f"t4_{st}",
                        [k for k in by_stage(st) if k[0] not in ("A", "A-LRN")],
                        "dense", MULTI_Q[st]))
  t5 = {}
  for protocol in ("dense", "multicrop", "dense+multicrop"):
    rows = cell_rows(root, logs, mode, post, f"t5_{protocol}",
                     by_stage("jitter"), protocol, MULTI_Q["jitter"])
    for k, v in rows.items():
      t5[(k[0], protocol)] = v
  # Table 6's idea: the two best (deepest) jittered nets, averaged, per seed.
  t6 = {}
  deep = [n for n in ("D", "E") if n in mode.nets] or [
      n for n in mode.nets if "jitter" in NET_STAGES[n]]
  for seed in mode.seeds:
    members = [k for k in by_stage("jitter") if k[0] in deep and k[2] == seed]
    if len(members) < 2:
      members = [k for k in keys if k[2] == seed and k[1] == "jitter"] + [
          k for k in keys if k[2] == seed and k[1] == "s64"]
    if len(members) < 2:
      continue
    for protocol in ("dense", "dense+multicrop"):
      protocol_ok = protocol == "dense" or all(k[1] == "jitter"
                                               for k in members)
      if not protocol_ok:
        continue
      rows = from_posteriors(root, logs, f"t6_{protocol}_seed{seed}",
                             [post[k] for k in members], protocol,
                             MULTI_Q["jitter"])
      label = " & ".join(f"{k[0]} {TRAIN_SCALE[k[1]]}" for k in members)
      for k, r in zip(members + [None], rows):
        name = label + " (ensemble)" if k is None else (
            f"{k[0]} {TRAIN_SCALE[k[1]]}")
        cell = t6.setdefault((name, protocol), {"top1": [], "top5": []})
        cell["top1"].append(pct(r["top1_error"]))
        cell["top5"].append(pct(r["top5_error"]))
  return {"table3": t3, "table4": t4, "table5": t5, "table6": t6}


def init_claim_table(runs: dict) -> dict:
  """Per variant: training loss and validation accuracy at every
  evaluation, read from the run's metrics.jsonl (written by the CLI)."""
  out = {}
  for variant, workdir in runs.items():
    recs = [json.loads(l) for l in
            (workdir / "metrics.jsonl").read_text().splitlines() if l]
    evals = [(r["step"], pct(r["val_top1"])) for r in recs
             if r["kind"] == "eval"]
    losses = [(r["step"], round(r["train_loss"], 4)) for r in recs
              if r["kind"] == "train"]
    out[variant] = {"val_top1_accuracy": evals, "train_loss": losses,
                    "workdir": str(workdir)}
  return out


def fmt_cell(cell) -> tuple[str, str]:
  return spread(cell["top1"]), spread(cell["top5"])


def markdown(mode, tables, init) -> str:
  L = [f"# Mini tables ({mode.name} run)", "",
       f"Fashion-MNIST as PNGs: {mode.train_examples} training, "
       f"{mode.val_examples} validation (plateau rule) images; errors on the "
       f"first {mode.test_limit} test images.  Seeds {list(mode.seeds)} "
       "(mean ± sample std over seeds where there are several).  "
       "Steps per stage: " + json.dumps(mode.steps) + ".", ""]
  L += ["## Table 3: single test scale (dense)", "",
        "| net | train S | test Q | top-1 err (%) | top-5 err (%) |",
        "|---|---|---|---|---|"]
  for (net, st), c in sorted(tables["table3"].items(), key=_net_order):
    L.append(f"| {net} | {TRAIN_SCALE[st]} | {SINGLE_Q[st]} | "
             + " | ".join(fmt_cell(c)) + " |")
  L += ["", "## Table 4: multiple test scales (dense)", "",
        "| net | train S | test Q | top-1 err (%) | top-5 err (%) |",
        "|---|---|---|---|---|"]
  for (net, st), c in sorted(tables["table4"].items(), key=_net_order):
    L.append(f"| {net} | {TRAIN_SCALE[st]} | "
             f"{','.join(map(str, MULTI_Q[st]))} | "
             + " | ".join(fmt_cell(c)) + " |")
  L += ["", "## Table 5: dense vs multi-crop vs both (jittered nets, Q = "
        f"{','.join(map(str, MULTI_Q['jitter']))})", "",
        "| net | method | top-1 err (%) | top-5 err (%) |", "|---|---|---|---|"]
  order = ("dense", "multicrop", "dense+multicrop")  # the paper's rows
  for (net, protocol), c in sorted(tables["table5"].items(),
                                   key=lambda kv: (_NETS.index(kv[0][0]),
                                                   order.index(kv[0][1]))):
    L.append(f"| {net} | {protocol} | " + " | ".join(fmt_cell(c)) + " |")
  L += ["", "## Table 6 (idea): an ensemble of nets (posteriors averaged)",
        "", "| model(s) | method | top-1 err (%) | top-5 err (%) |",
        "|---|---|---|---|"]
  for (name, protocol), c in tables["table6"].items():
    L.append(f"| {name} | {protocol} | " + " | ".join(fmt_cell(c)) + " |")
  L += ["", "## Initialisation (§3.1): validation top-1 accuracy (%) by step",
        ""]
  for variant, r in init.items():
    ev = ", ".join(f"{s}: {a:.2f}" for s, a in r["val_top1_accuracy"])
    loss = r["train_loss"][-1][1] if r["train_loss"] else "n/a"
    L.append(f"- {variant}: {ev}; last training loss {loss}")
  return "\n".join(L) + "\n"


_NETS = ("A", "A-LRN", "B", "C", "D", "E")


def _net_order(kv):
  net, st = kv[0]
  return (_NETS.index(net), ("s32", "s64", "jitter").index(st))


def plot(path: pathlib.Path, tables: dict) -> bool:
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("matplotlib is not installed (pip install '.[mini]'): no plot",
          flush=True)
    return False
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for key, ax, title in (("table3", axes[0], "single scale (Table 3)"),
                         ("table4", axes[1], "multi-scale (Table 4)")):
    items = sorted(tables[key].items(), key=_net_order)
    labels = [f"{n}\n{TRAIN_SCALE[s]}" for (n, s), _ in items]
    means = [np.mean(c["top1"]) for _, c in items]
    errs = [np.std(c["top1"], ddof=1) if len(c["top1"]) > 1 else 0
            for _, c in items]
    ax.bar(range(len(items)), means, yerr=errs, capsize=3)
    ax.set_xticks(range(len(items)), labels, fontsize=7)
    ax.set_ylabel("top-1 error (%)")
    ax.set_title(title)
  fig.tight_layout()
  tmp = path.with_name(f".{path.name}.tmp.png")
  fig.savefig(tmp, dpi=100)
  os.replace(tmp, path)
  return True


# ---------------------------------------------------------------------------


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  g = p.add_mutually_exclusive_group()
  g.add_argument("--quick", action="store_true",
                 help="fewer images and steps, one seed (about 10 minutes)")
  g.add_argument("--tiny", action="store_true",
                 help="for the tests: nets A and C, a few steps")
  p.add_argument("--fashion-mnist-dir", default=str(FASHION_MNIST_IDX),
                 help="folder with Fashion-MNIST's four IDX .gz files")
  args = p.parse_args(argv)
  mode = MODES["tiny" if args.tiny else "quick" if args.quick else "full"]
  root = pathlib.Path(args.workdir).absolute()
  mode_file = root / "mode.json"
  if mode_file.is_file() and json.loads(mode_file.read_text())["name"] != (
      mode.name):
    raise SystemExit(f"{root} holds a {json.loads(mode_file.read_text())['name']}"
                     f" run; use another --workdir for a {mode.name} run")
  root.mkdir(parents=True, exist_ok=True)
  atomic_write_text(mode_file, json.dumps(dataclasses.asdict(mode)))
  # One JAX compilation cache for every command of the run (unless the
  # caller set one): the second seed, the fine-tuning stages of a net (the
  # same 32x32 training step) and the evaluations load what an earlier
  # command compiled instead of compiling it again.  Every program is
  # cached, however quick to compile (start-up's initialisers are many
  # sub-second compiles).
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ.update(compilation_cache.environment(root / "xla_cache"))
  logs = root / "logs"
  t0 = time.time()
  data = prepare_data(root, mode, pathlib.Path(args.fashion_mnist_dir), logs)
  runs = train_all(root, mode, data, logs)
  init_runs = train_init_claim(root, mode, data, logs)
  post = evaluate_all(root, mode, data, logs, runs)
  tables = build_tables(root, mode, logs, post)
  init = init_claim_table(init_runs)
  report = {"mode": dataclasses.asdict(mode), "init_claim": init,
            **{k: [{"net": a, "what": b, **v} for (a, b), v in t.items()]
               for k, t in tables.items()}}
  atomic_write_text(root / "tables.json", json.dumps(report, indent=1) + "\n")
  atomic_write_text(root / "tables.md", markdown(mode, tables, init))
  plotted = plot(root / "tables.png", tables)
  print(f"wrote {root / 'tables.md'}, tables.json"
        + (", tables.png" if plotted else "")
        + f" in {time.time() - t0:.0f}s", flush=True)
  return report


if __name__ == "__main__":
  main()
