"""Bootstrap intervals of the eval split's metrics and the gates on their lower bounds."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from masktfx.components.intervals import auc, gate_failures, intervals, resample_indices


def test_auc_is_sklearns_with_ties_and_nan_with_one_class():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = (rng.random(500) + 0.3 * labels).round(2)  # many ties
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(auc(np.ones(4, int), np.arange(4.0)))


def test_intervals_are_percentiles_over_the_same_resamples_for_every_slice():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 400)
    sites = np.where(rng.random(400) < 0.5, "a", "b")
    # site b is hard: its scores barely separate the classes
    scores = rng.random(400) * 0.5 + np.where(sites == "a", 0.5, 0.05) * labels
    found = intervals(labels, scores, {"site": sites.tolist()}, 0.5, resamples=100, seed=9)
    draws = resample_indices(400, 100, 9)
    for name, member in (("overall", np.ones(400, bool)), ("site=b", sites == "b")):
        entry = found["overall"] if name == "overall" else found["slices"][name]
        direct = [roc_auc_score(labels[d[member[d]]], scores[d[member[d]]]) for d in draws]
        metric = entry["metrics"]["auc"]
        assert metric["lower"] == pytest.approx(np.percentile(direct, 2.5))
        assert metric["upper"] == pytest.approx(np.percentile(direct, 97.5))
        assert metric["lower"] <= metric["value"] <= metric["upper"]
        assert entry["count"] == int(member.sum())
    accuracy = found["overall"]["metrics"]["accuracy"]["value"]
    assert accuracy == pytest.approx(((scores >= 0.5) == (labels == 1)).mean())

    # the gates: the hard site fails min_slice_auc; a slice under min_slice_examples is not
    # gated; 0 turns a gate off
    lower_b = found["slices"]["site=b"]["metrics"]["auc"]["lower"]
    lower_a = found["slices"]["site=a"]["metrics"]["auc"]["lower"]
    assert lower_b < 0.8 < lower_a
    failures = gate_failures(found, 0.8, 20, 0.0)
    assert len(failures) == 1 and "(site=b, " in failures[0] and "min_slice_auc" in failures[0]
    assert gate_failures(found, 0.8, 1000, 0.0) == []
    assert gate_failures(found, 0.0, 20, 0.0) == []
    assert "min_auc_lower_bound" in gate_failures(found, 0.0, 20, 0.999)[0]
