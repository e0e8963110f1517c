"""What a run's report page shows, read from the run's artifacts: those MLMD recorded for a past
run (`collect`), or those the RunReport step is given in the run itself (`collect_record`).
TFDV statistics for the counts, a sample of the ingested examples for the pictures, the
Trainer's TensorBoard logs for the curves, TFMA's output for the evaluation, the DriftCheck's
drift.json. pipeline/report.py renders it; pipeline/report_figures.py draws its figures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tfx.dsl.io import fileio

from masktfx import features, images, node_ids
from masktfx.attribution import read_maps
from masktfx.components.evaluator import CANDIDATE, evaluated_models, load_candidate_result
from masktfx.config import PipelineConfig
from masktfx.drift import DRIFT_FILE
from masktfx.intervals import INTERVALS_FILE
from masktfx.pipeline.lineage import Lineage, lineage
from masktfx.pipeline.summary import (
    RunRecord,
    RunSummary,
    read_json_file,
    read_run,
    split_statistics,
    summarize_record,
)

SAMPLE_PER_SPLIT = 300  # examples read for the mask coverage histogram and the grid
GRID_PER_CLASS = 6
CONFUSION_METRIC = "confusion_matrix_at_thresholds"  # metric name; its value's key is:
CONFUSION_VALUE = "confusionMatrixAtThresholds"  # also the plot's key


@dataclass
class ReportData:
    """What the page shows; tests compare it and the page against the run's own outputs."""

    summary: RunSummary
    config: PipelineConfig
    label_counts: dict[str, dict[int, int]] = field(default_factory=dict)  # split -> label -> n
    coverage: dict[str, list[float]] = field(default_factory=dict)  # split -> mask fractions
    samples: dict[int, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # train/validation
    slices: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    curve: list[dict[str, float]] = field(default_factory=list)  # overall confusion matrices
    calibration: list[dict[str, float]] = field(default_factory=list)
    confusion: dict[str, float] = field(default_factory=dict)  # at the decision threshold
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    baseline_uri: str = ""
    intervals: dict[str, Any] = field(default_factory=dict)  # the Evaluator's bootstrap
    drift: dict[str, Any] = field(default_factory=dict)  # the DriftCheck's drift.json
    attribution_maps: dict[str, np.ndarray] = field(default_factory=dict)  # a few heat maps
    lineage: Lineage | None = None
    in_run: bool = False  # written by the run's own RunReport step, not read back later
    notes: list[str] = field(default_factory=list)


# -- reading the run ----------------------------------------------------------------------------
def collect(config: PipelineConfig, run_id: str | None = None) -> ReportData:
    """A past run (the latest by default), read back from MLMD, with its pushed version's
    lineage."""
    data = collect_record(config, read_run(config, run_id))
    if data.summary.pushed and data.summary.pushed_version:
        data.lineage = lineage(config, data.summary.pushed_version)
    return data


def collect_record(config: PipelineConfig, record: RunRecord) -> ReportData:
    """What the page shows, from a run's artifacts (those MLMD recorded for a past run, or
    those the RunReport step is given in the run itself)."""
    summary = summarize_record(record)
    data = ReportData(summary=summary, config=config)
    for statistics in record.outputs(node_ids.STATISTICS_GEN, "statistics"):
        data.label_counts = _label_counts(statistics.uri)
    for examples in record.outputs(node_ids.EXAMPLE_GEN, "examples"):
        _read_sample(examples.uri, data)
    for report in record.outputs(node_ids.DRIFT_CHECK, "drift_report"):
        data.drift = read_json_file(os.path.join(report.uri, DRIFT_FILE)) or data.drift
    for model_run in record.outputs(node_ids.TRAINER, "model_run"):
        data.history = read_training_history(model_run.uri)
    for baseline in record.inputs(node_ids.EVALUATOR, "baseline_model"):
        data.baseline_uri = baseline.uri
    for evaluation in record.outputs(node_ids.EVALUATOR, "evaluation"):
        _read_evaluation(evaluation.uri, data)
        data.attribution_maps = read_maps(evaluation.uri)
    return data


def _label_counts(statistics_uri: str) -> dict[str, dict[int, int]]:
    """Positives = mean x count of the 0/1 label, per split, from TFDV's statistics."""
    counts = {}
    for split, stats in split_statistics(statistics_uri).items():
        for feature in stats.features:
            if list(feature.path.step) == [features.LABEL_KEY]:
                total = int(feature.num_stats.common_stats.num_non_missing)
                positives = int(round(feature.num_stats.mean * total))
                counts[split] = {0: total - positives, 1: positives}
    return counts


def _decode_array(data: bytes, max_pixels: int) -> np.ndarray:
    """A stored view or mask as [H, W, C] float32, read by its format's reader (pictures and
    raster records alike)."""
    return images.decode_pixels(data, max_pixels).astype(np.float32)


def _read_sample(examples_uri: str, data: ReportData) -> None:
    """Mask coverage and a few regions per class, from the first records of each split."""
    import tensorflow as tf

    for split in features.SPLITS:
        files = sorted(fileio.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
        if not files:
            continue
        dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").take(SAMPLE_PER_SPLIT)
        fractions = []
        for record in dataset:
            example = tf.train.Example.FromString(record.numpy())
            feature = example.features.feature
            mask = _decode_array(feature[features.MASKS_KEY].bytes_list.value[0],
                                 data.config.max_pixels)[:, :, 0] > 0
            fractions.append(float(mask.mean()))
            label = int(feature[features.LABEL_KEY].int64_list.value[0])
            if split != features.TEST_SPLIT:
                continue
            chosen = data.samples.setdefault(label, [])
            if len(chosen) < GRID_PER_CLASS:
                image = _decode_array(feature[features.IMAGES_KEY].bytes_list.value[0],
                                      data.config.max_pixels)
                chosen.append((image, mask))
        data.coverage[split] = fractions


def read_training_history(model_run_uri: str) -> dict[str, dict[str, list[float]]]:
    """Per-epoch scalars from the Keras TensorBoard logs: {'train': {'loss': [...]}, ...}."""
    import tensorflow as tf

    history: dict[str, dict[str, list[float]]] = {}
    for phase in ("train", "validation"):
        values: dict[str, dict[int, float]] = {}
        for path in sorted(fileio.glob(os.path.join(model_run_uri, phase,
                                                       "events.out.tfevents.*"))):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if not value.tag.startswith("epoch_"):
                        continue
                    number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                              else float(value.simple_value))
                    values.setdefault(value.tag[len("epoch_"):], {})[event.step] = number
        if values:
            history[phase] = {name: [by_step[s] for s in sorted(by_step)]
                              for name, by_step in values.items()}
    return history


def _slice_label(slice_key: Any) -> str:
    if not slice_key:
        return "overall"
    return ", ".join(f"{column}={value.decode() if isinstance(value, bytes) else value}"
                     for column, value in slice_key)


def _doubles(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: float(value["doubleValue"]) for name, value in metrics.items()
            if isinstance(value, dict) and "doubleValue" in value}


def _read_evaluation(uri: str, data: ReportData) -> None:
    result = load_candidate_result(uri)
    compared = CANDIDATE in evaluated_models(uri)
    data.intervals = read_json_file(os.path.join(uri, INTERVALS_FILE)) or data.intervals
    for slice_key, by_output in result.slicing_metrics:
        metrics = by_output.get("", {}).get("", {})
        data.slices.append((_slice_label(slice_key), _doubles(metrics)))
        if slice_key:
            continue
        matrices = metrics.get(CONFUSION_METRIC, {}).get(CONFUSION_VALUE, {}).get("matrices", [])
        if matrices:
            data.confusion = _matrix(matrices[0])
        # against a baseline TFMA adds NAME_diff = candidate - baseline
        doubles = _doubles(metrics)
        data.baseline_metrics = {name: doubles[name] - doubles[f"{name}_diff"]
                                 for name in doubles if f"{name}_diff" in doubles}
        if data.baseline_uri and not compared:  # the model is its own baseline
            data.baseline_metrics = dict(doubles)
    for slice_key, by_output in result.plots or []:
        if slice_key:
            continue
        plots = by_output.get("", {}).get("", {})
        data.curve = [_matrix(m) for m in plots.get(CONFUSION_VALUE, {}).get("matrices", [])]
        data.calibration = plots.get("calibrationHistogramBuckets", {}).get("buckets", [])
    data.slices.sort(key=lambda item: (item[0] != "overall", item[0]))
    if not data.confusion and data.curve:  # runs evaluated before the metric was configured
        data.confusion = min(data.curve, key=lambda m: abs(
            m["threshold"] - data.config.decision_threshold))


def _matrix(raw: dict[str, Any]) -> dict[str, float]:
    """TFMA's JSON leaves zero counts out; fill them in."""
    names = ("threshold", "truePositives", "falsePositives", "trueNegatives", "falseNegatives")
    return {name: float(raw.get(name, 0.0)) for name in names}
