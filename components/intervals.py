"""Bootstrap confidence intervals for the eval split's AUC, accuracy, sensitivity and
specificity, overall and per slice, and the gates on their lower bounds.

A per-site AUC of 0.96 on 40 regions and one of 0.96 on 4,000 are not the same evidence; the
interval says which is which, and `min_slice_auc` gates on the lower bound of every slice big
enough to judge. The resampling is of the eval regions, with replacement, `resamples` times, from
a fixed seed (so a run's intervals can be reproduced from its predictions); each interval is the
2.5th to 97.5th percentile of the resampled values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

METRICS = ("auc", "accuracy", "sensitivity", "specificity")
DEFAULT_RESAMPLES = 200
INTERVALS_FILE = "masktfx-intervals.json"  # beside TFMA's files in the evaluation


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); NaN with
    one class only."""
    positives = labels == 1
    count_pos, count_neg = int(positives.sum()), int((~positives).sum())
    if count_pos == 0 or count_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    sorted_scores = scores[order]
    # average the ranks of tied scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        if end - start > 1:
            ranks[order[start:end]] = (start + 1 + end) / 2.0
    return float((ranks[positives].sum() - count_pos * (count_pos + 1) / 2.0)
                 / (count_pos * count_neg))


def point_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    called = scores >= threshold
    positives, negatives = labels == 1, labels == 0
    return {"auc": auc(labels, scores),
            "accuracy": float((called == positives).mean()) if len(labels) else math.nan,
            "sensitivity": float(called[positives].mean()) if positives.any() else math.nan,
            "specificity": float((~called[negatives]).mean()) if negatives.any() else math.nan}


def resample_indices(count: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, count] draws with replacement: the bootstrap's, reproducible from the seed."""
    return np.random.default_rng(seed).integers(0, count, (resamples, count))


def intervals(labels: np.ndarray, scores: np.ndarray, slices: Mapping[str, Sequence[str]],
              threshold: float, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """{"overall": ..., "slices": {"column=value": ...}}, each {"count", "metrics": {name:
    {"value", "lower", "upper"}}}. The same resamples of the eval regions serve every slice: a
    slice's resample is the drawn regions that fall in it."""
    labels = np.asarray(labels).astype(int).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    draws = resample_indices(len(labels), resamples, seed)

    def summarize(member: np.ndarray) -> dict:
        values = {name: [] for name in METRICS}
        for draw in draws:
            picked = draw[member[draw]]
            for name, value in point_metrics(labels[picked], scores[picked], threshold).items():
                values[name].append(value)
        point = point_metrics(labels[member], scores[member], threshold)
        found = {}
        for name in METRICS:
            finite = np.array([v for v in values[name] if not math.isnan(v)])
            low, high = ((float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5)))
                         if finite.size else (math.nan, math.nan))
            found[name] = {"value": point[name], "lower": low, "upper": high}
        return {"count": int(member.sum()), "metrics": found}

    result = {"resamples": resamples, "seed": seed, "threshold": threshold,
              "overall": summarize(np.ones(len(labels), dtype=bool)), "slices": {}}
    for column, values in sorted(slices.items()):
        values = np.asarray(values, dtype=object)
        for value in sorted(set(values.tolist())):
            result["slices"][f"{column}={value}"] = summarize(values == value)
    return result


def gate_failures(found: dict, min_slice_auc: float, min_slice_examples: int,
                  min_auc_lower_bound: float) -> list[str]:
    """Why the intervals stop the blessing ([] when they do not): an overall AUC lower bound
    under `min_auc_lower_bound`, or a slice of at least `min_slice_examples` regions whose AUC
    lower bound is under `min_slice_auc` (0 turns either gate off)."""
    failures = []
    overall = found["overall"]["metrics"]["auc"]["lower"]
    if min_auc_lower_bound > 0 and not overall >= min_auc_lower_bound:
        failures.append(f"auc lower bound {overall:.4f} (overall) is below min_auc_lower_bound "
                        f"{min_auc_lower_bound:.4f}")
    if min_slice_auc > 0:
        for name, entry in found["slices"].items():
            lower = entry["metrics"]["auc"]["lower"]
            if entry["count"] >= min_slice_examples and not lower >= min_slice_auc:
                failures.append(f"auc lower bound {lower:.4f} ({name}, {entry['count']} "
                                f"examples) is below min_slice_auc {min_slice_auc:.4f}")
    return failures
