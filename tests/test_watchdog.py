"""A hung collective becomes an error after a bounded time (vgg_jax/watchdog.py).

Unit tests on a fake clock, then the faults for real on two processes of
``python -m vgg_jax.main`` (2 x 2 CPU devices, gloo):

* a host dies (SIGKILL one process): the other exits with an error within a
  bounded time instead of waiting in its all-reduce;
* a peer is stuck (SIGSTOP) and the survivor gets SIGTERM (a preemption):
  it exits, with an error, within the configured limit, instead of waiting
  for a step that never comes.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from vgg_jax import watchdog

REPO = pathlib.Path(__file__).absolute().parents[1]


class FakeClock:

  def __init__(self):
    self.t = 1000.0

  def __call__(self):
    return self.t


def test_fixed_limit_after_the_first_step():
  clock = FakeClock()
  dog = watchdog.Watchdog(20.0, first_s=300.0, clock=clock)
  # Compilation of the first step: the generous first limit applies.
  clock.t += 200.0
  assert dog.check() is None
  clock.t += 101.0
  assert "first training step" in dog.check()
  dog.beat("step 1 (its all-reduce) or the next batch")
  clock.t += 19.0
  assert dog.check() is None
  clock.t += 2.0
  message = dog.check()
  assert message is not None
  assert "21 s" in message and "step 1 (its all-reduce)" in message
  assert "limit 20 s" in message and "collective_timeout_s" in message
  assert str(watchdog.HUNG_EXIT_STATUS) in message


def test_adaptive_limit_is_factor_times_the_slowest_gap_at_least_floor():
  clock = FakeClock()
  dog = watchdog.Watchdog(None, floor_s=30.0, factor=10.0, first_s=100.0,
                          clock=clock)
  assert dog.limit() == 100.0
  clock.t += 500.0  # compilation: not counted as a step
  dog.beat("step 1")
  assert dog.limit() == 30.0
  for gap in (1.0, 2.0, 7.0, 3.0):
    clock.t += gap
    dog.beat("next")
  assert dog.limit() == 70.0
  clock.t += 69.0
  assert dog.check() is None
  clock.t += 2.0
  assert "limit 70 s" in dog.check()


def test_sigterm_shortens_the_limit_until_the_loop_moves():
  clock = FakeClock()
  dog = watchdog.Watchdog(600.0, grace_s=15.0, clock=clock)
  dog.beat("step 1")
  dog.notice_signal()
  assert dog.signal_noticed
  clock.t += 10.0
  assert dog.check() is None
  clock.t += 6.0
  message = dog.check()
  assert message is not None and message.startswith("SIGTERM received 16 s")
  # The loop reached a step boundary: it will see the request itself.
  dog.beat("step 2")
  assert not dog.signal_noticed and dog.check() is None


def test_bad_limit_is_a_clear_error():
  with pytest.raises(ValueError, match="collective_timeout_s must be > 0"):
    watchdog.Watchdog(0.0)


def test_thread_calls_on_hang_and_stops_when_beaten():
  fired = []
  event = threading.Event()

  def on_hang(message):
    fired.append(message)
    event.set()

  # Kept alive by beats, then left alone.
  with watchdog.Watchdog(0.3, first_s=0.3, poll_s=0.02,
                         on_hang=on_hang) as dog:
    for _ in range(10):
      dog.beat("a step")
      time.sleep(0.05)
    assert not fired
    assert event.wait(5.0)
  assert dog.fired and "waiting for a step" in fired[0]


def test_an_evaluation_longer_than_the_limit_is_not_taken_for_a_hang():
  """A whole validation split takes far longer than a step: evaluation beats
  the running loop's watchdog per batch, so only a batch that never comes
  (not a long split) reaches the limit."""
  import numpy as np
  from flax import nnx
  from vgg_jax.eval.classifier import evaluate_classifier
  from vgg_jax.models import create_model
  clock = FakeClock()
  fired = []
  dog = watchdog.Watchdog(None, floor_s=300.0, factor=10.0, clock=clock,
                          on_hang=fired.append)
  model = create_model("A", num_classes=10, width_mult=0.0625, fc_width=16,
                       head_window=1, in_channels=1, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)

  def batches():  # each batch "takes" 200 s: 1,200 s in all, limit 300 s
    for _ in range(6):
      clock.t += 200.0
      yield {"image": rng.normal(size=(4, 32, 32, 1)).astype(np.float32),
             "label": rng.integers(0, 10, 4), "mask": np.ones(4, np.int32)}

  with dog:
    dog.beat("step 1")
    clock.t += 1.0
    dog.beat("evaluation at step 1")  # slowest gap 1 s: the limit is 300 s
    res = evaluate_classifier(model, batches())
    assert res["num_examples"] == 24
    assert dog.check() is None
    # Then nothing for longer than the (adaptive) limit: a hang.
    clock.t += dog.limit() + 1.0
    assert "no training progress" in (dog.check() or "")
  assert watchdog._active is None  # pylint: disable=protected-access
  watchdog.heartbeat("outside a loop: nothing to beat")  # a no-op


@pytest.mark.parametrize("multi_process", [False, True])
def test_sigterm_during_start_up_is_kept_or_passed_on(multi_process):
  """vgg_jax/preemption.py with the watchdog's SIGTERM story: a SIGTERM
  during start-up is remembered on one process (the loop saves after its
  first step); a multi-process run hands SIGTERM to JAX before
  initialising, and one that already came is passed on (the process ends by
  it), never swallowed."""
  code = (
      "import os, signal\n"
      "from vgg_jax import preemption\n"
      "preemption.install()\n"
      "os.kill(os.getpid(), signal.SIGTERM)\n"
      "assert preemption.received()\n"
      + ("preemption.uninstall()\n" if multi_process else "")
      + "print('still running')\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, timeout=120,
                        env={**os.environ, "PYTHONPATH": str(REPO)})
  if multi_process:
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert "still running" not in proc.stdout
  else:
    assert proc.returncode == 0, proc.stderr
    assert "still running" in proc.stdout


def test_signal_wakeup_tells_the_watchdog_of_sigterm():
  # Python's C-level handler writes the signal number to the wakeup fd at
  # once (the Python handler itself waits for the main thread); the reader
  # thread tells the watchdog.  The main thread here sleeps in the wakeup
  # test's own loop, never calling the watchdog.
  old = signal.signal(signal.SIGTERM, lambda *a: None)
  dog = watchdog.Watchdog(600.0)
  try:
    with watchdog.SignalWakeup(dog):
      assert not dog.signal_noticed
      os.kill(os.getpid(), signal.SIGTERM)
      deadline = time.monotonic() + 5.0
      while not dog.signal_noticed and time.monotonic() < deadline:
        time.sleep(0.01)
      assert dog.signal_noticed
  finally:
    signal.signal(signal.SIGTERM, old)
  # Other signals are not a preemption.
  old = signal.signal(signal.SIGUSR1, lambda *a: None)
  dog = watchdog.Watchdog(600.0)
  try:
    with watchdog.SignalWakeup(dog):
      os.kill(os.getpid(), signal.SIGUSR1)
      time.sleep(0.3)
      assert not dog.signal_noticed
  finally:
    signal.signal(signal.SIGUSR1, old)


# ----------------------------------------------------------------------------
# The faults, on the real command.

# Width-reduced, effectively endless (stopped by the fault), a short limit.
LIMIT_S = 20
RUN = ["--config.model.width_mult=0.0625", "--config.model.fc_width=32",
       "--config.batch_size=16", "--config.eval_batch_size=16",
       "--config.total_steps=1000000", "--config.eval_every_steps=0",
       "--config.log_every_steps=1", "--config.checkpoint_every_steps=0",
       f"--config.collective_timeout_s={LIMIT_S}"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_pair(workdir, heartbeat_s=60):
  """The launch script's two processes, started here to signal each one."""
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             VGG_JAX_CPU_COLLECTIVES="gloo")
  procs = []
  for i in range(2):
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "vgg_jax.main", "--config",
         str(REPO / "experiments" / "fashion_mnist.py"), "--workdir",
         str(workdir), "--coordinator_address", f"127.0.0.1:{port}",
         "--num_processes", "2", "--process_id", str(i),
         f"--heartbeat_timeout_s={heartbeat_s}"] + RUN,
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True))
  return procs


