"""Performance estimated without labels: CBPE's expected AUC and accuracy, Platt calibration,
and the estimate's interval over groups."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from masktfx import performance


def test_expected_auc_is_the_auc_with_zero_one_chances_and_the_pairwise_sum_otherwise():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = (rng.random(300) + 0.4 * labels).round(2)  # ties
    assert performance.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores),
                                                            abs=1e-12)
    chance = rng.random(60)
    small = scores[:60]
    pairs = [(i, j) for i in range(60) for j in range(60) if i != j]
    weight = sum(chance[i] * (1 - chance[j]) for i, j in pairs)
    wins = sum(chance[i] * (1 - chance[j]) * ((small[i] > small[j]) + 0.5 * (small[i] == small[j]))
               for i, j in pairs)
    assert performance.expected_auc(small, chance) == pytest.approx(wins / weight, abs=1e-12)


def test_on_calibrated_scores_the_estimate_matches_the_measured_auc_and_accuracy():
    # labels drawn with the probability each score states: the estimate is unbiased, and the
    # measured values differ from it by sampling alone (20,000 regions: about 0.004 for AUC)
    rng = np.random.default_rng(2)
    truth = rng.beta(0.6, 0.6, 20_000)
    labels = (rng.random(20_000) < truth).astype(int)
    overconfident = 1.0 / (1.0 + np.exp(-2.5 * np.log(truth / (1 - truth))))
    calibration = performance.fit_calibration(labels, overconfident)
    assert calibration["slope"] == pytest.approx(1 / 2.5, abs=0.03)
    assert calibration["intercept"] == pytest.approx(0.0, abs=0.05)
    found = performance.estimate(overconfident, calibration, 0.5, resamples=50)
    assert found["auc"] == pytest.approx(roc_auc_score(labels, overconfident), abs=0.02)
    assert found["accuracy"] == pytest.approx(np.mean((overconfident >= 0.5) == labels), abs=0.02)
    # uncalibrated, the same scores promise more than they hold
    raw = performance.estimate(overconfident, {"slope": 1.0, "intercept": 0.0}, 0.5,
                               resamples=10)
    assert raw["auc"] > found["auc"] + 0.05


def test_the_estimates_interval_resamples_groups():
    rng = np.random.default_rng(3)
    scores = rng.random(400)
    groups = np.repeat([f"g{g}" for g in range(8)], 50)
    identity = {"slope": 1.0, "intercept": 0.0}
    by_group = performance.estimate(scores, identity, 0.5, groups=groups, resamples=100)
    assert by_group["groups"] == 8
    low, high = by_group["interval"]["auc"]
    assert low <= by_group["auc"] <= high
    members = performance.group_members(groups, 400)
    assert [len(m) for m in members] == [50] * 8
    one_class = performance.fit_calibration(np.ones(10), rng.random(10))
    assert one_class == {"slope": 1.0, "intercept": 0.0}


def test_the_auc_matched_calibration_makes_cbpe_give_the_measured_auc_where_labels_exist():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 150)
    scores = 1.0 / (1.0 + np.exp(-(4.0 * (labels - 0.5) + rng.normal(0, 1.5, 150))))
    platt = performance.fit_calibration(labels, scores)
    matched = performance.fit_auc_matched(labels, scores, platt)
    assert performance.expected_auc(scores, performance.calibrate(scores, matched)) == \
        pytest.approx(performance.auc(labels, scores), abs=1e-6)
    # the same score is still called even (the centre is Platt's)
    assert -matched["intercept"] / matched["slope"] == pytest.approx(
        -platt["intercept"] / platt["slope"], rel=1e-9)
    assert performance.fit_auc_matched(np.ones(5), scores[:5], platt) == platt
    separated = np.r_[np.zeros(5), np.ones(5)]
    assert performance.fit_auc_matched(separated, np.linspace(0.1, 0.9, 10), platt) == platt
