"""launch/: the commands each launcher would run, checked without a cloud.

Every launcher prints its commands with ``--dry-run``; these tests parse
that output back (``shlex``) and check worker selection, flags, that an
override with spaces reaches ``vgg_jax.main`` as one argument, and the TPU
launcher's resume loop against a scripted cloud (preemptions, a finished
run, a failing run, too many preemptions).
"""

from __future__ import annotations

import importlib.util
import io
import json
import pathlib
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"


def load(name):
  spec = importlib.util.spec_from_file_location(f"launch_{name}",
                                                LAUNCH / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(LAUNCH))
  spec.loader.exec_module(mod)
  return mod


tpu_pod, slurm, ssh_cluster = load("tpu_pod"), load("slurm"), load(
    "ssh_cluster")
launchlib = sys.modules["launchlib"]

SPACED = "--config.data.data_dir=/data/my images"
TPU_ARGS = ["--name", "vgg-d", "--zone", "us-east5-a", "--project", "proj",
            "--accelerator-type", "v5litepod-64", "--config",
            "experiments/configD.py", "--workdir", "gs://bkt/wd/D",
            "--repo-url", "https://example.org/vgg_jax.git", "--ref", "abc123",
            "--skip-aot"]


def argv_of(line: str) -> list[str]:
  assert line.startswith("+ ")
  line = line[2:].split(" <<'EOF'")[0]
  return shlex.split(line.rstrip(" &"))


def remote(argv: list[str]) -> str:
  return argv[argv.index("--command") + 1]


def ssh_lines(lines, worker):
  return [argv_of(l) for l in lines
          if l.startswith("+ gcloud compute tpus tpu-vm ssh")
          and f"--worker={worker}" in l]


# --- Cloud TPU ---------------------------------------------------------------


def tpu_dry(argv, world=None):
  out = io.StringIO()
  runner = launchlib.Runner(dry_run=True, out=out,
                            answers=world or tpu_pod.DryRunWorld())
  rc = tpu_pod.main(argv, runner=runner)
  return rc, out.getvalue().splitlines(), runner.commands


def test_tpu_train_dry_run_commands():
  rc, lines, cmds = tpu_dry(["--dry-run", "train", "--spot", *TPU_ARGS,
                             "--data-dir", "gs://bkt/tfds", "--",
                             "--config.model.dtype=bfloat16", SPACED])
  assert rc == 0
  create = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus",
                                         "queued-resources", "create"]]
  assert len(create) == 1
  c = create[0]
  assert c[5] == "vgg-d-qr" and c[c.index("--node-id") + 1] == "vgg-d"
  assert c[c.index("--accelerator-type") + 1] == "v5litepod-64"
  assert c[c.index("--runtime-version") + 1] == "v2-alpha-tpuv5-lite"
  assert "--spot" in c and c[c.index("--project") + 1] == "proj"
  # Set-up and the run go to every worker, the log stream to worker 0 only.
  setup, start = [remote(a) for a in ssh_lines(lines, "all")][:2]
  assert "git clone -q https://example.org/vgg_jax.git" in setup
  assert "git checkout -q abc123" in setup and "OWNER" not in setup
  assert "gcsfuse --implicit-dirs bkt /mnt/gcs/bkt" in setup
  assert "'jax[tpu]==" in setup
  # The training command, unwrapped from ssh, then bash -c.
  inner = shlex.split(start)
  bash_c = inner[inner.index("-c") + 1]
  train = shlex.split(bash_c.split(" > ")[0])
  assert train[:3] == [".venv/bin/python", "-m", "vgg_jax.main"]
  assert train[train.index("--workdir") + 1] == "/mnt/gcs/bkt/wd/D"
  assert "--multihost" in train
  assert SPACED in train  # one argument, spaces intact
  assert "--config.model.dtype=bfloat16" in train
  assert "--config.data.data_dir=/mnt/gcs/bkt/tfds" not in train  # user's wins
  stream = ssh_lines(lines, "0")
  assert len(stream) == 1 and "tail -n +1 -F" in remote(stream[0])
  # Finished: logs collected, TPU deleted.
  assert any(c[:4] == ["gcloud", "storage", "cp", "-r"] for c in cmds)
  assert cmds[-1][:5] == ["gcloud", "compute", "tpus", "queued-resources",
                          "delete"]


def test_tpu_data_dir_becomes_mounted_override():
  rc, lines, _ = tpu_dry(["train", *TPU_ARGS, "--data-dir", "gs://data/tfds"])
  assert rc == 0
  start = remote(ssh_lines(lines, "all")[1])
  assert "--config.data.data_dir=/mnt/gcs/data/tfds" in start
  assert "gcsfuse --implicit-dirs data /mnt/gcs/data" in remote(
      ssh_lines(lines, "all")[0])


