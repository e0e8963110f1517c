"""`masktfx report`: one self-contained HTML page per run, for people deciding whether to trust it.

Everything on the page is read back from what the run recorded: MLMD for the artifacts and the
decision, TFDV statistics for the counts, the Trainer's TensorBoard logs for the curves, TFMA's
output for the evaluation, and a sample of the ingested examples for the pictures. Figures are
embedded PNGs; the page needs no network and no script.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tfx.dsl.io import fileio

from masktfx import features, images, node_ids
from masktfx.components.attribution import read_maps
from masktfx.components.drift import DRIFT_FILE
from masktfx.components.evaluator import CANDIDATE, evaluated_models, load_candidate_result
from masktfx.components.intervals import INTERVALS_FILE, METRICS
from masktfx.config import PipelineConfig
from masktfx.pipeline.lineage import Lineage, format_lineage, lineage
from masktfx.pipeline.report_figures import (
    attribution_figure,
    calibration_figure,
    coverage_figure,
    curves_figure,
    grid_figure,
    risk_coverage_figure,
    training_figure,
)
from masktfx.pipeline.summary import (
    RunRecord,
    RunSummary,
    format_attribution,
    format_operating_point,
    read_json_file,
    read_run,
    split_statistics,
    summarize_record,
)

SAMPLE_PER_SPLIT = 300  # examples read for the mask coverage histogram and the grid
GRID_PER_CLASS = 6
REPORT_METRICS = ("example_count", "auc", "auc_pr", "binary_accuracy", "precision", "recall",
                  "calibration", "mean_label", "mean_prediction")
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


# -- the page -----------------------------------------------------------------------------------
def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _count(value: float | None) -> str:
    return "-" if value is None else str(int(round(value)))


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.yes{color:#176f2c;font-weight:bold}.no{color:#a31515;font-weight:bold}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto}img{max-width:100%}
"""
TEMPLATE = "report.html.j2"
TEMPLATE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", TEMPLATE)


def _template():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates")),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
    return environment.get_template(TEMPLATE)


