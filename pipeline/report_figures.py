"""The report's figures: each a matplotlib figure rendered to a base64 PNG for an `<img>` data
URI, so the page needs no network and no script."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def coverage_figure(coverage: dict[str, list[float]]) -> str:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3))
    bins = np.linspace(0, 1, 21)
    for split, fractions in sorted(coverage.items()):
        axis.hist(fractions, bins=bins, alpha=0.6, label=f"{split} (n={len(fractions)})")
    axis.set_xlabel("fraction of the image inside the mask")
    axis.set_ylabel("examples")
    axis.legend()
    return _png(figure)


def grid_figure(samples: dict[int, list[tuple[np.ndarray, np.ndarray]]]) -> str:
    plt = _pyplot()
    labels = sorted(samples)
    columns = max(len(samples[label]) for label in labels)
    figure, axes = plt.subplots(len(labels), columns, figsize=(1.6 * columns, 1.8 * len(labels)),
                                squeeze=False)
    for row, label in enumerate(labels):
        for column in range(columns):
            axis = axes[row][column]
            axis.axis("off")
            if column >= len(samples[label]):
                continue
            image, mask = samples[label][column]
            if image.ndim == 3:
                image = image[..., :3] if image.shape[-1] >= 3 else image[..., 0]
            low, high = np.percentile(image, [1, 99])
            shown = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
            axis.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
            axis.contour(mask.astype(float), levels=[0.5], colors="yellow", linewidths=1)
            if column == 0:
                axis.set_title(f"label {label}", fontsize=9, loc="left")
    return _png(figure)


def attribution_figure(found: dict[str, Any], maps: dict[str, np.ndarray]) -> str:
    """The share of the attribution inside the mask per class, and the heat maps kept: the
    model's input in grey, the attribution over it, the mask outlined."""
    plt = _pyplot()
    shown = len(maps.get("labels", []))
    figure = plt.figure(figsize=(max(5.0, 1.6 * min(shown, 8)), 3.0 + (1.9 if shown else 0)))
    grid = figure.add_gridspec(2 if shown else 1, max(1, min(shown, 8)),
                               height_ratios=[1.6, 1.0] if shown else [1])
    axis = figure.add_subplot(grid[0, :])
    labels, shares = np.array(found["labels"]), np.array(found["shares"])
    bins = np.linspace(0, 1, 21)
    for label in (0, 1):
        chosen = shares[labels == label]
        axis.hist(chosen, bins=bins, alpha=0.6, label=f"label {label} (n={chosen.size})")
    axis.set_xlabel("share of the attribution inside the mask")
    axis.set_ylabel("eval regions")
    axis.legend()
    for index in range(min(shown, 8)):
        cell = figure.add_subplot(grid[1, index])
        cell.axis("off")
        image = maps["model_input"][index]
        low, high = np.percentile(image, [1, 99])
        cell.imshow(np.clip((image - low) / max(high - low, 1e-6), 0, 1), cmap="gray")
        heat = maps["heat"][index]
        cell.imshow(heat / max(float(heat.max()), 1e-12), cmap="inferno", alpha=0.5)
        cell.contour(maps["mask"][index].astype(float), levels=[0.5], colors="cyan",
                     linewidths=1)
        cell.set_title(f"label {maps['labels'][index]}: {maps['share'][index]:.2f}", fontsize=8)
    return _png(figure)


def training_figure(history: dict[str, dict[str, list[float]]]) -> str:
    plt = _pyplot()
    names = [name for name in ("loss", "auc") if any(name in h for h in history.values())]
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3), squeeze=False)
    for axis, name in zip(axes[0], names):
        for phase, values in sorted(history.items()):
            if name in values:
                axis.plot(range(1, len(values[name]) + 1), values[name], marker=".",
                          label=phase)
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.legend()
    return _png(figure)


def curves_figure(curve: list[dict[str, float]]) -> str:
    """ROC and precision-recall from TFMA's confusion matrices over thresholds."""
    plt = _pyplot()
    tp = np.array([m["truePositives"] for m in curve])
    fp = np.array([m["falsePositives"] for m in curve])
    tn = np.array([m["trueNegatives"] for m in curve])
    fn = np.array([m["falseNegatives"] for m in curve])
    recall = tp / np.maximum(tp + fn, 1e-9)
    fpr = fp / np.maximum(fp + tn, 1e-9)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-9), 1.0)
    figure, (roc, pr) = plt.subplots(1, 2, figsize=(9, 3.6))
    roc.plot(fpr, recall)
    roc.plot([0, 1], [0, 1], linestyle=":", color="gray")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr.plot(recall, precision)
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    return _png(figure)


def calibration_figure(buckets: list[dict[str, float]], bins: int = 10) -> str:
    """Mean label against mean prediction in `bins` equal-width prediction bins."""
    plt = _pyplot()
    count, label, prediction = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    for bucket in buckets:
        weight = float(bucket.get("numWeightedExamples", 0.0))
        if not weight:
            continue
        mean = float(bucket.get("totalWeightedRefinedPrediction", 0.0)) / weight
        index = min(bins - 1, max(0, int(mean * bins)))
        count[index] += weight
        label[index] += float(bucket.get("totalWeightedLabel", 0.0))
        prediction[index] += float(bucket.get("totalWeightedRefinedPrediction", 0.0))
    used = count > 0
    figure, axis = plt.subplots(figsize=(4, 3.6))
    axis.plot([0, 1], [0, 1], linestyle=":", color="gray")
    axis.plot(prediction[used] / count[used], label[used] / count[used], marker="o")
    for x, y, n in zip(prediction[used] / count[used], label[used] / count[used], count[used]):
        axis.annotate(str(int(n)), (x, y), fontsize=7, textcoords="offset points",
                      xytext=(3, -9))
    axis.set(xlabel="mean predicted probability", ylabel="fraction positive",
             title="calibration", xlim=(0, 1), ylim=(0, 1.02))
    return _png(figure)


def risk_coverage_figure(points: list[dict[str, float]], overall_auc: float | None) -> str:
    """AUC of the regions the OOD score accepts against the share accepted (the Evaluator's
    `risk_coverage`); a share whose regions hold one class has no AUC and no point."""
    plt = _pyplot()
    coverage = np.array([point["coverage"] for point in points], float)
    auc = np.array([np.nan if point["auc"] is None else point["auc"] for point in points], float)
    figure, axis = plt.subplots(figsize=(4.5, 3.4))
    axis.plot(coverage, auc, marker="o")
    if overall_auc is not None:
        axis.axhline(overall_auc, linestyle=":", color="gray", label="all test regions")
        axis.legend(loc="lower left")
    axis.set(xlabel="share of test regions accepted (most like training first)",
             ylabel="AUC of the accepted", title="risk and coverage", xlim=(0, 1.02))
    return _png(figure)