class ScriptedCloud:
  """A cloud whose TPU is preempted during the first ``preemptions`` runs
  (the VM vanishes: ssh exits 255, the queued resource is SUSPENDED, the
  run's last metrics line is cut); the next run ends with ``final`` (a
  stopped_by, None: no final line) and exit code ``exit_code``."""

  def __init__(self, preemptions=0, final="total_steps", exit_code=0):
    self.preemptions, self.final, self.exit_code = (preemptions, final,
                                                    exit_code)
    self.exists = self.preempted = False
    self.runs = 0

  def __call__(self, argv):
    R = launchlib.Result
    if "queued-resources" in argv and "create" in argv:
      self.exists, self.preempted = True, False
    elif "queued-resources" in argv and "delete" in argv:
      self.exists = False
    elif "queued-resources" in argv and "describe" in argv:
      if not self.exists:
        return R(1, "")
      return R(0, "SUSPENDED\n" if self.preempted else "ACTIVE\n")
    elif "--worker=0" in argv:  # the log stream ends with the run
      self.runs += 1
      self.preempted = self.runs <= self.preemptions
      return R(255 if self.preempted else self.exit_code, "")
    elif argv[:3] == ["gcloud", "storage", "cat"]:
      text = '{"step": 3, "kind": "train", "loss": 6.9}\n'
      if self.preempted:
        text += '{"step": 7, "kind": "tr'  # cut by the preemption
      elif self.final:
        text += json.dumps({"step": 9, "kind": "final",
                            "stopped_by": self.final}) + "\n"
      return R(0, text)
    return None


def count(cmds, *words):
  return sum(all(w in c for w in words) for c in cmds)


def test_resume_loop_recreates_after_preemptions():
  cloud = ScriptedCloud(preemptions=2)
  rc, lines, cmds = tpu_dry(["train", *TPU_ARGS], world=cloud)
  assert rc == 0
  assert count(cmds, "queued-resources", "create") == 3
  assert count(cmds, "--worker=0") == 3  # three runs, same command
  starts = [remote(c) for c in cmds if "--worker=all" in c and
            "nohup" in remote(c)]
  assert len(starts) == 3 and len(set(starts)) == 1
  # Deleted before each re-creation and at the end.
  assert count(cmds, "queued-resources", "delete") == 3
  assert any("preempted: re-creating" in l for l in lines)


def test_resume_loop_stops_after_max_restarts():
  cloud = ScriptedCloud(preemptions=5)
  rc, _, cmds = tpu_dry(["train", *TPU_ARGS, "--max-restarts", "2"],
                        world=cloud)
  assert rc == 3
  assert count(cmds, "queued-resources", "create") == 3
  assert cmds[-1][4] == "delete"


def test_resume_loop_does_not_retry_a_failing_run():
  cloud = ScriptedCloud(final=None, exit_code=1)
  rc, _, cmds = tpu_dry(["train", *TPU_ARGS], world=cloud)
  assert rc == 1
  assert count(cmds, "queued-resources", "create") == 1
  assert count(cmds, "queued-resources", "delete") == 0  # kept to inspect
  assert any(c[:4] == ["gcloud", "storage", "cp", "-r"] for c in cmds)


def test_resume_loop_plateau_is_done():
  cloud = ScriptedCloud(final="plateau")
  rc, _, cmds = tpu_dry(["train", *TPU_ARGS, "--keep"], world=cloud)
  assert rc == 0 and count(cmds, "queued-resources", "delete") == 0


def test_tpu_preflight_messages(capsys):
  class Broken(tpu_pod.DryRunWorld):
    def __call__(self, argv):
      if argv[:3] == ["gcloud", "storage", "ls"]:
        return launchlib.Result(1, "")
      if argv[:3] == ["gcloud", "storage", "cp"]:
        return launchlib.Result(1, "")
      return super().__call__(argv)
  args = [a for a in TPU_ARGS if a != "--skip-aot"]
  with pytest.raises(SystemExit) as e:
    tpu_dry(["preflight", *args, "--data-dir", "gs://bkt/tfds"],
            world=Broken())
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "the data at gs://bkt/tfds is not readable" in err
  assert "the workdir gs://bkt/wd/D is not writable" in err


