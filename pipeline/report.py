"""`masktfx report`: one self-contained HTML page per run, for people deciding whether to trust it.
This module is the page (pipeline/report_data.py reads the run, report_figures.py draws).

Everything on the page is read back from what the run recorded; figures are embedded PNGs, and
the page needs no network and no script.
"""

from __future__ import annotations

import datetime
import math
import os
from typing import Any

from masktfx import features
from masktfx.config import PipelineConfig
from masktfx.intervals import METRICS
from masktfx.pipeline.lineage import format_lineage
from masktfx.pipeline.report_data import SAMPLE_PER_SPLIT, ReportData, collect, collect_record
from masktfx.pipeline.report_figures import (
    attribution_figure,
    calibration_figure,
    coverage_figure,
    curves_figure,
    grid_figure,
    risk_coverage_figure,
    training_figure,
)
from masktfx.pipeline.summary import format_attribution, format_operating_point

REPORT_METRICS = ("example_count", "auc", "auc_pr", "binary_accuracy", "precision", "recall",
                  "calibration", "mean_label", "mean_prediction")
__all__ = ["ReportData", "collect", "collect_record", "render", "report_json", "write_report"]


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

