#!/usr/bin/env python3
"""Train on a Cloud TPU pod slice, and resume by itself after a preemption.

    python launch/tpu_pod.py train --name vgg-d --zone us-east5-a \
        --accelerator-type v5litepod-64 --spot \
        --config experiments/configD.py --workdir gs://BUCKET/workdirs/D_s256 \
        --data-dir gs://BUCKET/tfds -- --config.model.dtype=bfloat16

    python launch/tpu_pod.py --dry-run train ...   # print every command, run none

Actions (``train`` does them all, in order):
  preflight  before any pod-hour: the AOT check (``python -m vgg_jax.aot``:
             the step compiles and fits on this topology), the data on GCS
             readable, the workdir on GCS writable; each failure a clear
             message.
  create     a queued resource (``--spot`` for spot capacity) and wait until
             it is ACTIVE.
  setup      on every worker: gcsfuse mounts of the workdir's and data's
             buckets at /mnt/gcs/BUCKET (training reads and writes local
             paths), and this code: ``git clone --repo-url`` (default: this
             checkout's ``origin``) at ``--ref`` (default: this checkout's
             commit), or ``--archive`` (``git archive`` of this checkout,
             copied to every worker), installed into a Python 3.11 virtualenv
             (uv) with ``jax[tpu]`` at this checkout's jax version.
  run        the same ``python -m vgg_jax.main --multihost`` on every worker
             (in the background: a dropped ssh does not stop it), then stream
             worker 0's log until the run ends.
  collect    every worker's log, copied to WORKDIR/launch_logs/ and down to
             ``--logs-dir``.
  delete     the queued resource and its TPU.
After ``run``: if the run finished (metrics.jsonl's last "final" line says
total_steps, plateau or stop_after_steps), collect and delete.  If the TPU
was preempted (the queued resource is no longer ACTIVE, or the run stopped
for a preemption), delete it, create it again, set it up and run the same
command: training resumes exactly from the workdir's checkpoint.  At most
``--max-restarts`` times.  If the run failed on a healthy TPU, collect the
logs and stop (exit 1): a bug does not get better by retrying.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shlex
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parent.parent))
import launchlib  # pylint: disable=g-import-not-at-top,wrong-import-position
from launchlib import Result, Runner  # pylint: disable=g-import-not-at-top,wrong-import-position
# The chip table and accelerator-type -> topology mapping (stdlib only: no
# jax import, so this script runs where vgg_jax's dependencies are absent).
from vgg_jax import pods  # pylint: disable=g-import-not-at-top,wrong-import-position

# Default TPU VM software per generation (Cloud TPU docs, "TPU software
# versions").
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
                    "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
DONE_REASONS = ("total_steps", "plateau", "stop_after_steps")
MOUNT_ROOT = "/mnt/gcs"
REMOTE_DIR = "vgg_jax"  # under the worker's home directory
LOG_DIR = "vgg_jax_logs"
GCSFUSE_INSTALL = (
    "command -v gcsfuse >/dev/null || { "
    "echo \"deb https://packages.cloud.google.com/apt gcsfuse-$(lsb_release "
    "-cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null"
    " && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | "
    "sudo apt-key add - >/dev/null && sudo apt-get update -q >/dev/null && "
    "sudo apt-get install -y -q gcsfuse >/dev/null; }")


def parse_accelerator_type(acc: str) -> tuple[str, int]:
  """``v5litepod-64`` -> ("v5litepod", 64 chips); a clear error otherwise.

  The first part is gcloud's family name (what RUNTIME_VERSIONS is keyed
  by); chips are counted by ``vgg_jax.pods`` (v4/v5p types count TensorCores).
  """
  m = re.fullmatch(r"(v4|v5litepod|v5p|v6e)-(\d+)", acc)
  if not m:
    raise ValueError(f"accelerator type {acc!r} is not one of v4-N, "
                     "v5litepod-N, v5p-N, v6e-N (gcloud's names, e.g. "
                     "v5litepod-64, v4-32)")
  _, chips = pods.parse_accelerator_type(acc)
  return m.group(1), chips


def topology_for(acc: str) -> str:
  """The AOT topology (``vgg_jax.aot --topology``) of an accelerator type."""
  parse_accelerator_type(acc)
  return pods.accelerator_topology(acc)


def split_gs(url: str) -> tuple[str, str]:
  m = re.fullmatch(r"gs://([a-z0-9][a-z0-9._-]*)(/.*)?", url)
  if not m:
    raise ValueError(f"{url!r} is not a gs://BUCKET/PATH URL")
  return m.group(1), (m.group(2) or "").rstrip("/")


def mounted(url: str) -> str:
  """gs://BUCKET/PATH -> the path the workers see it at (gcsfuse)."""
  bucket, path = split_gs(url)
  return f"{MOUNT_ROOT}/{bucket}{path}"