def test_tpu_no_code_source_stops_before_the_pod(capsys, monkeypatch):
  """Without --repo-url, an origin remote or --archive, the workers would
  have no code: `train` stops at the preflight, before the queued resource
  is created (not at setup, with the pod already billing)."""
  def no_remote(runner=None):
    raise ValueError("this checkout has no 'origin' remote: pass --repo-url")
  monkeypatch.setattr(launchlib, "git_remote_url", no_remote)
  args = [a for a in TPU_ARGS if a not in ("--repo-url",
                                           "https://example.org/vgg_jax.git")]
  with pytest.raises(SystemExit) as e:
    tpu_dry(["train", *args])
  assert e.value.code == 2
  assert "no 'origin' remote" in capsys.readouterr().err
  # With --archive the same checkout is fine.
  rc, _, cmds = tpu_dry(["preflight", *args, "--archive"])
  assert rc == 0 and not any("queued-resources" in c for c in cmds)


def test_tpu_preflight_runs_the_aot_check():
  args = [a for a in TPU_ARGS if a != "--skip-aot"]
  _, _, cmds = tpu_dry(["preflight", *args, "--", SPACED])
  aot = [c for c in cmds if "vgg_jax.aot" in c][0]
  assert aot[aot.index("--topology") + 1] == "v5e:8x8"
  assert aot[-1] == SPACED


def test_tpu_preflight_stops_when_the_step_does_not_fit(capsys):
  """vgg_jax.aot exits 3 when the step compiles (or XLA refuses it) but
  does not fit the HBM: the preflight must stop there, saying so."""
  class TooBig(tpu_pod.DryRunWorld):
    def __call__(self, argv):
      if "vgg_jax.aot" in argv:
        return launchlib.Result(3, "")
      return super().__call__(argv)
  args = [a for a in TPU_ARGS if a != "--skip-aot"]
  with pytest.raises(SystemExit) as e:
    tpu_dry(["preflight", *args], world=TooBig())
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "does not fit v5e:8x8's HBM" in err and "lower batch_size" in err


def test_tpu_archive_instead_of_clone():
  args = [a for a in TPU_ARGS if a not in ("--repo-url",
                                           "https://example.org/vgg_jax.git")]
  rc, lines, cmds = tpu_dry(["setup", *args, "--archive"])
  assert rc == 0
  arch = [c for c in cmds if "archive" in c][0]
  assert arch[-1] == "abc123"
  scp = [c for c in cmds if "scp" in c][0]
  assert "--worker=all" in scp and scp[6] == "vgg-d:/tmp/vgg_jax_src.tar.gz"
  assert "git clone" not in remote(ssh_lines(lines, "all")[0])


@pytest.mark.parametrize("acc,topo", [
    ("v5litepod-256", "v5e:16x16"), ("v4-32", "v4:2x2x4"),
    ("v5p-128", "v5p:4x4x4"), ("v6e-8", "v6e:2x4"), ("v4-8", "v4:2x2x1")])
def test_accelerator_type_to_topology(acc, topo):
  assert tpu_pod.topology_for(acc) == topo


def test_tpu_bad_input():
  rc, _, _ = tpu_dry(["train", *[a if a != "gs://bkt/wd/D" else "/local/wd"
                                 for a in TPU_ARGS]])
  assert rc == 2
  rc, _, _ = tpu_dry(["train", *TPU_ARGS, "--", "--model=D"])
  assert rc == 2


def test_tpu_cli_dry_run_prints_without_running():
  p = subprocess.run([sys.executable, str(LAUNCH / "tpu_pod.py"),
                      "--dry-run", "delete", *TPU_ARGS],
                     capture_output=True, text=True, timeout=60)
  assert p.returncode == 0, p.stderr
  assert p.stdout.strip().startswith(
      "+ gcloud compute tpus queued-resources delete vgg-d-qr")


# --- SLURM -------------------------------------------------------------------


def slurm_script(argv):
  out = io.StringIO()
  runner = launchlib.Runner(dry_run=True, out=out)
  assert slurm.main(argv, runner=runner) == 0
  return out.getvalue(), runner.commands


def test_slurm_per_node():
  text, cmds = slurm_script(["--nodes", "4", "--gpus-per-node", "8",
                             "--config", "experiments/configD.py",
                             "--workdir", "/shared/wd", "--", SPACED])
  assert "#SBATCH --nodes=4" in text and "#SBATCH --ntasks-per-node=1" in text
  assert "#SBATCH --gpus-per-node=8" in text
  srun = [l for l in text.splitlines() if l.startswith("srun")][0]
  inner = shlex.split(srun)[-1]
  argv = shlex.split(inner.replace('"$VGG_JAX_COORDINATOR"', "HOST:12355")
                     .replace('"$SLURM_NTASKS"', "4")
                     .replace('"$SLURM_PROCID"', "2"))
  assert argv[:4] == ["exec", "env", "-u", "SLURM_JOB_ID"]
  assert SPACED in argv
  assert argv[argv.index("--num_processes") + 1] == "4"
  assert argv[argv.index("--process_id") + 1] == "2"
  assert cmds == [["sbatch", "--parsable"]]


