"""bench/quality's classical baselines: a logistic regression on colour and intensity statistics
inside and around the mask, and gradient boosting on the DriftCheck's region descriptors."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from io import BytesIO  # noqa: E402

import numpy as np  # noqa: E402
from quality_data import Rows  # noqa: E402

from masktfx.images import decode_mask_array  # noqa: E402


def region_statistics(rows: Rows) -> np.ndarray:
    """Per example: intensity and colour statistics of the first view inside the mask, against
    the rest of the tile (the classical baseline's features)."""
    from PIL import Image

    table = []
    for views, mask_list in zip(rows.images, rows.masks):
        with Image.open(BytesIO(views[0])) as picture:
            if picture.mode.startswith("I"):
                pixels = np.asarray(picture, np.float32)[..., None]
            else:
                pixels = np.asarray(picture.convert("RGB" if rows.channels > 2 else "L"),
                                    np.float32)
        pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
        region = decode_mask_array(mask_list[0], 10**8)
        grey = pixels.mean(axis=-1)
        inside, outside = grey[region], grey[~region]
        scale = outside.std() + 1e-6 if outside.size else 1.0
        outside_mean = outside.mean() if outside.size else 0.0
        values = [
            (inside.mean() - outside_mean) / scale, inside.std() / scale,
            (inside.max() - np.median(inside)) / scale,
            (np.percentile(inside, 95) - np.percentile(inside, 50)) / scale,
            (inside.max() - outside_mean) / scale, region.mean(),
        ]
        if pixels.shape[-1] > 1:  # colour: each channel's share of the brightness inside
            share = pixels[region].mean(axis=0) / (pixels[region].mean() + 1e-6)
            values.extend(share.tolist())
        table.append(values)
    return np.array(table)


def baseline_features(name: str, rows: Rows) -> np.ndarray:
    """The classical baselines' table: `logistic` takes this bench's colour and intensity
    statistics inside and around the mask, `gradient_boosting` the region descriptors the
    DriftCheck computes (masktfx/drift.py)."""
    if name == "logistic":
        return region_statistics(rows)
    from masktfx.drift import region_descriptors

    described = [region_descriptors(images, masks) for images, masks in zip(rows.images,
                                                                             rows.masks)]
    names = sorted(described[0])
    return np.array([[found[key] for key in names] for found in described])


def baseline_probabilities(name: str, seed: int, train: Rows, scored: dict[str, Rows]
                           ) -> dict[str, np.ndarray]:
    """A baseline fitted on `train`: its probabilities on each of `scored`."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logistic":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    else:
        model = HistGradientBoostingClassifier(random_state=seed)
    model.fit(baseline_features(name, train), train.labels)
    return {key: model.predict_proba(baseline_features(name, rows))[:, 1]
            for key, rows in scored.items()}


BASELINES = ("logistic", "gradient_boosting")
