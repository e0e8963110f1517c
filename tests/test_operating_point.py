"""The operating point: the served label's threshold, chosen on the validation split by
`threshold_policy`, written into the SavedModel and followed by its `label` output, in process and
over REST."""

from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest
import requests
import tensorflow as tf
from conftest import train_tiny_model

from masktfx import features
from masktfx.config import ConfigError, PipelineConfig
from masktfx.modules.operating_point import choose_threshold, operating_point


def _rates(labels: np.ndarray, probabilities: np.ndarray, threshold: float
           ) -> tuple[float, float, float]:
    called = probabilities >= threshold
    sensitivity = called[labels == 1].mean()
    specificity = (~called[labels == 0]).mean()
    precision = labels[called].mean() if called.any() else 1.0
    return sensitivity, specificity, precision


def test_each_policy_picks_the_threshold_a_search_over_all_thresholds_picks():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    probabilities = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).round(3)  # with ties
    candidates = np.unique(probabilities)
    rates = {t: _rates(labels, probabilities, t) for t in candidates}

    def same_calls(threshold: float, candidate: float) -> bool:
        """The chosen threshold labels every region as the candidate does, and lies strictly
        between scores (so a last-bit difference in a served score flips no label)."""
        return (np.array_equal(probabilities >= threshold, probabilities >= candidate)
                and threshold not in set(probabilities.tolist()))

    youden, _ = choose_threshold(labels, probabilities, "youden", 0.5)
    best = max(candidates, key=lambda t: rates[t][0] + rates[t][1])
    assert _rates(labels, probabilities, youden)[:2] == pytest.approx(rates[best][:2])

    threshold, met = choose_threshold(labels, probabilities, "min_sensitivity:0.9", 0.5)
    assert met and same_calls(threshold, max(t for t in candidates if rates[t][0] >= 0.9))
    threshold, met = choose_threshold(labels, probabilities, "min_precision:0.8", 0.5)
    assert met and same_calls(threshold, min(t for t in candidates if rates[t][2] >= 0.8))
    # the highest score is a negative: no threshold reaches precision 0.9; the most precise
    # (calling 0.9 and 0.8 positive) is halfway between 0.8 and 0.7
    assert choose_threshold(np.array([0, 1, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6]),
                            "min_precision:0.9", 0.5) == (pytest.approx(0.75), False)
    assert choose_threshold(labels, probabilities, "fixed", 0.42) == (0.42, True)

    point = operating_point(labels, probabilities, "min_sensitivity:0.9", 0.5, seed=1)
    low, high = point["interval"]
    assert low <= point["threshold"] <= high and low < high
    assert point["sensitivity"] >= 0.9
    sensitivity = _rates(labels, probabilities, point["threshold"])[0]
    assert point["sensitivity"] == pytest.approx(sensitivity)


def test_a_policy_that_is_not_one_of_the_four_is_refused():
    for bad in ("min_sensitivity", "min_sensitivity:1.5", "min_recall:0.9", "youden:0.3"):
        with pytest.raises(ConfigError, match="threshold_policy"):
            PipelineConfig(threshold_policy=bad).validate()
    PipelineConfig(threshold_policy="min_precision:0.95").validate()


def test_the_served_label_follows_the_threshold_chosen_for_min_sensitivity(tmp_path):
    from masktfx.serving.models import ModelManager, wait_for_version
    from masktfx.serving.server import ModelServer

    serving_dir, examples = train_tiny_model(tmp_path, threshold_policy="min_sensitivity:0.9",
                                             epochs=3)
    with open(os.path.join(serving_dir, features.OPERATING_POINT_FILE), encoding="utf-8") as f:
        point = json.load(f)
    assert point["policy"] == "min_sensitivity:0.9" and point["validation_examples"] == 8
    threshold = point["threshold"]

    evaluation = examples[16:]  # the validation split run_fn chose the threshold on
    loaded = tf.saved_model.load(serving_dir)
    images = [[image] for _, image, _ in evaluation]
    masks = [[mask] for _, _, mask in evaluation]
    outputs = loaded.signatures[features.RAW_SIGNATURE](images=tf.constant(images),
                                                        masks=tf.constant(masks))
    probability = outputs[features.PROBABILITY_OUTPUT].numpy()
    label = outputs[features.PREDICTED_LABEL_OUTPUT].numpy()
    np.testing.assert_array_equal(label, (probability >= threshold).astype(np.int64))
    truth = np.array([example[0] for example in evaluation])
    assert label[truth == 1].mean() >= 0.9  # the sensitivity the policy asked for
    assert point["sensitivity"] == pytest.approx(label[truth == 1].mean())

    base = tmp_path / "served" / "tiny"
    os.makedirs(base)
    os.symlink(serving_dir, base / "1")
    manager = ModelManager("tiny", str(base), poll_seconds=0.2)
    server = ModelServer({"tiny": manager}, rest_port=0, grpc_port=None)
    server.start()
    try:
        wait_for_version(manager)
        body = {"signature_name": features.RAW_SIGNATURE, "instances": [
            {features.IMAGES_KEY: [{"b64": base64.b64encode(i[0]).decode()}],
             features.MASKS_KEY: [{"b64": base64.b64encode(m[0]).decode()}]}
            for i, m in zip(images, masks)]}
        response = requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/tiny:predict",
                                 json=body, timeout=30)
        assert response.status_code == 200, response.text
        served = response.json()["predictions"]
    finally:
        server.stop()
    assert [p[features.PREDICTED_LABEL_OUTPUT] for p in served] == label.tolist()


def test_one_class_labels_choose_no_threshold_and_leave_one_class_resamples_out():
    # all positive: one class, whatever its value, has no operating point
    for labels in (np.ones(30, int), np.zeros(30, int)):
        threshold, met = choose_threshold(labels, np.linspace(0.1, 0.9, 30), "youden", 0.5)
        assert (threshold, met) == (0.5, False)
    # two regions of label 0 among 40: many resamples hold label 1 only; they must not put the
    # fixed threshold (0.5) into the interval, which the two-class resamples never choose
    labels = np.r_[np.zeros(2, int), np.ones(38, int)]
    probabilities = np.r_[[0.05, 0.1], np.linspace(0.8, 0.99, 38)]
    point = operating_point(labels, probabilities, "youden", 0.5, seed=1, resamples=300)
    low, high = point["interval"]
    assert 0.1 < low <= point["threshold"] <= high < 0.8
