"""The report: a table laid out like the paper's Tables 3-6."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from vgg_jax import files
from vgg_jax.eval.counting import errors_of
from vgg_jax.eval.posteriors import SplitPosteriors, combine


METHOD_NAMES = {"centre": "centre crop", "dense": "dense",
                "multicrop": "multi-crop",
                "dense+multicrop": "multi-crop & dense",
                "tencrop": "10-crop (AlexNet)"}


def _fmt_scale(s) -> str:
  if s is None:
    return "?"
  if isinstance(s, (list, tuple)):
    return f"[{s[0]};{s[1]}]"
  return str(s)


def report_table(rows: list[dict]) -> str:
  """Markdown table: ConvNet | train S | test Q | method | top-1 | top-5."""
  lines = ["| ConvNet config. | train (S) | test (Q) | method | "
           "top-1 val. error (%) | top-5 val. error (%) |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['net']} | {_fmt_scale(r['train_scale'])} | "
        f"{','.join(str(q) for q in r['scales'])} | "
        f"{METHOD_NAMES.get(r['protocol'], r['protocol'])} | "
        f"{100 * r['top1_error']:.1f} | {100 * r['top5_error']:.1f} |")
  return "\n".join(lines)


def build_report(results: list[SplitPosteriors], protocol: str,
                 scales_per_model: list[list[int]], *, split_desc: str
                 ) -> dict[str, Any]:
  rows = []
  for r, qs in zip(results, scales_per_model):
    err = errors_of(combine([r], protocol, [qs]), r.labels)
    rows.append({"net": r.meta.get("net", "?"), "model": r.meta.get("path"),
                 "train_scale": r.meta.get("train_scale"), "scales": qs,
                 "protocol": protocol, **err})
  if len(results) > 1:
    err = errors_of(combine(results, protocol, scales_per_model),
                    results[0].labels)
    all_q = sorted({q for qs in scales_per_model for q in qs})
    rows.append({"net": " & ".join(r["net"] for r in rows) + " (ensemble)",
                 "model": None, "train_scale": None, "scales": all_q,
                 "protocol": protocol, **err})
  failed = {}
  for r in results:
    failed.update(r.failed)
  first = results[0]
  return {
      "split": split_desc, "protocol": protocol,
      "num_examples": first.num_examples,
      "num_split_examples": first.meta.get("num_split_examples",
                                           first.num_examples),
      "num_evaluated": first.num_examples - len(failed),
      "num_failed": len(failed),
      "failed": [{"name": k, "reason": v} for k, v in sorted(failed.items())],
      "rows": rows,
  }


def report_markdown(report: dict[str, Any]) -> str:
  lines = [f"# Evaluation: {report['split']}", "",
           report_table(report["rows"]), "",
           f"Examples: {report['num_examples']} of "
           f"{report['num_split_examples']} in the split; "
           f"{report['num_evaluated']} evaluated, {report['num_failed']} "
           "could not be decoded (counted as errors)."]
  if report["failed"]:
    lines += ["", "Could not be decoded:"]
    lines += [f"- {f['name']}: {f['reason']}" for f in report["failed"]]
  return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output: str | os.PathLike) -> None:
  output = pathlib.Path(output)
  text = json.dumps(report, indent=2) + "\n"
  files.atomic_write(output / "results.json",
                     lambda f: f.write(text.encode()))
  md = report_markdown(report)
  files.atomic_write(output / "results.md", lambda f: f.write(md.encode()))


