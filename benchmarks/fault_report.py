"""Sums the fault tests' outcomes into docs/reliability.md's figures.

    VGG_JAX_FAULT_REPORT=/tmp/faults.jsonl python -m pytest tests/faults
    python benchmarks/fault_report.py /tmp/faults.jsonl

Each passing fault test appends one JSON line (tests/faults/_fault_helpers.
report); a failing test appends nothing, so a fault whose promise broke is
not counted as survived.
"""

from __future__ import annotations

import collections
import json
import sys

FIGURES = ("faults_injected", "runs_survived", "examples_lost",
           "checkpoints_corrupted", "bad_inputs_refused")


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  records = [json.loads(l) for l in open(argv[0]) if l.strip()]
  totals = collections.Counter()
  by_kind = collections.defaultdict(collections.Counter)
  for r in records:
    kind = r["test"].split(":")[0]
    by_kind[kind]["tests"] += 1
    for f in FIGURES:
      totals[f] += int(r.get(f, 0))
      by_kind[kind][f] += int(r.get(f, 0))
  print("| fault | tests | " + " | ".join(f.replace("_", " ")
                                          for f in FIGURES) + " |")
  print("|---" * (len(FIGURES) + 2) + "|")
  for kind in sorted(by_kind):
    c = by_kind[kind]
    print(f"| {kind} | {c['tests']} | "
          + " | ".join(str(c[f]) for f in FIGURES) + " |")
  print(f"| **all** | {len(records)} | "
        + " | ".join(f"**{totals[f]}**" for f in FIGURES) + " |")


if __name__ == "__main__":
  main()
