"""The largest global batch that fits, per net, pod, FC sharding and dtype.

    python benchmarks/aot_sweep.py                       # everything, resumable
    python benchmarks/aot_sweep.py --nets D,E --dtypes bfloat16 --fc off

Each point is ``vgg_jax.aot.sweep`` (bisection over the global batch, every
compile cached as one JSON under ``--cache_dir``), run for nets A-E x the
pods of ``vgg_jax.pods.SWEEP_TOPOLOGIES`` (v4-32, v5e-256, v5p-128, v6e-256)
x FC sharding off/on (``shard_fc_kernels`` on a model axis of
``--model_axis`` chips) x float32/bfloat16, the most useful first (D and E,
bf16).  The table goes to ``--output`` after every point, so an interrupted
sweep keeps what it finished and a rerun skips every compiled point.
A compile that fits takes minutes on a 2-core machine, a refusal seconds:
the bisection probes (``--probe_s``) and compiles only its answer in full,
starting from the answer of a finished cell on chips with the same HBM
(``neighbour_guess``), so a cell whose guess is right costs one refusal and
one full compile.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys
import time

from vgg_jax import pods

pods.prepare_aot_environment()  # before jax is imported

from vgg_jax import aot  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_config(net: str):
  return aot.load_experiment(ROOT / "experiments" / f"config{net}.py")


def points(nets, topologies, dtypes, fcs):
  # Most useful first: bf16 before f32, FC sharding off before on, then net
  # (in the order given), then pod.
  for dtype, fc, net, topo in itertools.product(dtypes, fcs, nets,
                                                topologies):
    yield net, topo, fc, dtype


def neighbour_guess(rows, pod: str, fc: bool, dtype: str) -> int | None:
  """A first guess for a cell, from the finished cells on chips with the
  same HBM: the same dtype and FC sharding first (D and E share theirs: the
  224x224 activations of the first block dominate, and each chip holds its
  batch whatever the pod's size), then the other FC sharding (per data
  shard the activations are the same), then the other dtype (float32
  activations are twice bfloat16's: half the batch).  Only the sweep's
  speed depends on it."""
  hbm = pods.parse_topology(pod)[0].hbm_bytes
  other = {"bfloat16": "float32", "float32": "bfloat16"}.get(dtype)
  scale = {"float32": 0.5, "bfloat16": 2.0}.get(dtype, 1.0)
  for want_fc, want_dtype, f in ((fc, dtype, 1.0), (not fc, dtype, 1.0),
                                 (fc, other, scale), (not fc, other, scale)):
    same = [r["max_batch_per_chip"] for r in rows
            if r["dtype"] == want_dtype and r["shard_fc_kernels"] == want_fc
            and pods.parse_topology(r["pod"])[0].hbm_bytes == hbm
            and r["max_batch_per_chip"]]
    if same:
      return int(max(same) * f) // 8 * 8 or None
  return None


def cost_table(epochs: float = 74.0, mfu: float = 0.4,
               train_images: int = 1_281_167) -> str:
  """Chip-hours per net for the paper's schedule, as a markdown table.

  FLOPs = 6 x forward MACs per 224x224 image (forward + backward) x
  ``epochs`` x the ILSVRC-2012 training set (paper §3.1: 370K iterations of
  256 = 74 epochs), at the bf16 peak of each chip times ``mfu``.
  """
  from vgg_jax.models import count_macs, net_spec  # pylint: disable=g-import-not-at-top
  gens = list(pods.CHIPS)
  rows = [f"| net | GFLOP/image | " + " | ".join(
      f"{g} chip-h" for g in gens) + " |",
          "|---|---|" + "---|" * len(gens)]
  for net in ("A", "B", "C", "D", "E"):
    flops = 6 * count_macs(net_spec(net), 224)
    total = flops * epochs * train_images
    hours = [total / (pods.CHIPS[g].bf16_flops_per_s * mfu) / 3600
             for g in gens]
    rows.append(f"| {net} | {flops / 1e9:.1f} | " + " | ".join(
        f"{h:,.0f}" for h in hours) + " |")
  return "\n".join(rows)


def cached_cells(cache_dir) -> dict:
  """The cache's full compiles, grouped by cell: (net, topology, dtype, FC
  sharding, model axis) -> points sorted by global batch."""
  groups = {}
  for f in sorted(pathlib.Path(cache_dir).glob("*.json")):
    r = json.loads(f.read_text())
    key = (r["model"]["name"], r["topology"], r["dtype"],
           r["shard_fc_kernels"], r["mesh"]["model"])
    groups.setdefault(key, []).append(r)
  return {k: sorted(v, key=lambda r: r["global_batch"])
          for k, v in groups.items()}


def other_cells_answers(cache_dir, generation: str, dtype: str) -> list:
  """Per chip, the largest batch that fits in each cached cell on chips of
  ``generation`` in ``dtype``: ``aot.sweep``'s candidates above its own
  bisection, since XLA's peak is not monotone in the batch (v5p)."""
  chip = pods.CHIPS[generation]
  out = set()
  for pts in cached_cells(cache_dir).values():
    if pts[0]["chip"]["generation"] != generation or pts[0]["dtype"] != dtype:
      continue
    fit = [r for r in pts if aot.point_fits(r["memory_per_chip"], chip)]
    if fit:
      out.add(int(fit[-1]["batch_per_chip"]))
  return sorted(out)


