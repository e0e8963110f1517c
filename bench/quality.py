"""bench/quality: how well the models separate the classes, all in one run, same split.

For the synthetic demo and the real nuclei data, on one group-wise train/eval split:
- the default model (`resnet`, crop with mask channel, region normalization),
- the `seed` preset (the seed article's CNN) with the same transform,
- a classical baseline: logistic regression on intensity statistics inside the mask,
- the ablation with masking off (`mask_mode: none`: the model never sees the mask),
and leave-one-group-out AUC per group (sites for synthetic, image quadrants for nuclei) for the
default model. The transform and the training are the pipeline's own functions
(`modules.transform.transform_regions`, `modules.trainer.train_model`), run in process.

    python bench/quality.py [--synthetic-examples 1000] [--skip-logo]

Prints JSON.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import csv  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from masktfx.config import PipelineConfig  # noqa: E402
from masktfx.demo_data import write_nuclei, write_synthetic  # noqa: E402
from masktfx.images import check_image_bytes, decode_mask_array, load_image, load_mask  # noqa: E402,E501
from masktfx.manifest import read_manifest  # noqa: E402
from modules import features  # noqa: E402


def load_rows(manifest_path: str, slice_column: str | None):
    """Encoded images and masks, labels, groups and the column that names a group for LOGO."""
    manifest = read_manifest(manifest_path)
    images, masks, labels, groups, sites = [], [], [], [], []
    for row in manifest.rows:
        infos = [load_image(p, 10**8) for p in row.images]
        images.append([info.encoded for info in infos])
        masks.append([load_mask(p, (infos[0].width, infos[0].height), False, 10**8)[0]
                      for p in row.masks])
        labels.append(row.label)
        groups.append(row.group)
        metadata = dict(row.metadata)
        sites.append(metadata.get(slice_column, row.group) if slice_column else row.group)
    return images, masks, np.array(labels), groups, sites


def group_split(groups: list[str], eval_fraction: float = 0.2) -> np.ndarray:
    """True for eval rows: a hash of the group, like ImportExampleGen's partition."""
    def bucket(group: str) -> float:
        return int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return np.array([bucket(g) < eval_fraction for g in groups])


def transform(images, masks, config: PipelineConfig) -> np.ndarray:
    import tensorflow as tf

    from modules.transform import transform_regions

    out = []
    for start in range(0, len(images), 256):
        out.append(transform_regions(tf.constant(images[start:start + 256]),
                                     tf.constant(masks[start:start + 256]), config).numpy())
    return np.concatenate(out)


def fit_and_score(config: PipelineConfig, x_train, y_train, x_eval, y_eval) -> dict:
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    from modules.trainer import train_model, training_pairs

    tf.keras.utils.set_random_seed(config.seed)

    def batches(x, y):
        return tf.data.Dataset.from_tensor_slices(
            {features.REGION_KEY: x, features.TRANSFORMED_LABEL_KEY: y}).batch(config.batch_size)

    counts = np.bincount(y_train, minlength=2)
    weights = {c: len(y_train) / (2.0 * counts[c]) for c in (0, 1)}
    start = time.perf_counter()
    model, history = train_model(config, training_pairs(batches(x_train, y_train), config, True),
                                 training_pairs(batches(x_eval, y_eval), config, False),
                                 weights, verbose=0)
    probability = model.predict(x_eval, verbose=0).reshape(-1)
    return {"auc": round(float(roc_auc_score(y_eval, probability)), 4),
            "epochs": len(history.history["loss"]),
            "train_seconds": round(time.perf_counter() - start, 1)}


def intensity_features(images, masks) -> np.ndarray:
    """Per example: statistics of the first view's pixels inside the mask and in the rest."""
    rows = []
    for views, mask_list in zip(images, masks):
        info = check_image_bytes(views[0], 10**8)
        from io import BytesIO

        from PIL import Image

        if info.encoded[:4] == b"\x89PNG" and info.bit_depth == 16:
            pixels = np.asarray(Image.open(BytesIO(info.encoded)), np.float32)
        else:
            pixels = np.asarray(Image.open(BytesIO(info.encoded)).convert("L"), np.float32)
        region = decode_mask_array(mask_list[0], 10**8)
        inside, outside = pixels[region], pixels[~region]
        scale = outside.std() + 1e-6
        rows.append([
            (inside.mean() - outside.mean()) / scale, inside.std() / scale,
            (inside.max() - np.median(inside)) / scale,
            (np.percentile(inside, 95) - np.percentile(inside, 50)) / scale,
            (inside.max() - outside.mean()) / scale, region.mean(),
        ])
    return np.array(rows)


def logistic_baseline(images, masks, y, is_eval) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = intensity_features(images, masks)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x[~is_eval], y[~is_eval])
    return {"auc": round(float(roc_auc_score(y[is_eval], model.predict_proba(x[is_eval])[:, 1])),
                         4)}


def evaluate_dataset(name: str, manifest: str, slice_column: str | None, base: PipelineConfig,
                     logo: bool) -> dict:
    images, masks, y, groups, sites = load_rows(manifest, slice_column)
    is_eval = group_split(groups)
    config = base.replace(num_views=len(images[0]), num_masks=len(masks[0]))
    result = {"examples": len(y), "train": int((~is_eval).sum()), "eval": int(is_eval.sum()),
              "positive_fraction": round(float(y.mean()), 3)}
    variants = {
        "default_resnet": config,
        "seed_preset": config.replace(model_preset="seed"),
        "ablation_mask_off_resnet": config.replace(mask_mode="none"),
    }
    for label, variant in variants.items():
        x = transform(images, masks, variant)
        result[label] = fit_and_score(variant, x[~is_eval], y[~is_eval], x[is_eval], y[is_eval])
    result["logistic_regression_intensity"] = logistic_baseline(images, masks, y, is_eval)
    default_auc = result["default_resnet"]["auc"]
    result["default_minus_seed_auc"] = round(default_auc - result["seed_preset"]["auc"], 4)
    result["default_minus_baseline_auc"] = round(
        default_auc - result["logistic_regression_intensity"]["auc"], 4)
    if logo:
        x = transform(images, masks, config)
        per_group = {}
        for group in sorted(set(sites)):
            held_out = np.array([s == group for s in sites])
            per_group[group] = fit_and_score(config, x[~held_out], y[~held_out], x[held_out],
                                             y[held_out])["auc"]
        result["leave_one_group_out_auc"] = per_group
    print(f"{name}: {json.dumps(result)}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic-examples", type=int, default=1000)
    parser.add_argument("--skip-logo", action="store_true", help="no leave-one-group-out runs")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-quality-")
    base = PipelineConfig(image_size=64)
    started = time.perf_counter()
    synthetic = write_synthetic(os.path.join(work, "synthetic"),
                                num_examples=args.synthetic_examples, size=64)
    nuclei = write_nuclei(os.path.join(work, "nuclei"))
    result = {
        "benchmark": "quality",
        "config": {k: v for k, v in base.to_custom_config().items()
                   if k in ("image_size", "mask_mode", "crop_margin", "normalization",
                            "epochs", "batch_size", "learning_rate")},
        "synthetic": evaluate_dataset("synthetic", synthetic, "site", base, not args.skip_logo),
        "nuclei": evaluate_dataset("nuclei", nuclei, None, base.replace(image_size=32),
                                   not args.skip_logo),
        "target": "default AUC >= 0.95 on synthetic and above seed and baseline on both",
    }
    with open(synthetic, encoding="utf-8") as handle:
        result["synthetic"]["sites"] = sorted({r["site"] for r in csv.DictReader(handle)})
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
