"""Cluster-bootstrap intervals of the test split's metrics and the gates on their lower bounds."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from masktfx.intervals import (
    MIN_GROUPS,
    auc,
    gate_failures,
    intervals,
    resample_indices,
)


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
    assert found["slices"]["site=b"]["per_class"] == [int((labels[sites == "b"] == 0).sum()),
                                                       int((labels[sites == "b"] == 1).sum())]
    assert gate_failures(found, 0.8, 1000, 0.0) == []
    assert gate_failures(found, 0.0, 20, 0.0) == []
    assert "min_auc_lower_bound" in gate_failures(found, 0.0, 20, 0.999)[0]


def _grouped(groups: int, per_group: int, seed: int, spread: float = 1.0
             ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Regions whose score depends on their group as much as on their label: the regions of a
    group are correlated, as the regions of one patient or scene are."""
    rng = np.random.default_rng(seed)
    names = [f"g{g}" for g in range(groups) for _ in range(per_group)]
    labels = rng.integers(0, 2, groups * per_group)
    shift = np.repeat(rng.normal(0, spread, groups), per_group)
    return labels, labels * 1.0 + shift + rng.normal(0, 0.3, len(labels)), names


def test_the_bootstrap_resamples_groups_and_is_wider_than_over_regions():
    labels, scores, groups = _grouped(12, 30, 5)
    by_group = intervals(labels, scores, {}, 0.5, groups=groups, resamples=200, seed=3)
    by_region = intervals(labels, scores, {}, 0.5, resamples=200, seed=3)
    overall = by_group["overall"]
    assert overall["groups"] == 12 and overall["meaningful"] and by_group["resampled"] == "groups"
    # the percentiles of a direct cluster bootstrap over the same draws of groups (in the
    # groups' sorted order)
    members = [np.flatnonzero(np.array(groups) == name) for name in sorted(set(groups))]
    direct = [roc_auc_score(labels[picked], scores[picked]) for picked in
              (np.concatenate([members[g] for g in row])
               for row in resample_indices(12, 200, 3))]
    assert overall["metrics"]["auc"]["lower"] == pytest.approx(np.percentile(direct, 2.5))
    assert overall["metrics"]["auc"]["upper"] == pytest.approx(np.percentile(direct, 97.5))

    def width(found: dict) -> float:
        metric = found["overall"]["metrics"]["auc"]
        return metric["upper"] - metric["lower"]

    assert width(by_group) > 1.5 * width(by_region)


def test_too_few_groups_give_no_interval_and_the_lower_bound_gate_refuses():
    labels, scores, groups = _grouped(MIN_GROUPS - 1, 50, 6)
    found = intervals(labels, scores, {}, 0.5, groups=groups, resamples=50, seed=1)
    overall = found["overall"]
    assert overall["groups"] == MIN_GROUPS - 1 and not overall["meaningful"]
    assert np.isnan(overall["metrics"]["auc"]["lower"])
    assert not np.isnan(overall["metrics"]["auc"]["value"])
    failures = gate_failures(found, 0.0, 20, 0.5)
    assert len(failures) == 1 and "too few" in failures[0]
    assert gate_failures(found, 0.0, 20, 0.0) == []


def test_a_slice_of_one_class_is_reported_not_gated():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)
    sites = np.where(np.arange(300) < 200, "mixed", "positives")
    labels[sites == "positives"] = 1
    scores = labels * 0.6 + rng.random(300) * 0.5
    groups = [f"s{index // 5}" for index in range(300)]
    found = intervals(labels, scores, {"site": sites.tolist()}, 0.5, groups=groups,
                      resamples=50, seed=2)
    one_class = found["slices"]["site=positives"]
    assert one_class["per_class"] == [0, 100] and np.isnan(one_class["metrics"]["auc"]["lower"])
    assert gate_failures(found, 0.6, 20, 0.0) == []  # the mixed slice passes; this one is not gated


def test_each_interval_gate_refuses_on_its_own():
    # one slice fails min_slice_auc while the overall lower bound passes min_auc_lower_bound
    labels, scores, groups = _grouped(40, 10, 8, spread=0.2)
    site = ["hard" if int(name[1:]) < 10 else "easy" for name in groups]
    scores = np.where(np.array(site) == "hard", np.random.default_rng(0).random(400), scores)
    found = intervals(labels, scores, {"site": site}, 0.5, groups=groups, resamples=100, seed=4)
    overall_lower = found["overall"]["metrics"]["auc"]["lower"]
    hard_lower = found["slices"]["site=hard"]["metrics"]["auc"]["lower"]
    assert hard_lower < 0.6 < overall_lower
    only_slice = gate_failures(found, 0.6, 20, overall_lower - 0.01)
    assert len(only_slice) == 1 and "min_slice_auc" in only_slice[0]
    only_overall = gate_failures(found, hard_lower - 0.01, 20, overall_lower + 0.01)
    assert len(only_overall) == 1 and "min_auc_lower_bound" in only_overall[0]


def test_the_evaluation_record_holds_the_interval_and_attribution_settings():
    """A re-run with other interval or attribution settings must not reuse an evaluation made
    with the old ones: the record that reuse matches on differs."""
    from tfx.types import standard_artifacts, standard_component_specs

    from masktfx.components.evaluator import ATTRIBUTION_KEY, INTERVALS_KEY, evaluation_record

    model, examples = standard_artifacts.Model(), standard_artifacts.Examples()
    model.uri, examples.uri = "/m", "/e"
    inputs = {standard_component_specs.MODEL_KEY: [model],
              standard_component_specs.EXAMPLES_KEY: [examples]}
    base = {standard_component_specs.EVAL_CONFIG_KEY: "{}",
            INTERVALS_KEY: '{"min_slice_auc": 0.0}', ATTRIBUTION_KEY: '{"regions": 128}'}
    record = evaluation_record(inputs, base)
    assert record != evaluation_record(inputs, {**base, INTERVALS_KEY: '{"min_slice_auc": 0.8}'})
    assert record != evaluation_record(inputs, {**base, ATTRIBUTION_KEY: '{"regions": 64}'})
    assert record == evaluation_record(inputs, dict(base))