def page_context(data: ReportData) -> dict[str, Any]:
    """What the template shows: the run's values and the tables' rows, formatted, and the
    figures as base64 PNGs. The template escapes every value."""
    summary, config = data.summary, data.config
    started = datetime.datetime.fromtimestamp(summary.started_ms / 1000, datetime.timezone.utc)
    context: dict[str, Any] = {
        "summary": summary, "config": config, "style": STYLE,
        "started": f"{started:%Y-%m-%d %H:%M:%S}", "in_run": data.in_run,
        "workdir": os.path.abspath(config.workdir), "baseline_uri": data.baseline_uri,
        "spans": ", ".join(str(s) for s in summary.spans) or "?",
        "sample_per_split": SAMPLE_PER_SPLIT,
        "lineage_text": format_lineage(data.lineage) if data.lineage is not None else "",
        "served_threshold": summary.operating_point.get("threshold", config.decision_threshold),
        "operating_point_text": format_operating_point(summary.operating_point)
        if summary.operating_point.get("policy", "fixed") != "fixed" else "",
    }
    context["baseline_rows"] = []
    for name in ("auc", "binary_accuracy"):
        new, old = summary.metrics.get(name), data.baseline_metrics.get(name)
        change = None if new is None or old is None else new - old
        context["baseline_rows"].append([name, _number(new), _number(old),
                                         "-" if change is None else f"{change:+.4f}"])
    context["data_rows"], context["data_attributes"] = [], []
    found = set(summary.examples) | set(data.label_counts)
    for split in [name for name in features.SPLITS if name in found] + sorted(
            found - set(features.SPLITS)):
        labels = data.label_counts.get(split, {})
        total = summary.examples.get(split)
        positives = labels.get(1)
        share = "-" if not total or positives is None else f"{positives / total:.1%}"
        context["data_rows"].append([split, _count(total), _count(labels.get(0)),
                                     _count(positives), share])
        context["data_attributes"].append(
            [{}] + [{"data-split": split, "data-field": field_name}
                    for field_name in ("examples", "negatives", "positives")] + [{}])
    context["coverage_figure"] = coverage_figure(data.coverage) if data.coverage else ""
    # an empty eval split (a run from before the split check) has no regions to show
    context["grid_figure"] = grid_figure(data.samples) if any(data.samples.values()) else ""
    context["training_figure"] = training_figure(data.history) if data.history else ""
    context["epochs"] = max((len(v) for h in data.history.values() for v in h.values()),
                            default=0)
    context["training_rows"] = [
        [phase] + [_number(values[name][-1]) if name in values else "-"
                   for name in ("loss", "auc")]
        for phase, values in sorted(data.history.items())]
    overall = dict(data.slices).get("overall", {}) if data.slices else {}
    shown = [name for name in REPORT_METRICS if name in overall]
    context["metric_rows"] = [
        [name, _count(overall[name]) if name == "example_count" else _number(overall[name])]
        for name in shown] if data.slices else []
    context["metric_attributes"] = [[{}, {"data-metric": name}] for name in shown]
    confusion = data.confusion
    context["confusion_threshold"] = f"{confusion['threshold']:g}" if confusion else ""
    context["confusion_rows"] = [
        ["label 1", _count(confusion["truePositives"]), _count(confusion["falseNegatives"])],
        ["label 0", _count(confusion["falsePositives"]), _count(confusion["trueNegatives"])],
    ] if confusion else []
    context["confusion_attributes"] = [[{}, {"data-cell": "tp"}, {"data-cell": "fn"}],
                                       [{}, {"data-cell": "fp"}, {"data-cell": "tn"}]]
    context["curves_figure"] = curves_figure(data.curve) if data.curve else ""
    context["calibration_figure"] = (calibration_figure(data.calibration)
                                     if data.calibration else "")
    context["slice_rows"] = [
        [name, _count(metrics.get("example_count"))]
        + [_number(metrics.get(m)) for m in ("auc", "binary_accuracy", "precision", "recall")]
        for name, metrics in data.slices]
    context["slice_attributes"] = [[{"data-slice": name}] for name, _ in data.slices]
    entries = ([("overall", data.intervals["overall"])]
               + sorted(data.intervals["slices"].items())) if data.intervals else []
    context["interval_resamples"] = data.intervals.get("resamples", 0)
    context["interval_rows"] = [
        [name, str(entry["count"]), str(entry.get("groups", "?"))]
        + [_interval(entry["metrics"][metric]) if entry.get("meaningful", True)
           else f"{_number(entry['metrics'][metric]['value'])} (no interval: too few groups)"
           for metric in METRICS]
        for name, entry in entries]
    context["interval_attributes"] = [
        [{}, {}, {}] + [{"data-interval": metric, "data-interval-slice": name}
                        for metric in METRICS]
        for name, _ in entries]
    context["interval_min_groups"] = data.intervals.get("min_groups", 0)
    points = data.intervals.get("risk_coverage", [])
    context["risk_coverage_rows"] = [
        [f"{point['coverage']:.2f}", _number(point["auc"]), f"{point['ood_threshold']:.3f}"]
        for point in points]
    context["risk_coverage_figure"] = risk_coverage_figure(points, points[-1]["auc"]) \
        if points else ""
    found = summary.attribution
    context["attribution_text"] = format_attribution(found) if found.get("regions") else ""
    context["attribution_figure"] = (attribution_figure(found, data.attribution_maps)
                                     if found.get("regions") else "")
    shifts = data.drift.get("descriptors", [])
    context["drift"] = data.drift
    context["drift_rows"] = [
        [entry["name"], f"{entry['divergence']:.3f}", _number(entry["reference_mean"]),
         _number(entry["current_mean"]), "moved" if entry["moved"] else ""]
        for entry in shifts]
    context["drift_attributes"] = [[{"data-descriptor": entry["name"]}, {}, {}, {},
                                    {"data-moved": str(entry["moved"]).lower()}]
                                   for entry in shifts]
    return context


def _interval(metric: dict[str, float]) -> str:
    """A value with its interval, as `0.9123 [0.8811, 0.9402]` (n/a when undefined)."""
    if any(metric[key] is None or math.isnan(metric[key]) for key in ("value", "lower", "upper")):
        return "n/a"
    return f"{metric['value']:.4f} [{metric['lower']:.4f}, {metric['upper']:.4f}]"


def render(data: ReportData) -> str:
    """The HTML page for one run."""
    return _template().render(**page_context(data)) + "\n"


def write_report(config: PipelineConfig, output: str | None = None,
                 run_id: str | None = None) -> str:
    """Collect, render and write the page (atomically); returns its path."""
    data = collect(config, run_id)
    page = render(data)
    path = os.path.abspath(output or os.path.join(config.workdir, "report.html"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(page)
    os.replace(partial, path)
    return path


def report_json(data: ReportData) -> dict[str, Any]:
    """The page's numbers as JSON (for scripts and tests)."""
    return {"run_id": data.summary.run_id, "examples": data.summary.examples,
            "label_counts": data.label_counts, "metrics": dict(data.slices).get("overall", {}),
            "confusion": data.confusion, "blessed": data.summary.blessed,
            "pushed_version": data.summary.pushed_version}