class Pod:
  """The gcloud commands for one queued resource / TPU and one training run."""

  def __init__(self, args, runner: Runner):
    self.a, self.r = args, runner
    if not args.workdir.startswith("gs://"):
      raise ValueError(f"--workdir {args.workdir!r} must be on GCS "
                       "(gs://BUCKET/PATH): every worker and every re-created "
                       "pod must see the same checkpoints")
    split_gs(args.workdir)
    if args.data_dir:
      split_gs(args.data_dir)
    self.family, self.chips = parse_accelerator_type(args.accelerator_type)
    self.topology = args.topology or topology_for(args.accelerator_type)
    self.qr = args.queued_resource or f"{args.name}-qr"

  # --- gcloud plumbing ---
  def _loc(self) -> list[str]:
    flags = ["--zone", self.a.zone]
    if self.a.project:
      flags += ["--project", self.a.project]
    return flags

  def ssh(self, worker: str, command: str, check: bool = True) -> Result:
    return self.r.run(["gcloud", "compute", "tpus", "tpu-vm", "ssh",
                       self.a.name, *self._loc(), f"--worker={worker}",
                       "--command", command], check=check)

  def scp(self, local: str, remote: str) -> Result:
    return self.r.run(["gcloud", "compute", "tpus", "tpu-vm", "scp", local,
                       f"{self.a.name}:{remote}", *self._loc(),
                       "--worker=all"])

  # --- the run's command ---
  def overrides(self) -> list[str]:
    out = list(self.a.overrides)
    if self.a.data_dir and not any(o.startswith("--config.data.data_dir=")
                                   for o in out):
      out.append(f"--config.data.data_dir={mounted(self.a.data_dir)}")
    return out

  def train_argv(self) -> list[str]:
    return launchlib.train_command(self.a.config, mounted(self.a.workdir),
                                   self.overrides(),
                                   extra_flags=["--multihost"])

  def source(self) -> tuple[str | None, str]:
    """(the git URL the workers clone, None with --archive; the commit)."""
    url = None if self.a.archive else (self.a.repo_url or
                                       launchlib.git_remote_url())
    return url, self.a.ref or launchlib.git_head()

  # --- actions ---
  def preflight(self) -> None:
    """Each check prints what failed and what to do; raises SystemExit(2)."""
    failures = []
    try:  # what the workers will run, known before the pod exists
      self.source()
    except ValueError as e:
      failures.append(str(e))
    if not self.a.skip_aot:
      aot = [sys.executable, "-m", "vgg_jax.aot", "--config", self.a.config,
             "--topology", self.topology, *self.a.overrides]
      r = self.r.run(aot, check=False)
      if r.returncode == pods.EXIT_DOES_NOT_FIT:
        failures.append(
            f"the training step does not fit {self.topology}'s HBM (the AOT "
            "check above says by how much): lower batch_size, use "
            "--config.model.dtype=bfloat16 or FC sharding, or a larger "
            "topology")
      elif r.returncode:
        failures.append(
            f"the AOT check failed for {self.topology} (exit {r.returncode}):"
            " the step does not compile or libtpu is missing (see above); "
            "fix the config, or pass --skip-aot")
    if self.a.data_dir:
      r = self.r.run(["gcloud", "storage", "ls", self.a.data_dir.rstrip("/")
                      + "/"], check=False, capture=True)
      if r.returncode:
        failures.append(f"the data at {self.a.data_dir} is not readable "
                        "with your credentials (gcloud storage ls failed): "
                        "check the path and the bucket's IAM; the TPU's "
                        "service account needs storage.objectViewer too")
    probe = self.a.workdir.rstrip("/") + "/.preflight_write_test"
    r = self.r.run(["gcloud", "storage", "cp", "-", probe], check=False,
                   stdin="vgg_jax preflight\n")
    if r.returncode:
      failures.append(f"the workdir {self.a.workdir} is not writable "
                      "(gcloud storage cp failed): check the bucket and its "
                      "IAM; the TPU's service account needs "
                      "storage.objectAdmin on it")
    else:
      self.r.run(["gcloud", "storage", "rm", probe], check=False)
    if failures:
      for f in failures:
        print(f"preflight: {f}", file=sys.stderr)
      raise SystemExit(2)
    self.r.note(f"preflight passed: {self.topology}, data, workdir")

  def state(self) -> str:
    r = self.r.run(["gcloud", "compute", "tpus", "queued-resources",
                    "describe", self.qr, *self._loc(),
                    "--format=value(state.state)"], check=False, capture=True)
    return r.stdout.strip() if r.returncode == 0 else "NOT_FOUND"

  def create(self) -> None:
    cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", self.qr,
           "--node-id", self.a.name, *self._loc(),
           "--accelerator-type", self.a.accelerator_type,
           "--runtime-version", self.a.runtime_version or
           RUNTIME_VERSIONS[self.family]]
    if self.a.spot:
      cmd.append("--spot")
    self.r.run(cmd)
    waited = 0
    while True:
      s = self.state()
      if s == "ACTIVE":
        return
      if s in ("FAILED", "SUSPENDED", "NOT_FOUND"):
        raise SystemExit(f"queued resource {self.qr} is {s}: no capacity was "
                         "granted; try another zone, or later")
      if waited >= self.a.create_timeout:
        raise SystemExit(f"queued resource {self.qr} still {s} after "
                         f"{waited} s; it stays queued: delete it with "
                         f"`{sys.argv[0]} delete ...` or wait")
      self.r.note(f"queued resource {self.qr}: {s}; waiting")
      time.sleep(0 if self.r.dry_run else self.a.poll_s)
      waited += self.a.poll_s

  def setup(self) -> None:
    import importlib.metadata  # pylint: disable=g-import-not-at-top
    jax_pin = f"jax[tpu]=={importlib.metadata.version('jax')}"
    buckets = sorted({split_gs(u)[0] for u in (self.a.workdir,
                                               self.a.data_dir) if u})
    mounts = " && ".join(
        f"sudo mkdir -p {MOUNT_ROOT}/{b} && sudo chown \"$USER\" "
        f"{MOUNT_ROOT}/{b} && (mountpoint -q {MOUNT_ROOT}/{b} || gcsfuse "
        f"--implicit-dirs {b} {MOUNT_ROOT}/{b})" for b in buckets)
    # TPU VM images ship Python 3.10; vgg_jax needs >= 3.11: uv fetches it.
    venv = (f"cd ~/{REMOTE_DIR} && {{ command -v uv >/dev/null || curl "
            "-LsSf https://astral.sh/uv/install.sh | sh >/dev/null; } && "
            "export PATH=$HOME/.local/bin:$PATH && { [ -x .venv/bin/python ]"
            " || uv venv -q --python 3.11 .venv; }")
    install = (f"uv pip install -q --python .venv/bin/python -e . "
               f"{shlex.quote(jax_pin)}")
    url, ref = self.source()
    if self.a.archive:
      # This checkout's committed tree, copied to every worker.
      tarball = str(launchlib.REPO_ROOT / "dist" / f"vgg_jax-{ref[:12]}.tar.gz")
      self.r.run(["mkdir", "-p", str(launchlib.REPO_ROOT / "dist")])
      self.r.run(["git", "-C", str(launchlib.REPO_ROOT), "archive",
                  "--format=tar.gz", "-o", tarball, ref])
      self.scp(tarball, "/tmp/vgg_jax_src.tar.gz")
      code = (f"rm -rf ~/{REMOTE_DIR}.new && mkdir -p ~/{REMOTE_DIR}.new && "
              f"tar -xzf /tmp/vgg_jax_src.tar.gz -C ~/{REMOTE_DIR}.new && "
              f"{{ [ ! -d ~/{REMOTE_DIR}/.venv ] || mv ~/{REMOTE_DIR}/.venv "
              f"~/{REMOTE_DIR}.new/; }} && rm -rf ~/{REMOTE_DIR} && mv "
              f"~/{REMOTE_DIR}.new ~/{REMOTE_DIR} && {venv} && {install}")
    else:
      code = (f"{{ [ -d ~/{REMOTE_DIR}/.git ] || git clone -q "
              f"{shlex.quote(url)} ~/{REMOTE_DIR}; }} && cd ~/{REMOTE_DIR} "
              f"&& git fetch -q origin && git checkout -q "
              f"{shlex.quote(ref)} && {venv} && {install}")
    self.ssh("all", f"set -e; {GCSFUSE_INSTALL}; {mounts}; {code}")

  def start(self) -> None:
    """The same training command on every worker, detached from ssh."""
    inner = (f"{shlex.join(self.train_argv())} > ~/{LOG_DIR}/run.log 2>&1; "
             f"echo $? > ~/{LOG_DIR}/exit_code")
    self.ssh("all", f"cd ~/{REMOTE_DIR} && mkdir -p ~/{LOG_DIR} && rm -f "
             f"~/{LOG_DIR}/exit_code && nohup bash -c {shlex.quote(inner)} "
             f"> /dev/null 2>&1 &")

  def stream(self) -> int:
    """Worker 0's log until its run ends; that run's exit code (255: ssh
    lost, e.g. the TPU was preempted)."""
    r = self.ssh("0", f"tail -n +1 -F ~/{LOG_DIR}/run.log & t=$!; while [ ! "
                 f"-f ~/{LOG_DIR}/exit_code ]; do sleep 15; done; sleep 2; "
                 f"kill $t; exit \"$(cat ~/{LOG_DIR}/exit_code)\"",
                 check=False)
    return r.returncode

  def final_reason(self) -> str | None:
    """``stopped_by`` of metrics.jsonl's last "final" line (None: none)."""
    r = self.r.run(["gcloud", "storage", "cat",
                    self.a.workdir.rstrip("/") + "/metrics.jsonl"],
                   check=False, capture=True)
    reason = None
    for line in r.stdout.splitlines():
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a preemption
      if rec.get("kind") == "final":
        reason = rec.get("stopped_by")
    return reason

  def collect(self) -> None:
    dest = self.a.workdir.rstrip("/") + "/launch_logs/"
    self.ssh("all", f"gcloud storage cp ~/{LOG_DIR}/run.log "
             f"{shlex.quote(dest)}\"run_$(hostname).log\"", check=False)
    pathlib.Path(self.a.logs_dir).mkdir(parents=True, exist_ok=True) \
        if not self.r.dry_run else None
    self.r.run(["gcloud", "storage", "cp", "-r", dest, self.a.logs_dir],
               check=False)

  def delete(self) -> None:
    self.r.run(["gcloud", "compute", "tpus", "queued-resources", "delete",
                self.qr, *self._loc(), "--force", "--quiet"], check=False)

  def outcome(self, exit_code: int) -> str:
    """"done", "preempted" or "failed", after one run."""
    reason = self.final_reason()
    if reason in DONE_REASONS and exit_code in (0, 255):
      return "done"
    if reason == "preemption" and exit_code in (0, 255):
      return "preempted"
    if self.state() != "ACTIVE":
      return "preempted"
    if exit_code == 255:  # ssh lost but the TPU is fine: keep waiting
      return "detached"
    return "failed"

  def train(self) -> int:
    self.preflight()
    restarts = 0
    if self.state() != "ACTIVE":
      self.create()
    self.setup()
    self.start()
    while True:
      code = self.stream()
      out = self.outcome(code)
      self.r.note(f"run ended: exit {code}, outcome {out}")
      if out == "detached":
        continue
      if out == "done":
        self.collect()
        if not self.a.keep:
          self.delete()
        return 0
      if out == "failed":
        self.collect()
        print(f"training failed on a healthy TPU (worker 0 exit {code}); "
              f"not retrying. Logs: {self.a.logs_dir}; the TPU is kept for "
              f"inspection: `{sys.argv[0]} delete ...` when done",
              file=sys.stderr)
        return 1
      restarts += 1
      if restarts > self.a.max_restarts:
        print(f"preempted {restarts} times (--max-restarts "
              f"{self.a.max_restarts}); stopping. Run `train` again to go "
              "on: it resumes from the workdir", file=sys.stderr)
        self.delete()
        return 3
      self.r.note(f"preempted: re-creating the TPU (restart {restarts} of "
                  f"at most {self.a.max_restarts}); training resumes from "
                  f"{self.a.workdir}")
      self.delete()
      self.create()
      self.setup()
      self.start()