def _wait_for_training(workdir, procs, step=3, timeout=400):
  deadline = time.monotonic() + timeout
  logs = [workdir / f"log_host{i}.txt" for i in range(2)]
  while time.monotonic() < deadline:
    if all(p.poll() is None for p in procs) and all(
        f.exists() and f"step {step}/" in f.read_text() for f in logs):
      return
    if any(p.poll() is not None for p in procs):
      break
    time.sleep(0.5)
  for p in procs:
    p.kill()
  outs = [p.communicate()[0][-3000:] for p in procs]
  pytest.fail(f"training did not reach step {step}:\n" + "\n".join(outs))


def _kill_all(procs):
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.wait()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_host_dies_the_other_exits_with_an_error(tmp_path):
  procs = _start_pair(tmp_path)
  try:
    _wait_for_training(tmp_path, procs)
    os.kill(procs[1].pid, signal.SIGKILL)
    t0 = time.monotonic()
    out, _ = procs[0].communicate(timeout=LIMIT_S + 120)
    elapsed = time.monotonic() - t0
  finally:
    _kill_all(procs)
  assert procs[0].returncode != 0, out[-3000:]
  # Bounded: the limit (or the coordination service's verdict) plus the
  # time a loaded 2-core machine takes to notice.
  assert elapsed < LIMIT_S + 90, elapsed
  lowered = out.lower()
  assert any(s in lowered for s in (
      "collective is hung", "another process died", "task 1", "process 1",
      "connection closed", "gloo")), out[-3000:]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_ends_a_process_stuck_in_a_collective(tmp_path):
  # Heartbeats far off: only the watchdog can end process 0.
  procs = _start_pair(tmp_path, heartbeat_s=600)
  try:
    _wait_for_training(tmp_path, procs)
    os.kill(procs[1].pid, signal.SIGSTOP)  # alive but stuck: no reset
    time.sleep(2.0)
    os.kill(procs[0].pid, signal.SIGTERM)
    t0 = time.monotonic()
    out, _ = procs[0].communicate(timeout=LIMIT_S + 120)
    elapsed = time.monotonic() - t0
  finally:
    if procs[1].poll() is None:
      os.kill(procs[1].pid, signal.SIGKILL)
    _kill_all(procs)
  assert procs[0].returncode == watchdog.HUNG_EXIT_STATUS, out[-3000:]
  assert elapsed < LIMIT_S + 60, elapsed
  assert "collective is hung" in out or "collective is stuck" in out, (
      out[-3000:])