def cache_table(cache_dir, step_per_chip: int = 8) -> str:
  """Markdown: every (net, pod, dtype, FC sharding) with compiled points.

  From the per-point cache alone, so an unfinished sweep shows what it has:
  the largest batch compiled that fits, the smallest above it that does
  not, and whether they are one step apart (the answer) or still a bracket;
  failures below the answer (XLA's peak is not monotone in the batch) are
  named in the status.  The
  roofline is recomputed from each point's stored numbers with the current
  ``aot.roofline``.
  """
  groups = cached_cells(cache_dir)
  rows = ["| net | pod (topology) | dtype | FC sharding | compiled global "
          "batches (fits / not) | largest that fits (per chip) | peak "
          "GiB/chip there, of the usable | roofline at that batch | status |",
          "|---|---|---|---|---|---|---|---|---|"]
  pod_names = {v: k for k, v in pods.SWEEP_TOPOLOGIES.items()}
  for key in sorted(groups):
    net, topo, dtype, fc, model = key
    pts = groups[key]
    # "fits" by the current chip table (pods.Chip.usable_hbm), not the flag
    # stored when the point was compiled.
    chip = pods.CHIPS[pts[0]["chip"]["generation"]]
    fit = [r for r in pts if aot.point_fits(r["memory_per_chip"], chip)]
    nofit = [r for r in pts if not aot.point_fits(r["memory_per_chip"], chip)]
    best = fit[-1] if fit else None
    fail = min((r["global_batch"] for r in nofit
                if not best or r["global_batch"] > best["global_batch"]),
               default=None)
    below = [r["global_batch"] for r in nofit
             if best and r["global_batch"] < best["global_batch"]]
    shards = pts[0]["chips"] // model
    if best and fail and fail - best["global_batch"] <= step_per_chip * shards:
      status = "exact (next step does not fit)"
    elif best and fail:
      status = f"between {best['global_batch']} and {fail}: unfinished"
    elif best:
      status = "lower bound: unfinished"
    elif fail:
      status = f"unfinished: {fail} does not fit, nothing smaller compiled"
    else:
      status = "nothing compiled"
    if below:
      status += (f"; {len(below)} smaller batch{'es' if len(below) > 1 else ''}"
                 f" do{'' if len(below) > 1 else 'es'} not fit (the peak is "
                 "not monotone)")
    cells = ", ".join(
        f"{r['global_batch']}"
        f"{'' if aot.point_fits(r['memory_per_chip'], chip) else ' ✗'}"
        for r in pts)
    if best:
      m = best["memory_per_chip"]
      rf = aot.roofline(
          chip, flops=best["flops_per_chip"],
          hbm_bytes=m["argument_size_in_bytes"] + m["output_size_in_bytes"]
          + 2 * m["temp_size_in_bytes"],
          ici_bytes=sum(c["ici_bytes"] for c in
                        best["collectives_per_chip"].values()),
          global_batch=best["global_batch"])
      roof = (f"{rf['step_time_s'] * 1e3:.0f} ms, <= "
              f"{rf['images_per_s']:,.0f} img/s ({rf['bound_by']})")
      largest = f"{best['global_batch']} ({best['batch_per_chip']:g})"
      peak = (f"{m['peak_bytes'] / pods.GIB:.2f} of "
              f"{chip.usable_hbm / pods.GIB:.2f}")
    else:
      roof = largest = peak = "-"
    rows.append(f"| {net} | {pod_names.get(topo, topo)} ({topo}) | {dtype} | "
                f"{'on, model axis ' + str(model) if fc else 'off'} | {cells}"
                f" | {largest} | {peak} | {roof} | {status} |")
  return "\n".join(rows)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--nets", default="D,E,A,B,C")
  p.add_argument("--topologies", default="v5e-256,v4-32,v5p-128,v6e-256")
  p.add_argument("--dtypes", default="bfloat16,float32")
  p.add_argument("--fc", default="off,on")
  p.add_argument("--model_axis", type=int, default=4,
                 help="chips per model replica when FC sharding is on")
  p.add_argument("--step_per_chip", type=int, default=8)
  p.add_argument("--probe_s", type=float, default=45.0,
                 help="bisect with probes: a compile XLA has not refused "
                 "after this many seconds counts as passing (only the answer "
                 "is compiled in full); 0: compile every point in full")
  p.add_argument("--cache_dir", default=str(ROOT / "benchmarks/results/"
                                                    "aot_cache"))
  p.add_argument("--output", default=str(ROOT / "benchmarks/results/"
                                                 "aot_sweep.json"))
  p.add_argument("--cost_table", action="store_true",
                 help="print chip-hours per net (no compiling) and exit")
  p.add_argument("--mfu", type=float, default=0.4)
  p.add_argument("--table", action="store_true",
                 help="print the markdown table of the cached points, exit")
  args = p.parse_args(argv)
  if args.table:
    print(cache_table(args.cache_dir, args.step_per_chip))
    return
  if args.cost_table:
    print(f"74 epochs of ILSVRC-2012 at {args.mfu:.0%} of the bf16 peak:")
    print(cost_table(mfu=args.mfu))
    return
  out = pathlib.Path(args.output)

  def load_table():
    # Read again before every cell: sweeps of other cells may run beside
    # this one (one per core), and each must keep the others' rows.
    return json.loads(out.read_text()) if out.is_file() else {"rows": []}

  for net, pod, fc, dtype in points(args.nets.split(","),
                                    args.topologies.split(","),
                                    args.dtypes.split(","),
                                    args.fc.split(",")):
    key = (net, pod, fc == "on", dtype)
    if key in {(r["net"], r["pod"], r["shard_fc_kernels"], r["dtype"])
               for r in load_table()["rows"]}:
      continue
    config = load_config(net)
    with config.unlocked():
      config.model.dtype = dtype
      config.shard_fc_kernels = fc == "on"
      config.mesh_model_axis = args.model_axis if fc == "on" else 1
    t0 = time.time()
    guess = neighbour_guess(load_table()["rows"], pod, fc == "on", dtype)
    generation = pods.parse_topology(pod)[0].generation
    print(f"{net} {pod} fc={fc} {dtype}"
          f"{f' (first guess {guess}/chip)' if guess else ''}", flush=True)
    r = aot.sweep(config, pod, args.cache_dir,
                  step_per_chip=args.step_per_chip, guess_per_chip=guess,
                  candidates_per_chip=other_cells_answers(
                      args.cache_dir, generation, dtype),
                  probe_s=args.probe_s or None,
                  log=lambda s: print(s, flush=True))
    at = r.pop("at_max") or {}
    r.update(pod=pod, sweep_s=time.time() - t0,
             peak_bytes_at_max=at.get("memory_per_chip", {}).get(
                 "peak_bytes"),
             roofline_at_max=at.get("roofline"),
             flops_per_step_at_max=at.get("flops_per_step"))
    table = load_table()
    table["rows"].append(r)
    table["command"] = "python benchmarks/aot_sweep.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    aot.write_json(out, table)
    print(f"  -> max global batch {r['max_global_batch']} "
          f"({r['sweep_s']:.0f} s)", flush=True)


if __name__ == "__main__":
  main()
