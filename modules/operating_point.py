"""The operating point: the probability threshold the served `label` output uses, chosen on the
validation split by `threshold_policy`, with a bootstrap interval.

- `fixed`: `decision_threshold`, whatever the data.
- `youden`: the threshold that maximizes sensitivity + specificity - 1.
- `min_sensitivity:X`: the highest threshold whose sensitivity is at least X (so the most
  specific one that still finds a share X of the positives).
- `min_precision:X`: the lowest threshold whose precision is at least X (the most sensitive one
  whose positive calls are right a share X of the time); when no threshold reaches X, the most
  precise one, marked `met: false`.

A label is positive when probability >= threshold, here and in the served graph.
"""

from __future__ import annotations

import numpy as np

from masktfx.config_values import parse_threshold_policy

BOOTSTRAP_RESAMPLES = 200


def _rates(labels: np.ndarray, probabilities: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds, descending, and at each the sensitivity, specificity and precision
    of `probability >= threshold`. Each candidate lies halfway between two adjacent distinct
    probabilities (the lowest one at 0), not on one: the served graph's probabilities can
    differ from the Trainer's in the last bits, and a threshold equal to a region's own score
    would flip that region's label."""
    order = np.argsort(-probabilities, kind="stable")
    ranked, hits = probabilities[order], labels[order].astype(bool)
    last = np.r_[np.flatnonzero(np.diff(ranked) != 0), len(ranked) - 1]  # ties end together
    true_pos = np.cumsum(hits)[last]
    false_pos = np.cumsum(~hits)[last]
    positives, negatives = max(int(hits.sum()), 1), max(int((~hits).sum()), 1)
    sensitivity = true_pos / positives
    specificity = 1.0 - false_pos / negatives
    precision = true_pos / np.maximum(true_pos + false_pos, 1)
    scores = ranked[last]
    cuts = (scores + np.r_[scores[1:], 0.0]) / 2.0
    cuts[-1] = 0.0  # every region positive
    return cuts, sensitivity, specificity, precision


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, policy: str,
                     fixed: float) -> tuple[float, bool]:
    """(threshold, whether the policy's target was met) on these predictions."""
    kind, target = parse_threshold_policy(policy)
    if kind == "fixed":
        return float(fixed), True
    labels = np.asarray(labels).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if len(np.unique(labels)) < 2:
        return float(fixed), False  # one class only: no operating point to choose
    thresholds, sensitivity, specificity, precision = _rates(labels, probabilities)
    if kind == "youden":
        return float(thresholds[np.argmax(sensitivity + specificity - 1.0)]), True
    if kind == "min_sensitivity":
        # thresholds descend, sensitivity rises: the first that reaches the target is the highest
        return float(thresholds[np.argmax(sensitivity >= target - 1e-12)]), True
    reached = np.flatnonzero(precision >= target - 1e-12)
    if reached.size:
        return float(thresholds[reached[-1]]), True  # the lowest threshold that still reaches it
    return float(thresholds[np.argmax(precision)]), False


def operating_point(labels: np.ndarray, probabilities: np.ndarray, policy: str, fixed: float,
                    seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """The chosen threshold, its bootstrap interval (2.5th-97.5th percentile over resamples of
    the validation regions that hold both classes: a resample of one class has no threshold to
    choose) and the rates it gives on the validation split."""
    labels = np.asarray(labels).reshape(-1).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    threshold, met = choose_threshold(labels, probabilities, policy, fixed)
    interval = [threshold, threshold]
    if parse_threshold_policy(policy)[0] != "fixed" and len(labels) > 1:
        rng = np.random.default_rng(seed)
        picks = (rng.integers(0, len(labels), len(labels)) for _ in range(resamples))
        draws = [choose_threshold(labels[pick], probabilities[pick], policy, fixed)[0]
                 for pick in picks if len(np.unique(labels[pick])) == 2]
        if draws:
            interval = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]
    called = probabilities >= threshold
    positives, negatives = labels == 1, labels == 0
    return {
        "policy": policy,
        "threshold": threshold,
        "interval": interval,
        "met": met,
        "validation_examples": int(len(labels)),
        "sensitivity": float(called[positives].mean()) if positives.any() else None,
        "specificity": float((~called[negatives]).mean()) if negatives.any() else None,
        "precision": float(labels[called].mean()) if called.any() else None,
    }
