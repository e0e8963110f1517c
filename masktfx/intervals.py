"""Bootstrap confidence intervals for the test split's AUC, accuracy, sensitivity and
specificity, overall and per slice, and the gates on their lower bounds.

A per-site AUC of 0.96 on 40 regions and one of 0.96 on 4,000 are not the same evidence; the
interval says which is which, and `min_slice_auc` gates on the lower bound of every slice big
enough to judge. The resampling is a cluster bootstrap: the test split's groups (patients, scenes,
sites: what the split keeps together) are drawn with replacement, each with all its regions,
`resamples` times, from a fixed seed (so a run's intervals can be reproduced from its
predictions), because the regions of one group are correlated and resampling them one by one
makes the interval too narrow. Each interval is the 2.5th to 97.5th percentile of the resampled
values, and says how many groups it rests on; with fewer than MIN_GROUPS it is not meaningful
and is reported without bounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from masktfx.performance import auc, group_members, percentile_interval

METRICS = ("auc", "accuracy", "sensitivity", "specificity")
DEFAULT_RESAMPLES = 200
INTERVALS_FILE = "masktfx-intervals.json"  # beside TFMA's files in the evaluation
# Groups below which a bootstrap interval is not reported: with 3 groups there are only 10
# distinct resamples, and the percentiles of so few say nothing about another group.
MIN_GROUPS = 5

__all__ = ["auc", "intervals", "gate_failures", "point_metrics", "resample_indices",
           "slice_gated", "MIN_GROUPS"]


def point_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    called = scores >= threshold
    positives, negatives = labels == 1, labels == 0
    return {"auc": auc(labels, scores),
            "accuracy": float((called == positives).mean()) if len(labels) else math.nan,
            "sensitivity": float(called[positives].mean()) if positives.any() else math.nan,
            "specificity": float((~called[negatives]).mean()) if negatives.any() else math.nan}


def resample_indices(count: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, count] draws with replacement (of groups, or of regions when each is its own
    group): the bootstrap's, reproducible from the seed."""
    return np.random.default_rng(seed).integers(0, count, (resamples, count))


def intervals(labels: np.ndarray, scores: np.ndarray, slices: Mapping[str, Sequence[str]],
              threshold: float, groups: Sequence[str] | None = None,
              resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """{"overall": ..., "slices": {"column=value": ...}}, each {"count", "per_class",
    "groups", "meaningful", "metrics": {name: {"value", "lower", "upper"}}}. `groups` are the
    regions' groups (None: each region its own). The same resamples of the groups serve every
    slice: a slice's resample is the drawn regions that fall in it."""
    labels = np.asarray(labels).astype(int).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    members = group_members(None if groups is None else np.asarray(groups, dtype=object),
                            len(labels))
    group_of = np.empty(len(labels), dtype=np.int64)
    for index, regions in enumerate(members):
        group_of[regions] = index
    draws = [np.concatenate([members[g] for g in row]) if len(row) else np.zeros(0, np.int64)
             for row in resample_indices(len(members), resamples, seed)]

    def summarize(member: np.ndarray) -> dict:
        count_groups = len(np.unique(group_of[member]))
        meaningful = count_groups >= MIN_GROUPS
        point = point_metrics(labels[member], scores[member], threshold)
        values = {name: [] for name in METRICS}
        if meaningful:
            for draw in draws:
                picked = draw[member[draw]]
                for name, value in point_metrics(labels[picked], scores[picked],
                                                 threshold).items():
                    values[name].append(value)
        found = {}
        for name in METRICS:
            low, high = percentile_interval(values[name])
            found[name] = {"value": point[name], "lower": low, "upper": high}
        return {"count": int(member.sum()),
                "per_class": [int((labels[member] == 0).sum()), int((labels[member] == 1).sum())],
                "groups": int(count_groups), "meaningful": bool(meaningful), "metrics": found}

    result = {"resamples": resamples, "seed": seed, "threshold": threshold,
              "resampled": "groups" if groups is not None else "regions",
              "min_groups": MIN_GROUPS,
              "overall": summarize(np.ones(len(labels), dtype=bool)), "slices": {}}
    for column, values in sorted(slices.items()):
        values = np.asarray(values, dtype=object)
        for value in sorted(set(values.tolist())):
            result["slices"][f"{column}={value}"] = summarize(values == value)
    return result


def gate_failures(found: dict, min_slice_auc: float, min_slice_examples: int,
                  min_auc_lower_bound: float) -> list[str]:
    """Why the intervals stop the blessing ([] when they do not): an overall AUC lower bound
    under `min_auc_lower_bound` (or none, with too few groups to bound it), or a slice that can
    be judged, whose AUC lower bound is under `min_slice_auc` (0 turns either gate off). A
    slice is judged when it holds at least `min_slice_examples` regions of each class in at
    least MIN_GROUPS groups; the others are reported, not gated (`slice_gated` says why)."""
    failures = []
    overall = found["overall"]
    lower = overall["metrics"]["auc"]["lower"]
    if min_auc_lower_bound > 0 and not overall.get("meaningful", True):
        failures.append(f"the test split's {overall.get('groups')} group(s) are too few for an "
                        f"AUC interval (at least {MIN_GROUPS}), so min_auc_lower_bound "
                        f"{min_auc_lower_bound:.4f} cannot be shown to hold")
    elif min_auc_lower_bound > 0 and not lower >= min_auc_lower_bound:
        failures.append(f"auc lower bound {lower:.4f} (overall) is below min_auc_lower_bound "
                        f"{min_auc_lower_bound:.4f}")
    if min_slice_auc > 0:
        for name, entry in found["slices"].items():
            if slice_gated(entry, min_slice_examples):
                continue
            lower = entry["metrics"]["auc"]["lower"]
            if not lower >= min_slice_auc:
                failures.append(f"auc lower bound {lower:.4f} ({name}, {entry['count']} "
                                f"examples) is below min_slice_auc {min_slice_auc:.4f}")
    return failures


def slice_gated(entry: dict, min_slice_examples: int) -> str:
    """Why a slice is not gated ('' when it is): too few regions of a class, or too few
    groups for an interval."""
    negatives, positives = entry.get("per_class", [entry["count"], entry["count"]])
    if min(negatives, positives) < min_slice_examples:
        return (f"{negatives} label 0 and {positives} label 1 regions: fewer than "
                f"{min_slice_examples} of a class")
    if not entry.get("meaningful", True):
        return f"{entry.get('groups')} group(s): fewer than {MIN_GROUPS}"
    return ""