def test_slurm_per_gpu_and_chain():
  text, cmds = slurm_script(["--nodes", "2", "--gpus-per-node", "4", "--per",
                             "gpu", "--chain", "3", "--config", "c.py",
                             "--workdir", "/w"])
  assert "#SBATCH --ntasks-per-node=4" in text
  srun = shlex.split([l for l in text.splitlines()
                      if l.startswith("srun")][0])
  assert srun[2:6] == [".venv/bin/python", "-m", "vgg_jax.main",
                       "--multihost"]
  assert cmds[0] == ["sbatch", "--parsable"]
  assert cmds[1] == ["sbatch", "--parsable", "--dependency=afterany:JOB1"]
  assert cmds[2][-1] == "--dependency=afterany:JOB2"


def test_slurm_script_is_valid_bash(tmp_path):
  text, _ = slurm_script(["--nodes", "2", "--config", "c.py", "--workdir",
                          "/w", "--", SPACED])
  script = text.split("<<'EOF'\n", 1)[1].rsplit("\nEOF", 1)[0]
  f = tmp_path / "job.sh"
  f.write_text(script)
  assert subprocess.run(["bash", "-n", str(f)]).returncode == 0


# --- ssh ---------------------------------------------------------------------


def test_ssh_cluster_one_process_per_host(tmp_path):
  hostfile = tmp_path / "hosts"
  hostfile.write_text("gpu-a  # first: the coordinator\ngpu-b\n\ngpu-c\n")
  out = io.StringIO()
  runner = launchlib.Runner(dry_run=True, out=out)
  assert ssh_cluster.main(["--hostfile", str(hostfile), "--config", "c.py",
                           "--workdir", "/shared/wd", "--", SPACED],
                          runner=runner) == 0
  lines = out.getvalue().splitlines()
  assert len(lines) == 3
  for i, (line, host) in enumerate(zip(lines, ["gpu-a", "gpu-b", "gpu-c"])):
    argv = argv_of(line.split(" > ")[0] if " > " in line else line)
    assert argv[argv.index("BatchMode=yes") + 1] == host
    train = shlex.split(argv[-1])
    assert train[:4] == ["cd", "vgg_jax", "&&", "exec"]
    assert train[train.index("--coordinator_address") + 1] == "gpu-a:12355"
    assert train[train.index("--num_processes") + 1] == "3"
    assert train[train.index("--process_id") + 1] == str(i)
    assert train[-1] == SPACED
  assert "launch_logs/host1.log" in lines[1]


def test_ssh_cluster_bad_hosts(capsys):
  runner = launchlib.Runner(dry_run=True, out=io.StringIO())
  assert ssh_cluster.main(["--hosts", "a,a", "--config", "c", "--workdir",
                           "w"], runner=runner) == 2
  assert "listed twice" in capsys.readouterr().err


# --- two processes on this machine -------------------------------------------


def test_local_multiprocess_dry_run(tmp_path):
  script = str(LAUNCH / "local_multiprocess_cpu.sh")
  p = subprocess.run(["bash", script, "--dry-run", "experiments/fashion_mnist.py",
                      str(tmp_path / "wd"), SPACED],
                     capture_output=True, text=True, timeout=60,
                     env={"PATH": "/usr/bin:/bin", "PORT": "23456"})
  assert p.returncode == 0, p.stderr
  cmds = [argv_of(l) for l in p.stdout.splitlines()]
  assert len(cmds) == 2 and not (tmp_path / "wd").exists()
  for i, c in enumerate(cmds):
    assert c[:3] == ["env", "XLA_FLAGS=--xla_force_host_platform_device_count=2",
                     "VGG_JAX_CPU_COLLECTIVES=gloo"]
    assert c[c.index("--process_id") + 1] == str(i)
    assert c[c.index("--num_processes") + 1] == "2"
    assert c[c.index("--coordinator_address") + 1] == "127.0.0.1:23456"
    assert c[-1] == SPACED  # one argument, spaces and all
  p = subprocess.run(["bash", script, "--dry-run", "experiments/fashion_mnist.py"],
                     capture_output=True, text=True, timeout=60)
  assert p.returncode == 2 and "usage:" in p.stderr
  p = subprocess.run(["bash", script, "--dry-run", "c.py", "wd", "--model=D"],
                     capture_output=True, text=True, timeout=60)
  assert p.returncode == 2 and "--config.FIELD=VALUE" in p.stderr
