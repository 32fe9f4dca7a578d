"""When does "divide the lr by 10 when validation accuracy stops improving" fire?

    python benchmarks/plateau_rule.py --curves 400 --show 12

(the table in docs/choices.md: ~3 minutes on 2 CPU cores; writes
benchmarks/results/plateau_rule.json, every rule's numbers).

Simulates plateau rules on noisy validation-accuracy curves shaped like the
paper's ImageNet training (§3.1: lr 1e-2, divided by 10 three times, 74
epochs, one evaluation per epoch) and measures how far each rule's drops land
from where a person reading the noiseless curve would drop.

Curve model (top-1 accuracy in points, one value per epoch t = 1, 2, ...).
Phase k runs at lr 1e-2 * 10^-k; in it the noiseless accuracy rises from its
value at the phase's start a_s towards an asymptote A_k:

    a(t) = A_k - (A_k - a_s) * (w e^{-u/tau_f} + (1-w) e^{-u/tau_s}),  u = t - t_k

(a fast and a slow time constant: the jump after a drop, then a long slow
climb).  A_0 = a_s + G_0 with G_0 ~ U(56, 62) from a_s = 0.1 (chance), and
after a drop A_{k+1} = a(t_drop) + G_{k+1} + 0.5 * (A_k - a(t_drop)): a drop
brings the phase's gain G (~10, ~2.5, ~0.7 points) and half of what the old
lr had left to give, so dropping early costs accuracy.  Time constants and gains are
drawn per curve (``sample_curve``).

Noise model: what the rule sees is a(t) + e_t + s_t where
  * s_t: binomial sampling noise of top-1 on 50,000 validation images
    (sd = sqrt(p(1-p)/50000), about 0.22 points at p = 0.6);
  * e_t: epoch-to-epoch training noise (the weights at the end of an epoch
    are one draw of SGD's wandering): AR(1) with correlation 0.5 between
    consecutive epochs, sd 0.4 points at lr 1e-2, scaled by sqrt(lr / 1e-2)
    (0.13 at 1e-3, 0.04 at 1e-4).  ``--train-noise`` scales it (the table
    also shows each rule at twice this noise).

Reference ("a person reading the noiseless curve"): drop after the first
epoch whose noiseless gain a(t) - a(t-1) is below a quarter of the standard
error of one evaluation, 0.25 * sqrt(p(1-p)/50000) (~0.05 points), i.e. when
the curve would need more than 4 epochs to climb one standard error; after
three drops the next such epoch stops the run.  With the curve model's
parameters the reference drops about three times in about 74 epochs (the
table's first row).

For every rule and every decision (three drops and the stop) the lag is the
decision's epoch minus the reference epoch *on the rule's own trajectory*
(the first epoch of that phase whose noiseless gain is below the threshold):
negative = early.  Columns: mean |lag|, the share of decisions at least 3
epochs early, the mean (signed) lag and the mean epoch of each drop and of
the stop, the final noiseless accuracy minus the reference run's (points),
and |lag| and the early share again at twice the training noise.

Rules: "max" tracks best = max(best, accuracy) on every evaluation (the old
rule: a sub-threshold gain still raises the bar); "accepted" moves best only
on a real improvement (accuracy >= best + min_delta; Keras' and PyTorch's
ReduceLROnPlateau); "mean3"/"ema" feed the accepted-best rule a smoothed
accuracy; "rel" takes min_delta relative to the error (1 - best).  A plateau
is ``patience`` consecutive evaluations without an improvement.

The chosen rule is also run through ``vgg_jax.optim.PlateauController``
itself, and must give the same decisions as this file's version of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

VAL_IMAGES = 50_000
MAX_EPOCHS = 160  # a rule that has not stopped by then is cut off here
GAIN_FRACTION_OF_SE = 0.25  # the reference: epoch gain < SE / 4
PHASE_GAINS = ((56.0, 62.0), (8.0, 11.0), (1.8, 3.2), (0.5, 1.0))
CARRY = 0.5  # share of the old lr's unfinished gain a drop still delivers


@dataclasses.dataclass(frozen=True)
class Phase:
  gain: float  # G_k (phase 0: A_0 - a_s)
  w: float  # share of the fast component
  tau_f: float
  tau_s: float


def sample_curve(rng: np.random.Generator) -> list[Phase]:
  return [
      Phase(rng.uniform(*PHASE_GAINS[0]), 0.6, rng.uniform(2, 4),
            rng.uniform(6.5, 9.5)),
      Phase(rng.uniform(*PHASE_GAINS[1]), 0.45, rng.uniform(0.7, 1.5),
            rng.uniform(8, 11)),
      Phase(rng.uniform(*PHASE_GAINS[2]), 0.2, rng.uniform(0.7, 1.5),
            rng.uniform(6, 10)),
      Phase(rng.uniform(*PHASE_GAINS[3]), 0.2, rng.uniform(0.7, 1.5),
            rng.uniform(4, 8)),
  ]


def sampling_se(p_points: float) -> float:
  p = min(max(p_points / 100, 1e-4), 1 - 1e-4)
  return 100 * math.sqrt(p * (1 - p) / VAL_IMAGES)


class Curve:
  """The noiseless accuracy of one run, phase by phase as the rule drops."""

  def __init__(self, phases: list[Phase]):
    self.phases = phases
    self.k = 0
    self.start_t, self.start_a = 0, 0.1
    self.asymptote = self.start_a + phases[0].gain

  def at(self, t: int) -> float:
    ph = self.phases[self.k]
    u = t - self.start_t
    left = (ph.w * math.exp(-u / ph.tau_f)
            + (1 - ph.w) * math.exp(-u / ph.tau_s))
    return self.asymptote - (self.asymptote - self.start_a) * left

  def drop(self, t: int) -> None:
    a = self.at(t)
    unfinished = self.asymptote - a
    self.k += 1
    self.start_t, self.start_a = t, a
    self.asymptote = a + self.phases[self.k].gain + CARRY * unfinished


# ---------------------------------------------------------------------------
# Rules.  Each sees one measured accuracy per epoch (points) and answers
# whether this evaluation completes a plateau.


class Rule:
  def __init__(self, patience: int, min_delta: float, tracking: str):
    self.patience, self.min_delta, self.tracking = patience, min_delta, tracking
    self.best = -math.inf
    self.bad = 0
    self.smooth = None
    self.window: list[float] = []

  @property
  def name(self) -> str:
    return f"{self.tracking} p={self.patience} d={self.min_delta:g}"

  def _value(self, acc: float) -> float:
    if self.tracking == "mean3":
      self.window = (self.window + [acc])[-3:]
      return sum(self.window) / len(self.window)
    if self.tracking == "ema":
      self.smooth = acc if self.smooth is None else (
          0.5 * self.smooth + 0.5 * acc)
      return self.smooth
    return acc

  def plateau(self, acc: float) -> bool:
    x = self._value(acc)
    if self.tracking == "rel":
      improved = (100 - x) <= (100 - self.best) * (1 - self.min_delta)
    else:
      improved = x >= self.best + self.min_delta
    if improved:
      self.best, self.bad = x, 0
      return False
    if self.tracking == "max":
      self.best = max(self.best, x)
    self.bad += 1
    if self.bad >= self.patience:
      self.bad = 0
      return True
    return False


class ReferenceRule:
  """Drops when the noiseless epoch gain falls below a quarter of the SE."""
  name = "reference (noiseless gain < SE/2)"


class ControllerRule:
  """vgg_jax.optim.PlateauController, accuracies as fractions."""

  def __init__(self, patience: int, min_delta: float):
    from vgg_jax import optim  # pylint: disable=g-import-not-at-top
    self.c = optim.PlateauController(initial_lr=1e-2, patience=patience,
                                     min_delta=min_delta / 100, max_drops=3)
    self.name = f"PlateauController p={patience} d={min_delta:g}"

  def plateau(self, acc: float) -> bool:
    return self.c.update(len(self.c.history), acc / 100) != "continue"


def reference_epoch(curve: Curve) -> int:
  """The first epoch of the current phase whose noiseless gain is < SE/4."""
  prev = curve.at(curve.start_t)
  for t in range(curve.start_t + 1, MAX_EPOCHS + 1):
    a = curve.at(t)
    if a - prev < GAIN_FRACTION_OF_SE * sampling_se(a):
      return t
    prev = a
  return MAX_EPOCHS


def run(phases: list[Phase], make_rule, rng: np.random.Generator | None,
        train_noise: float) -> dict:
  """One training run; rng None = noiseless (with the reference rule)."""
  curve = Curve(phases)
  rule = make_rule() if make_rule is not ReferenceRule else None
  decisions, lags = [], []
  ref = reference_epoch(curve)
  e = 0.0
  t = 0
  for t in range(1, MAX_EPOCHS + 1):
    a = curve.at(t)
    if rule is None:
      fire = t == ref
    else:
      sd = train_noise * math.sqrt(10.0 ** -curve.k)
      e = 0.5 * e + math.sqrt(1 - 0.25) * sd * rng.standard_normal()
      p = min(max(a / 100, 0.0), 1.0)
      measured = 100 * rng.binomial(VAL_IMAGES, p) / VAL_IMAGES + e
      fire = rule.plateau(measured)
    if fire:
      decisions.append(t)
      lags.append(t - ref)
      if len(decisions) == 4:
        break
      curve.drop(t)
      ref = reference_epoch(curve)
  else:
    # Never stopped: the missing decisions count as made at the cut-off.
    while len(decisions) < 4:
      decisions.append(MAX_EPOCHS)
      lags.append(MAX_EPOCHS - min(ref, MAX_EPOCHS))
      ref = MAX_EPOCHS
  return {"decisions": decisions, "lags": lags, "final": curve.at(t)}


def evaluate_rule(make_rule, curves, seed: int, train_noise: float,
                  reference_finals) -> dict:
  rng = np.random.default_rng(seed)
  runs = [run(ph, make_rule, rng, train_noise) for ph in curves]
  lags = np.array([r["lags"] for r in runs], float)
  dec = np.array([r["decisions"] for r in runs], float)
  finals = np.array([r["final"] for r in runs])
  return {
      "mean_abs_lag": float(np.abs(lags).mean()),
      "mean_lag": float(lags.mean()),
      "mean_lag_per_decision": [float(x) for x in lags.mean(0)],
      "early_share": float((lags <= -3).mean()),
      "mean_epochs": [float(x) for x in dec.mean(0)],
      "final_minus_reference": float((finals - reference_finals).mean()),
      "decisions": dec.astype(int).tolist(),
  }


def candidate_rules():
  rules = []
  for tracking in ("max", "accepted"):
    for patience in (1, 2, 3, 4, 5, 6, 8, 10):
      for min_delta in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0):
        rules.append((tracking, patience, min_delta))
  for tracking in ("mean3", "ema"):
    for patience in (1, 2, 3, 4, 5):
      for min_delta in (0.0, 0.1, 0.2, 0.3, 0.5):
        rules.append((tracking, patience, min_delta))
  for patience in (2, 3, 4, 5):
    for rel in (0.0025, 0.005, 0.01, 0.02):
      rules.append(("rel", patience, rel))
  return rules


def atomic_write_json(path: pathlib.Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--curves", type=int, default=400)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--train-noise", type=float, default=0.4,
                 help="sd (points) of the epoch-to-epoch training noise at "
                 "lr 1e-2")
  p.add_argument("--chosen", default="accepted,6,0.5",
                 help="tracking,patience,min_delta of the rule the defaults "
                 "use (checked against vgg_jax.optim.PlateauController)")
  p.add_argument("--show", type=int, default=12,
                 help="rows of the table (best mean |lag| first)")
  p.add_argument("--output", default="benchmarks/results/plateau_rule.json")
  args = p.parse_args(argv)
  if args.curves < 1:
    p.error("--curves must be >= 1")

  t0 = time.time()
  curve_rng = np.random.default_rng(args.seed)
  curves = [sample_curve(curve_rng) for _ in range(args.curves)]
  refs = [run(ph, ReferenceRule, None, 0.0) for ph in curves]
  ref_finals = np.array([r["final"] for r in refs])
  ref_dec = np.array([r["decisions"] for r in refs], float)
  reference = {"mean_epochs": [float(x) for x in ref_dec.mean(0)],
               "drops_within_74_epochs": float(
                   (ref_dec[:, :3] <= 74).sum(1).mean()),
               "final_accuracy": float(ref_finals.mean())}

  results = []
  for tracking, patience, min_delta in candidate_rules():
    make = lambda t=tracking, pa=patience, d=min_delta: Rule(pa, d, t)
    row = {"tracking": tracking, "patience": patience, "min_delta": min_delta}
    row.update(evaluate_rule(make, curves, args.seed + 1, args.train_noise,
                             ref_finals))
    row["at_2x_noise"] = evaluate_rule(make, curves, args.seed + 2,
                                       2 * args.train_noise, ref_finals)
    del row["at_2x_noise"]["decisions"]
    results.append(row)

  tracking, patience, min_delta = args.chosen.split(",")
  patience, min_delta = int(patience), float(min_delta)
  chosen = next(r for r in results if (r["tracking"], r["patience"],
                                       r["min_delta"]) == (tracking, patience,
                                                           min_delta))
  if tracking != "accepted":
    raise SystemExit("--chosen: only the 'accepted' rule is implemented by "
                     "PlateauController")
  ctrl = evaluate_rule(lambda: ControllerRule(patience, min_delta), curves,
                       args.seed + 1, args.train_noise, ref_finals)
  same = ctrl["decisions"] == chosen["decisions"]

  def fmt(name, r, r2=None):
    e = r["mean_epochs"]
    cells = [f"{name:<24}", f"{r['mean_abs_lag']:5.1f}",
             f"{100 * r['early_share']:4.0f}%",
             " ".join(f"{x:5.1f}" for x in r["mean_lag_per_decision"]),
             " ".join(f"{x:4.0f}" for x in e),
             f"{r['final_minus_reference']:+6.2f}"]
    if r2 is not None:
      cells += [f"{r2['mean_abs_lag']:5.1f}", f"{100 * r2['early_share']:4.0f}%"]
    return " | ".join(cells)

  header = (f"{'rule':<24} | {'|lag|':>5} | {'early':>5} | "
            f"{'mean lag: d1    d2    d3  stop':>23} | "
            f"{'epoch: d1  d2  d3 stop':>19} | {'final':>6} | "
            f"2x noise: |lag| early")
  lines = [header, "-" * len(header),
           f"{'reference (noiseless)':<24} | {0:5.1f} | {0:4.0f}% | "
           + " ".join(f"{0:5.1f}" for _ in range(4)) + " | "
           + " ".join(f"{x:4.0f}" for x in reference["mean_epochs"])
           + f" | {0:+6.2f}"]
  old = next(r for r in results if (r["tracking"], r["patience"],
                                    r["min_delta"]) == ("max", 1, 0.1))
  ranked = sorted(results, key=lambda r: r["mean_abs_lag"])
  shown = ranked[:args.show]
  for r in [old] + [r for r in shown if r is not old]:
    name = f"{r['tracking']} p={r['patience']} d={r['min_delta']:g}"
    if r is old:
      name += " (old)"
    if r is chosen:
      name += " *"
    lines.append(fmt(name, r, r["at_2x_noise"]))
  if chosen not in shown:
    lines.append(fmt(f"{tracking} p={patience} d={min_delta:g} *", chosen,
                     chosen["at_2x_noise"]))
  # Best of each kind of rule, for the comparison of best-tracking variants.
  lines.append("best of each kind:")
  for kind in ("max", "accepted", "mean3", "ema", "rel"):
    r = min((r for r in results if r["tracking"] == kind),
            key=lambda r: r["mean_abs_lag"])
    lines.append(fmt(f"{kind} p={r['patience']} d={r['min_delta']:g}", r,
                     r["at_2x_noise"]))
  print(f"{args.curves} curves per rule, training noise sd "
        f"{args.train_noise} points at lr 1e-2; reference: "
        f"{reference['drops_within_74_epochs']:.2f} drops within 74 epochs, "
        f"final top-1 {reference['final_accuracy']:.1f}%")
  print("|lag|: mean |epochs| between a decision and the reference's; early: "
        "share of decisions >= 3 epochs early; mean lag (signed, - = early) "
        "and mean epoch of drops 1-3 and the stop; final: noiseless top-1 at "
        "the stop minus the reference run's (points); * = the defaults")
  print("\n".join(lines))
  print(f"PlateauController gives the same decisions as the simulated "
        f"'{tracking}' rule: {same}")
  for r in results:
    del r["decisions"]
  atomic_write_json(pathlib.Path(args.output), {
      "command": " ".join(["python", "benchmarks/plateau_rule.py"]
                          + (argv if argv is not None else sys.argv[1:])),
      "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
      "seconds": round(time.time() - t0, 1),
      "curves": args.curves, "train_noise_sd_points": args.train_noise,
      "reference": reference, "chosen": chosen,
      "controller_matches_chosen": same, "rules": results})
  print(f"wrote {args.output}")
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
