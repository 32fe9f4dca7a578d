#!/usr/bin/env python3
"""Train on machines without SLURM: one process per node, started over ssh.

    python launch/ssh_cluster.py --hosts gpu1,gpu2,gpu3,gpu4 \
        --config experiments/configD.py --workdir /shared/workdirs/D_s256 \
        -- --config.model.dtype=bfloat16
    python launch/ssh_cluster.py --dry-run --hostfile hosts.txt ...

Every host must have this repository at ``--remote-dir`` (same commit) with
its virtualenv, and the workdir and data on a filesystem all hosts share.
Host i runs ``python -m vgg_jax.main ... --coordinator_address HOST0:PORT
--num_processes N --process_id i`` (what ``jax.distributed.initialize``
needs); each process uses all of its node's accelerators.  Host 0's output
streams here; every host's output goes to ``--logs-dir/host{i}.log``.  If
one process fails the others are stopped.  Run again with the same workdir
to resume from its last checkpoint.
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import launchlib  # pylint: disable=g-import-not-at-top,wrong-import-position


def read_hosts(args) -> list[str]:
  if args.hosts and args.hostfile:
    raise ValueError("give --hosts or --hostfile, not both")
  if args.hostfile:
    text = pathlib.Path(args.hostfile).read_text()
    hosts = [h.split("#")[0].strip() for h in text.splitlines()]
  elif args.hosts:
    hosts = [h.strip() for h in args.hosts.split(",")]
  else:
    raise ValueError("give the nodes: --hosts h1,h2,... or --hostfile FILE "
                     "(one host per line)")
  hosts = [h for h in hosts if h]
  if not hosts:
    raise ValueError("the host list is empty")
  if len(set(hosts)) != len(hosts):
    raise ValueError(f"a host is listed twice: {hosts}")
  return hosts


def commands(args, hosts: list[str]) -> list[list[str]]:
  coordinator = (args.coordinator_address or
                 f"{hosts[0].split('@')[-1]}:{args.port}")
  out = []
  for i, host in enumerate(hosts):
    train = launchlib.train_command(
        args.config, args.workdir, args.overrides, python=args.python,
        extra_flags=["--coordinator_address", coordinator,
                     "--num_processes", str(len(hosts)),
                     "--process_id", str(i)])
    remote = f"cd {shlex.quote(args.remote_dir)} && exec {shlex.join(train)}"
    # -tt: stopping the local ssh hangs up the remote process too.
    out.append(["ssh", "-tt", "-o", "BatchMode=yes", *args.ssh_option,
                host, remote])
  return out


def main(argv=None, runner=None) -> int:
  p = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  p.add_argument("--dry-run", action="store_true",
                 help="print every command instead of running it")
  p.add_argument("--hosts", help="comma-separated; the first is process 0 "
                 "and the coordinator")
  p.add_argument("--hostfile")
  p.add_argument("--port", type=int, default=12355)
  p.add_argument("--coordinator-address", help="HOST:PORT process 0 "
                 "listens on, if the ssh name is not reachable from the "
                 "other nodes")
  p.add_argument("--remote-dir", default="vgg_jax",
                 help="the repository on every host (relative to $HOME)")
  p.add_argument("--python", default=".venv/bin/python")
  p.add_argument("--ssh-option", action="append", default=[],
                 help="extra ssh arguments, e.g. --ssh-option=-p2222")
  p.add_argument("--logs-dir", default="launch_logs")
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  args = launchlib.parse_with_overrides(p, argv)
  runner = runner or launchlib.Runner(dry_run=args.dry_run)
  try:
    hosts = read_hosts(args)
    cmds = commands(args, hosts)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  logs = pathlib.Path(args.logs_dir)
  if not runner.dry_run:
    logs.mkdir(parents=True, exist_ok=True)
  procs = [launchlib.start(runner, c, None if i == 0 else
                           logs / f"host{i}.log")
           for i, c in enumerate(cmds)]
  if runner.dry_run:
    return 0
  status = 0
  while any(pr.poll() is None for pr in procs):
    failed = [i for i, pr in enumerate(procs)
              if pr.poll() not in (None, 0)]
    if failed:
      status = procs[failed[0]].returncode
      print(f"host {hosts[failed[0]]} (process {failed[0]}) exited "
            f"{status}: stopping the others", file=sys.stderr)
      for pr in procs:
        if pr.poll() is None:
          pr.terminate()
      break
    time.sleep(1)
  for pr in procs:
    pr.wait()
    status = status or pr.returncode
  return status


if __name__ == "__main__":
  sys.exit(main())
