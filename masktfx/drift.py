"""Drift of new data: is a span (or a manifest not yet ingested) like the data the served model
was trained on?

Each region gets descriptors a reader of the images would look at: the mask's area, the
intensity inside the region and in a ring around it, their contrast, the texture energy inside,
and each channel's share of the brightness (colour, bands). The Pusher stores the descriptors'
statistics (TFDV's DatasetFeatureStatisticsList) of the examples a model was trained on with the
version it pushes; the DriftCheck component and `masktfx drift` compare new regions' statistics
with those of the newest pushed version, through TFDV's drift comparator (Jensen-Shannon
divergence of each descriptor's histogram).

Descriptors say that data differs, not that the model will do worse on it. For that, the same
regions go through the newest pushed version's `serving_default`, and its AUC and accuracy on them
are estimated from its own probabilities, calibrated on its validation split
(`masktfx.performance.estimate`, CBPE), beside the AUC its test split measured. A span is called
worse only on that estimate: when its interval lies wholly under the test split's AUC interval, or
under `min_estimated_auc`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from masktfx import features, performance
from masktfx.images import RegionInputError, decode_mask_array, decode_pixels
from masktfx.records import split_records

# Stored with each pushed version, beside TF Serving's warmup file (which TF Serving ignores).
DESCRIPTORS_FILE = os.path.join("assets.extra", "masktfx_region_descriptors.pb")
DRIFT_FILE = "drift.json"  # the comparison, in the DriftCheck's output artifact
CURRENT_STATISTICS_FILE = "region_descriptors.pb"  # the new data's descriptor statistics
DRIFT_PROPERTY = "drift"  # on the DriftCheck's artifact: the descriptors that moved, if any
ESTIMATE_PROPERTY = "estimate"  # on the DriftCheck's artifact: the estimate's line
# The Evaluator's test-split figures of a pushed version, stored with it by the Pusher.
TEST_METRICS_FILE = os.path.join("assets.extra", "masktfx_test_metrics.json")
# How far the ring around a region reaches, as a share of the region's box.
AROUND_MARGIN = 0.25


class DataDriftError(RuntimeError):
    """New data is unlike the data the served model was trained on; the message says how."""


def _scaled(pixels: np.ndarray) -> np.ndarray:
    """Integer samples on [0, 1] by their type's range; float samples (rasters in physical
    units, medical images in HU) as they are."""
    values = pixels.astype(np.float64)
    if pixels.dtype.kind in "ui":
        top = 255.0 if pixels.dtype.itemsize == 1 else 65535.0  # 16-bit PNGs decode as int32
        values /= top
    return values


def _ring(mask: np.ndarray) -> np.ndarray:
    """Pixels outside the mask within its box grown by AROUND_MARGIN (at least 2 pixels)."""
    rows, columns = np.nonzero(mask)
    height, width = mask.shape
    pad = max(2, int(round(AROUND_MARGIN * max(np.ptp(rows) + 1, np.ptp(columns) + 1))))
    window = np.zeros_like(mask)
    window[max(0, rows.min() - pad):min(height, rows.max() + pad + 1),
           max(0, columns.min() - pad):min(width, columns.max() + pad + 1)] = True
    return window & ~mask


def _view_descriptors(pixels: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    values = _scaled(pixels)
    grey = values.mean(axis=-1)
    inside = grey[mask]
    ring = _ring(mask)
    around = grey[ring] if ring.any() else grey[~mask] if (~mask).any() else inside
    padded = np.pad(grey, 1, mode="edge")
    laplacian = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
                 - 4.0 * grey)
    found = {"mask_area": float(mask.mean()),
             "inside_mean": float(inside.mean()), "inside_std": float(inside.std()),
             "around_mean": float(around.mean()), "around_std": float(around.std()),
             "contrast": float(inside.mean() - around.mean()),
             "texture_energy": float(np.mean(laplacian[mask] ** 2))}
    if values.shape[-1] > 1:
        brightness = abs(float(inside.mean())) + 1e-6
        for channel in range(values.shape[-1]):
            found[f"channel{channel + 1}_share"] = float(
                values[..., channel][mask].mean() / brightness)
    return found


def region_descriptors(images: Sequence[bytes], masks: Sequence[bytes],
                       max_pixels: int = 10**9) -> dict[str, float]:
    """The descriptors of one region's stored views and masks (as ingest writes them). Views
    after the first add their own, suffixed `_view2`, `_view3`, ..."""
    found: dict[str, float] = {}
    for view, image in enumerate(images):
        mask = decode_mask_array(bytes(masks[min(view, len(masks) - 1)]), max_pixels)
        suffix = "" if view == 0 else f"_view{view + 1}"
        for name, value in _view_descriptors(decode_pixels(bytes(image), max_pixels),
                                             mask).items():
            found[name + suffix] = value
    return found


def describe_records(serialized: Iterable[bytes], undescribed: list[str] | None = None
                     ) -> dict[str, list[float]]:
    """Each descriptor's values over serialized raw examples (what ImportExampleGen reads). A
    record without images or masks, or whose images do not decode, is left out, with its id and
    reason appended to `undescribed` (ExampleValidator's contract check reports such data)."""
    from tensorflow.core.example import example_pb2

    columns: dict[str, list[float]] = {}
    for index, record in enumerate(serialized):
        feature = example_pb2.Example.FromString(record).features.feature
        ids = feature[features.ID_KEY].bytes_list.value if features.ID_KEY in feature else []
        where = ids[0].decode("utf-8", "replace") if ids else f"record {index}"
        images = feature[features.IMAGES_KEY].bytes_list.value
        masks = feature[features.MASKS_KEY].bytes_list.value
        try:
            if not images or not masks:
                raise RegionInputError("no images or no masks")
            found = region_descriptors(images, masks)
        except RegionInputError as exc:
            if undescribed is not None:
                undescribed.append(f"{where}: {exc}")
            continue
        for name, value in found.items():
            columns.setdefault(name, []).append(value)
    return columns


def descriptor_statistics(columns: dict[str, list[float]]) -> Any:
    """TFDV statistics (DatasetFeatureStatisticsList) of descriptor columns."""
    import pandas as pd
    import tensorflow_data_validation as tfdv

    return tfdv.generate_statistics_from_dataframe(pd.DataFrame(columns))


@dataclass
class DescriptorShift:
    name: str
    divergence: float  # Jensen-Shannon divergence of the two histograms
    reference_mean: float
    current_mean: float
    moved: bool


def _means(statistics: Any) -> dict[str, float]:
    return {feature.path.step[0] if feature.path.step else feature.name:
            feature.num_stats.mean for feature in statistics.datasets[0].features}


def compare(current: Any, reference: Any, threshold: float) -> list[DescriptorShift]:
    """Each descriptor of `current` against `reference` with TFDV's drift comparator; those
    whose divergence exceeds `threshold` moved. A descriptor missing from one side (another
    number of views or channels) moves by definition."""
    import tensorflow_data_validation as tfdv

    schema = tfdv.infer_schema(reference)
    for feature in schema.feature:
        feature.drift_comparator.jensen_shannon_divergence.threshold = threshold
    anomalies = tfdv.validate_statistics(current, schema, previous_statistics=reference)
    divergences = {info.path.step[0]: measurement.value
                   for info in anomalies.drift_skew_info
                   for measurement in info.drift_measurements}
    before, after = _means(reference), _means(current)
    shifts = []
    for name in sorted(set(before) | set(after)):
        divergence = divergences.get(name, 1.0 if (name in before) != (name in after) else 0.0)
        shifts.append(DescriptorShift(name, round(float(divergence), 4),
                                      round(before.get(name, float("nan")), 4),
                                      round(after.get(name, float("nan")), 4),
                                      divergence > threshold))
    return shifts


def newest_reference(model_base_dir: str) -> tuple[int, Any] | None:
    """(version, descriptor statistics) of the newest pushed version that stored them."""
    import tensorflow as tf
    from tensorflow_metadata.proto.v0 import statistics_pb2

    if not tf.io.gfile.isdir(model_base_dir):
        return None
    versions = sorted((int(name.rstrip("/")) for name in tf.io.gfile.listdir(model_base_dir)
                       if name.rstrip("/").isdigit()), reverse=True)
    for version in versions:
        path = os.path.join(model_base_dir, str(version), DESCRIPTORS_FILE)
        if tf.io.gfile.exists(path):
            statistics = statistics_pb2.DatasetFeatureStatisticsList()
            with tf.io.gfile.GFile(path, "rb") as handle:
                statistics.ParseFromString(handle.read())
            return version, statistics
    return None


def drift_report(columns: dict[str, list[float]], model_base_dir: str, threshold: float
                 ) -> dict[str, Any]:
    """The new regions' descriptors against the newest pushed version's: which moved."""
    report: dict[str, Any] = {"model_base_dir": model_base_dir, "threshold": threshold,
                              "regions": len(next(iter(columns.values()), [])),
                              "reference_version": None, "descriptors": [], "moved": []}
    found = newest_reference(model_base_dir)
    if found is None or not report["regions"]:
        return report
    version, reference = found
    shifts = compare(descriptor_statistics(columns), reference, threshold)
    report.update(reference_version=version,
                  descriptors=[shift.__dict__ for shift in shifts],
                  moved=[shift.name for shift in shifts if shift.moved])
    return report


def describe_moved(report: dict[str, Any]) -> str:
    """One line: which descriptors moved, by how much, against which version."""
    shifts = {entry["name"]: entry for entry in report["descriptors"]}
    parts = [f"{name} (divergence {shifts[name]['divergence']:.2f}; mean "
             f"{shifts[name]['reference_mean']:.3g} -> {shifts[name]['current_mean']:.3g})"
             for name in report["moved"]]
    return (f"{len(parts)} of {len(shifts)} region descriptors moved beyond "
            f"{report['threshold']:g} against the data version {report['reference_version']} "
            f"was trained on: " + ", ".join(parts))


def _read_json(path: str) -> dict[str, Any] | None:
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        return json.loads(handle.read())


def score_records(saved_model_dir: str, serialized: Iterable[bytes], batch_size: int = 256
                  ) -> dict[str, np.ndarray]:
    """The model's `serving_default` answers for serialized examples, read a batch at a time
    (a span need not fit in memory), with their labels (-1 when a record has none) and groups.
    A batch the graph refuses is scored record by record, and the refused records are left out
    (`refused`: their indices)."""
    import itertools

    import tensorflow as tf
    from tensorflow.core.example import example_pb2

    serve = tf.saved_model.load(saved_model_dir).signatures[features.SERVING_SIGNATURE]
    answers: dict[str, list[np.ndarray]] = {}
    labels: list[int] = []
    groups: list[str] = []
    refused: list[int] = []

    def run(batch: list[tuple[int, bytes]]) -> None:
        try:
            found = serve(examples=tf.constant([record for _, record in batch]))
        except tf.errors.InvalidArgumentError:
            if len(batch) == 1:
                refused.append(batch[0][0])
                return
            for item in batch:
                run([item])
            return
        for name, value in found.items():
            answers.setdefault(name, []).append(value.numpy().reshape(len(batch)))
        for index, record in batch:
            feature = example_pb2.Example.FromString(record).features.feature
            values = feature[features.LABEL_KEY].int64_list.value \
                if features.LABEL_KEY in feature else []
            labels.append(int(values[0]) if values else -1)
            names = feature[features.GROUP_KEY].bytes_list.value \
                if features.GROUP_KEY in feature else []
            groups.append(names[0].decode("utf-8", "replace") if names else f"region{index}")

    records = enumerate(serialized)
    while batch := list(itertools.islice(records, batch_size)):
        run(batch)
    found = {name: np.concatenate(values) for name, values in answers.items()}
    found.update(labels=np.array(labels, dtype=np.int64), groups=np.array(groups, dtype=object),
                 refused=np.array(refused, dtype=np.int64))
    return found


def estimate_performance(saved_model_dir: str, serialized: Iterable[bytes],
                         min_estimated_auc: float = 0.0) -> dict[str, Any] | None:
    """The version's estimated AUC and accuracy on these regions without their labels (None for
    a version trained before it stored its calibration), its out-of-distribution share, the
    test split's figures, the measured ones where every region is labelled, and whether the span
    is worse than the test split said."""
    reliability = _read_json(os.path.join(saved_model_dir, features.RELIABILITY_FILE))
    point = _read_json(os.path.join(saved_model_dir, features.OPERATING_POINT_FILE)) or {}
    if reliability is None:
        return None
    threshold = float(point.get("threshold", 0.5))
    scored = score_records(saved_model_dir, serialized)
    scores = scored.get(features.PROBABILITY_OUTPUT)
    if scores is None or not len(scores):
        return None
    found = performance.estimate(scores, reliability["calibration"], threshold,
                                 groups=scored["groups"])
    found["refused"] = int(len(scored["refused"]))
    if features.IN_DISTRIBUTION_OUTPUT in scored:
        found["in_distribution"] = float(np.mean(scored[features.IN_DISTRIBUTION_OUTPUT])) \
            if len(scores) else float("nan")
        found["validation_in_distribution"] = reliability["validation"].get("in_distribution")
    labels = scored["labels"]
    if len(labels) and (labels >= 0).all():
        found["measured"] = {"auc": performance.auc(labels, scores),
                             "accuracy": float(np.mean((scores >= threshold) == (labels == 1)))}
    test = _read_json(os.path.join(saved_model_dir, TEST_METRICS_FILE))
    found["test"] = test
    reasons = []
    upper = found["interval"]["auc"][1]
    # both figures are uncertain: worse only when the estimate's interval lies wholly under the
    # test AUC's interval (the point value where the test split had too few groups for one)
    tested = (test or {}).get("auc_interval", [None])[0]
    if tested is None or (isinstance(tested, float) and np.isnan(tested)):
        tested = (test or {}).get("auc")
    if tested is not None and upper < tested:
        reasons.append(f"the estimated AUC's interval (up to {upper:.3f}) lies under the test "
                       f"split's AUC ({test['auc']:.3f}, interval from {tested:.3f})")
    found["below_min_estimated_auc"] = bool(min_estimated_auc) and not (
        found["auc"] >= min_estimated_auc)
    if found["below_min_estimated_auc"]:
        reasons.append(f"the estimated AUC {found['auc']:.3f} is under min_estimated_auc "
                       f"{min_estimated_auc:.3f}")
    found["worse"] = bool(reasons)
    found["worse_reasons"] = reasons
    return found


def describe_estimate(estimate: dict[str, Any]) -> str:
    """One line: "estimated AUC on this span X (test split: Y)", the interval and the OOD share."""
    low, high = estimate["interval"]["auc"]
    test = estimate.get("test") or {}
    tested = f"{test['auc']:.3f}" if test.get("auc") is not None else "not stored"
    line = (f"estimated AUC on this span {estimate['auc']:.3f} [{low:.3f}, {high:.3f}] "
            f"(test split: {tested}), estimated accuracy {estimate['accuracy']:.3f}")
    if "in_distribution" in estimate:
        line += f"; {estimate['in_distribution']:.0%} of its regions in distribution"
    if "measured" in estimate:
        line += f"; measured AUC {estimate['measured']['auc']:.3f}"
    return line + (" - WORSE: " + "; ".join(estimate["worse_reasons"])
                   if estimate["worse"] else "")


def check_drift(examples_uri: str, output_uri: str, model_base_dir: str, threshold: float,
                action: str, min_estimated_auc: float = 0.0) -> dict[str, Any]:
    """The DriftCheck: describe every split of the new examples, compare with the newest pushed
    version, estimate its performance on them, write all into `output_uri`, and with `action`
    "stop" raise DataDriftError when descriptors moved or the estimate is under
    `min_estimated_auc`."""
    import tensorflow as tf

    undescribed: list[str] = []
    columns = describe_records(split_records([examples_uri]), undescribed)
    report = drift_report(columns, model_base_dir, threshold)
    report["undescribed"] = undescribed
    # the span read a second time, rather than held in memory between the two passes
    report["estimate"] = (estimate_performance(
        os.path.join(model_base_dir, str(report["reference_version"])),
        split_records([examples_uri]), min_estimated_auc)
        if report["reference_version"] is not None else None)
    tf.io.gfile.makedirs(output_uri)
    if columns:
        with tf.io.gfile.GFile(os.path.join(output_uri, CURRENT_STATISTICS_FILE), "wb") as out:
            out.write(descriptor_statistics(columns).SerializeToString())
    with tf.io.gfile.GFile(os.path.join(output_uri, DRIFT_FILE), "w") as out:
        out.write(json.dumps(report, indent=1))
    estimate = report["estimate"]
    if estimate:
        logging.info("%s", describe_estimate(estimate))
    if estimate and estimate["below_min_estimated_auc"]:
        message = describe_estimate(estimate)
        if action == "stop":
            raise DataDriftError(f"{message}. The run stops before Transform (drift_action "
                                 f"stop; min_estimated_auc {min_estimated_auc:g})")
        logging.warning("%s", message)
    if report["moved"]:
        message = describe_moved(report)
        if action == "stop":
            raise DataDriftError(f"{message}. The run stops before Transform (drift_action "
                                 f"stop; drift_threshold {threshold:g})")
        logging.warning("%s", message)
    return report
