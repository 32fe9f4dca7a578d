#!/usr/bin/env python3
"""Train on a GPU cluster with SLURM: one process per node, or per GPU.

    python launch/slurm.py --nodes 4 --gpus-per-node 8 \
        --config experiments/configD.py --workdir /shared/workdirs/D_s256 \
        -- --config.model.dtype=bfloat16
    python launch/slurm.py --dry-run --per gpu --chain 3 ...   # print, submit nothing

Writes a batch script and submits it with ``sbatch`` (on stdin; ``--dry-run``
prints both).  ``--per node`` (default): one process per node using all of
its GPUs.  JAX's SLURM auto-detection would give each process only the GPU
numbered SLURM_LOCALID (i.e. GPU 0 with one task per node), so the script
passes coordinator, process count and index explicitly and hides
SLURM_JOB_ID from the process.  ``--per gpu``: one process per GPU, JAX's
own SLURM detection (every task sees all of the node's GPUs and takes the
one numbered SLURM_LOCALID).  The global batch must divide by the GPU count
(checked before any compute).  The workdir must be on a filesystem all nodes
share.  ``--signal`` sends SIGTERM before the time limit: the run saves a
checkpoint and exits; ``--chain K`` submits K jobs, each starting after the
previous one ends (``afterany``), so a run longer than the time limit goes
on from the workdir by itself.
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import launchlib  # pylint: disable=g-import-not-at-top,wrong-import-position


def batch_script(args) -> str:
  per_node = args.per == "node"
  lines = ["#!/usr/bin/env bash",
           f"#SBATCH --job-name={args.job_name}",
           f"#SBATCH --nodes={args.nodes}",
           f"#SBATCH --ntasks-per-node={1 if per_node else args.gpus_per_node}",
           f"#SBATCH --gpus-per-node={args.gpus_per_node}",
           f"#SBATCH --cpus-per-task={args.cpus_per_task}",
           f"#SBATCH --time={args.time}",
           f"#SBATCH --signal=TERM@{args.signal_s}",
           f"#SBATCH --output={args.output}",
           "#SBATCH --open-mode=append"]
  if args.partition:
    lines.append(f"#SBATCH --partition={args.partition}")
  if args.account:
    lines.append(f"#SBATCH --account={args.account}")
  lines += ["set -euo pipefail", f"cd {shlex.quote(str(args.repo_dir))}"]
  train = launchlib.train_command(args.config, args.workdir, args.overrides,
                                  python=args.python)
  if per_node:
    lines += [
        "# Process 0's node is the coordinator.",
        "export VGG_JAX_COORDINATOR=\"$(scontrol show hostnames "
        f"\"$SLURM_JOB_NODELIST\" | head -n 1):{args.port}\"",
        "# All of the node's GPUs for the one process: explicit addresses, "
        "and SLURM_JOB_ID hidden from JAX's SLURM detection.",
    ]
    inner = (f"exec env -u SLURM_JOB_ID {shlex.join(train)} "
             "--coordinator_address \"$VGG_JAX_COORDINATOR\" "
             "--num_processes \"$SLURM_NTASKS\" --process_id "
             "\"$SLURM_PROCID\"")
    lines.append(f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(inner)}")
  else:
    lines.append("srun --kill-on-bad-exit=1 " +
                 shlex.join(train[:3] + ["--multihost"] + train[3:]))
  return "\n".join(lines) + "\n"


def main(argv=None, runner=None) -> int:
  p = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  p.add_argument("--dry-run", action="store_true",
                 help="print the batch script and sbatch commands only")
  p.add_argument("--nodes", type=int, required=True)
  p.add_argument("--gpus-per-node", type=int, default=8)
  p.add_argument("--per", choices=["node", "gpu"], default="node")
  p.add_argument("--cpus-per-task", type=int, default=None)
  p.add_argument("--time", default="24:00:00")
  p.add_argument("--signal-s", type=int, default=300,
                 help="SIGTERM this many seconds before the time limit")
  p.add_argument("--partition")
  p.add_argument("--account")
  p.add_argument("--job-name", default="vgg_jax")
  p.add_argument("--output", default="vgg_jax_%j.out")
  p.add_argument("--port", type=int, default=12355)
  p.add_argument("--chain", type=int, default=1,
                 help="submit this many jobs, each after the previous")
  p.add_argument("--repo-dir", default=str(launchlib.REPO_ROOT))
  p.add_argument("--python", default=".venv/bin/python")
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  args = launchlib.parse_with_overrides(p, argv)
  if args.nodes < 1 or args.gpus_per_node < 1 or args.chain < 1:
    print("error: --nodes, --gpus-per-node and --chain must be >= 1",
          file=sys.stderr)
    return 2
  if args.cpus_per_task is None:
    args.cpus_per_task = 32 if args.per == "node" else 8
  runner = runner or launchlib.Runner(dry_run=args.dry_run)
  try:
    script = batch_script(args)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  previous = None
  for k in range(args.chain):
    cmd = ["sbatch", "--parsable"]
    if previous:
      cmd.append(f"--dependency=afterany:{previous}")
    r = runner.run(cmd, capture=True, stdin=script)
    previous = (r.stdout.strip().split(";")[0] if r.stdout.strip()
                else f"JOB{k + 1}")
    runner.note(f"submitted job {previous}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
