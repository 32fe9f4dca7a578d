"""What the launchers share: running (or, with --dry-run, printing) commands.

Every command a launcher runs goes through ``Runner.run`` as an argument
list; ``--dry-run`` prints each as one shell-quoted line (``+ gcloud ...``)
and runs nothing, so what a launch would do can be read, and tested, without
a cloud or a cluster.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shlex
import subprocess
import sys
from typing import Callable, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Result:
  returncode: int
  stdout: str = ""


class Runner:
  """Runs argument lists; in dry-run mode prints them instead.

  ``answers(argv) -> Result | None`` gives a dry run's result for a query
  (e.g. the state of a TPU); unanswered commands "succeed" with no output.
  """

  def __init__(self, dry_run: bool = False, out=None,
               answers: Callable[[list[str]], Result | None] | None = None):
    self.dry_run = dry_run
    self.out = out or sys.stdout
    self.answers = answers
    self.commands: list[list[str]] = []

  def run(self, argv: Sequence[str], *, capture: bool = False,
          check: bool = True, stdin: str | None = None) -> Result:
    argv = [str(a) for a in argv]
    self.commands.append(argv)
    if self.dry_run:
      line = "+ " + shlex.join(argv)
      if stdin is not None:
        line += " <<'EOF'\n" + stdin + ("" if stdin.endswith("\n") else "\n") \
            + "EOF"
      print(line, file=self.out, flush=True)
      r = self.answers(argv) if self.answers else None
      r = r or Result(0, "")
    else:
      print("+ " + shlex.join(argv), file=sys.stderr, flush=True)
      p = subprocess.run(argv, input=stdin, text=True,
                         stdout=subprocess.PIPE if capture else None)
      r = Result(p.returncode, p.stdout or "")
    if check and r.returncode != 0:
      raise CommandFailed(argv, r.returncode)
    return r

  def note(self, message: str) -> None:
    """A line for the person (to stderr; in a dry run, as a comment)."""
    if self.dry_run:
      print(f"# {message}", file=self.out, flush=True)
    else:
      print(message, file=sys.stderr, flush=True)


class CommandFailed(RuntimeError):

  def __init__(self, argv, returncode):
    super().__init__(f"command failed (exit {returncode}): "
                     f"{shlex.join(argv)}")
    self.argv, self.returncode = argv, returncode


def train_command(config: str, workdir: str, overrides: Sequence[str], *,
                  python: str = ".venv/bin/python",
                  extra_flags: Sequence[str] = ()) -> list[str]:
  """``python -m vgg_jax.main --config C --workdir W [flags] [overrides]``."""
  for o in overrides:
    if not o.startswith("--config."):
      raise ValueError(f"override {o!r} is not of the form "
                       "--config.FIELD=VALUE")
  return [python, "-m", "vgg_jax.main", "--config", config, "--workdir",
          workdir, *extra_flags, *overrides]


def git_remote_url(runner: Runner | None = None) -> str:
  """``git remote get-url origin`` of this checkout; a clear error if none."""
  p = subprocess.run(["git", "-C", str(REPO_ROOT), "remote", "get-url",
                      "origin"], capture_output=True, text=True)
  url = p.stdout.strip()
  if p.returncode or not url:
    raise ValueError("this checkout has no 'origin' remote: pass --repo-url "
                     "URL (a git URL every worker can clone) or --archive (copy "
                     "this checkout's committed tree to every worker)")
  return url


def git_head() -> str:
  p = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                     capture_output=True, text=True)
  if p.returncode:
    raise ValueError("cannot read this checkout's commit (git rev-parse "
                     "HEAD failed): pass --ref")
  return p.stdout.strip()


def start(runner: Runner, argv: Sequence[str], log_path=None):
  """Start ``argv`` without waiting (a dry run prints it, returns None).

  Output goes to ``log_path`` if given, else to this terminal.
  """
  argv = [str(a) for a in argv]
  runner.commands.append(argv)
  suffix = f" > {shlex.quote(str(log_path))} 2>&1" if log_path else ""
  if runner.dry_run:
    print("+ " + shlex.join(argv) + suffix + " &", file=runner.out,
          flush=True)
    return None
  print("+ " + shlex.join(argv) + suffix + " &", file=sys.stderr, flush=True)
  out = open(log_path, "w") if log_path else None  # pylint: disable=consider-using-with
  return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT
                          if out else None)


def parse_with_overrides(parser, argv=None):
  """Parse ``argv``; everything after ``--`` becomes ``args.overrides``.

  (``--config.FIELD=VALUE`` overrides for vgg_jax.main, passed through
  untouched, spaces and quotes included.)
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" in argv:
    i = argv.index("--")
    argv, overrides = argv[:i], argv[i + 1:]
  else:
    overrides = []
  args = parser.parse_args(argv)
  args.overrides = overrides
  return args