class DryRunWorld:
  """A dry run's answers: no TPU until ``create``, then ACTIVE; the run
  finishes (metrics.jsonl's final line says total_steps)."""

  def __init__(self):
    self.created = False

  def __call__(self, argv: list[str]) -> Result | None:
    if "queued-resources" in argv and "create" in argv:
      self.created = True
    if "queued-resources" in argv and "describe" in argv:
      return Result(0, "ACTIVE\n") if self.created else Result(1, "")
    if argv[:3] == ["gcloud", "storage", "cat"]:
      return Result(0, json.dumps({"step": 1, "kind": "final",
                                   "stopped_by": "total_steps"}) + "\n")
    return None


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  p.add_argument("--dry-run", action="store_true",
                 help="print every command instead of running it")
  p.add_argument("action", choices=["train", "preflight", "create", "setup",
                                    "run", "collect", "delete", "status"])
  p.add_argument("--name", required=True, help="TPU (node) name")
  p.add_argument("--queued-resource", help="default: NAME-qr")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", help="default: gcloud's configured project")
  p.add_argument("--accelerator-type", required=True,
                 help="gcloud's, e.g. v5litepod-64, v4-32, v5p-128, v6e-256")
  p.add_argument("--topology", help="AOT topology (default: derived from "
                 "--accelerator-type, e.g. v5litepod-64 -> v5e:8x8)")
  p.add_argument("--runtime-version")
  p.add_argument("--spot", action="store_true")
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True, help="gs://BUCKET/PATH")
  p.add_argument("--data-dir", help="gs://BUCKET/PATH of the TFDS data; "
                 "passed as --config.data.data_dir (mounted)")
  src = p.add_mutually_exclusive_group()
  src.add_argument("--repo-url", help="git URL the workers clone "
                   "(default: `git remote get-url origin`)")
  src.add_argument("--archive", action="store_true",
                   help="copy this checkout's committed tree (git archive "
                   "REF) to every worker instead of cloning")
  p.add_argument("--ref", help="commit to check out (default: this "
                 "checkout's HEAD)")
  p.add_argument("--max-restarts", type=int, default=20)
  p.add_argument("--keep", action="store_true",
                 help="do not delete the TPU when training is done")
  p.add_argument("--skip-aot", action="store_true")
  p.add_argument("--logs-dir", default="launch_logs")
  p.add_argument("--poll-s", type=int, default=30)
  p.add_argument("--create-timeout", type=int, default=6 * 3600)
  return p


def main(argv=None, runner: Runner | None = None) -> int:
  args = launchlib.parse_with_overrides(parser(), argv)
  runner = runner or Runner(dry_run=args.dry_run,
                            answers=DryRunWorld() if args.dry_run else None)
  try:
    pod = Pod(args, runner)
    if args.action == "train":
      return pod.train()
    if args.action == "run":
      pod.start()
      return pod.stream()
    if args.action == "status":
      print(pod.state())
      return 0
    getattr(pod, args.action)()
    return 0
  except (ValueError, launchlib.CommandFailed) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
