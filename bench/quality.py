"""bench/quality: how well the models separate the classes on sites they never saw, in one run.

Datasets (all made by `masktfx demo-data`, nothing downloaded at run time):
- `trees`: real aerial RGB tree crowns of two regions (deepforest wheel): leave-one-site-out in
  both directions, trained on Wyoming and scored on California, and the reverse. Early stopping
  watches a group split of the training site only; the other site is never seen before scoring.
- `nuclei_hard`: real fluorescence nuclei (stardist wheel) whose negatives mostly overlap a
  nucleus; one group-wise train/eval split.
- `synthetic`: the demo task; one group-wise split.

Methods: the default config (`default`), the `seed` preset with the same transform, a logistic
regression on colour and intensity statistics inside and around the mask, the masking-off
ablation (`mask_mode: none`), and one ablation per design choice of the default (normalization
layers, augmentations, colour, context), each a change of one config field. Every trained method
runs with several seeds; the JSON gives each seed's AUC and the median. The transform and the
training are the pipeline's own functions (`modules.transform.transform_regions`,
`modules.trainer.train_model`), run in process.

    python bench/quality.py [--seeds 0 1 2] [--datasets trees nuclei_hard synthetic]
                            [--methods default seed ...] [--ablations batch_norm ...]
                            [--ablation-seeds 0] [--attribution] [--time-rounds 8]
                            [--output bench/results/quality.json]

Prints JSON (and writes it to --output).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from io import BytesIO  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from masktfx import features  # noqa: E402
from masktfx.config import PipelineConfig, model_channels  # noqa: E402
from masktfx.demo_data import write_nuclei, write_synthetic, write_trees  # noqa: E402
from masktfx.images import decode_mask_array, load_region  # noqa: E402
from masktfx.manifest import read_manifest  # noqa: E402

# One config change per entry, against the default; "logistic" is the classical baseline.
METHODS: dict[str, dict] = {
    "default": {},
    "seed": {"model_preset": "seed"},
    "logistic": {},
    "mask_off": {"mask_mode": "none"},
    # the default when issue #16 was filed: the reference of its training-time target
    "previous_default": {"norm_layer": "batch", "augmentations": "flip,intensity",
                         "stem_norm": True},
    "batch_norm": {"norm_layer": "batch"},
    "layer_norm": {"norm_layer": "layer"},
    "no_norm": {"norm_layer": "none"},
    "no_stem_norm": {"stem_norm": False},
    "flip_intensity_only": {"augmentations": "flip,intensity"},
    "no_augmentation": {"augment": False},
    "color": {"channels": 0},
    "less_context": {"crop_margin": 0.1},
    "more_context": {"crop_margin": 0.5},
}
HEADLINE = ("default", "seed", "logistic", "mask_off")
ABLATIONS = tuple(name for name in METHODS if name not in HEADLINE)


@dataclass
class Rows:
    images: list[list[bytes]]
    masks: list[list[bytes]]
    labels: np.ndarray
    groups: list[str]
    sites: list[str]
    channels: int  # the channels the images are stored with (largest of the data)

    def take(self, keep: np.ndarray) -> Rows:
        index = np.flatnonzero(keep)
        return Rows([self.images[i] for i in index], [self.masks[i] for i in index],
                    self.labels[index], [self.groups[i] for i in index],
                    [self.sites[i] for i in index], self.channels)


def load_rows(manifest_path: str, site_column: str | None) -> Rows:
    """Encoded images and masks as ingest stores them, labels, groups and sites."""
    manifest = read_manifest(manifest_path)
    images, masks, labels, groups, sites, channels = [], [], [], [], [], 1
    for row in manifest.rows:
        region = load_region(row.images, row.masks, 10**8)
        channels = max(channels, *(info.channels for info in region.images))
        images.append([info.encoded for info in region.images])
        masks.append(region.masks)
        labels.append(row.label)
        groups.append(row.group)
        metadata = dict(row.metadata)
        sites.append(metadata[site_column] if site_column else row.group)
    return Rows(images, masks, np.array(labels), groups, sites, channels)


def tree_pairs(work: str):
    """(training site, other site, their rows) of the trees data written under `work`, trained
    on Wyoming and scored on California, then the reverse."""
    rows = load_rows(write_trees(os.path.join(work, "trees")), "site")
    sites = np.array(rows.sites)
    for site, other in (("wyoming", "california"), ("california", "wyoming")):
        yield site, other, rows.take(sites == site), rows.take(sites == other)


def group_split(groups: list[str], eval_fraction: float = 0.2) -> np.ndarray:
    """True for eval rows: a hash of the group, like ImportExampleGen's partition."""
    def bucket(group: str) -> float:
        return int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return np.array([bucket(g) < eval_fraction for g in groups])


def resolve(config: PipelineConfig, rows: Rows) -> PipelineConfig:
    """What the pipeline fills from the data (pipeline/data.py::resolve_config)."""
    return config.replace(num_views=len(rows.images[0]), num_masks=len(rows.masks[0]),
                          channels=config.channels or model_channels(rows.channels)).validate()


def transform(rows: Rows, config: PipelineConfig, masks_only: bool = False) -> np.ndarray:
    """The model's input of each region (or, with `masks_only`, its mask on the model's grid)."""
    import tensorflow as tf

    from masktfx.modules.transform import transform_regions

    out = []
    for start in range(0, len(rows.images), 256):
        out.append(transform_regions(tf.constant(rows.images[start:start + 256]),
                                     tf.constant(rows.masks[start:start + 256]), config,
                                     masks_only=masks_only).numpy())
    return np.concatenate(out)


ATTRIBUTION_REGIONS = 256  # test regions attributed per trained model (the first ones)


def attribution_inside(model, config: PipelineConfig, x_test: np.ndarray,
                       masks: np.ndarray) -> float:
    """Median share of the integrated gradients inside the mask over the first test regions,
    with the function the served `attribution` signature runs."""
    import tensorflow as tf

    from masktfx.modules.trainer import integrated_gradients

    shares = []
    for start in range(0, min(len(x_test), ATTRIBUTION_REGIONS), 32):
        stop = min(start + 32, ATTRIBUTION_REGIONS)
        heat = integrated_gradients(model, tf.constant(x_test[start:stop]),
                                    config.channels).numpy()
        inside = (heat * masks[start:stop]).sum(axis=(1, 2, 3))
        shares.extend(inside / np.maximum(heat.sum(axis=(1, 2, 3)), 1e-12))
    return float(np.median(shares))


def batches(x: np.ndarray, y: np.ndarray, batch_size: int):
    """Transformed feature batches, as Transform's output reaches `training_pairs`."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(
        {features.REGION_KEY: x, features.TRANSFORMED_LABEL_KEY: y}).batch(batch_size)


def training_inputs(config: PipelineConfig, fit: tuple, validation: tuple) -> tuple:
    """What `train_model` takes for transformed (x, y) fit and validation rows: the augmented
    training pairs, the validation pairs and the class weights."""
    from masktfx.modules.trainer import class_weights, training_pairs

    return (training_pairs(batches(*fit, config.batch_size), config, True),
            training_pairs(batches(*validation, config.batch_size), config, False),
            class_weights(np.bincount(fit[1], minlength=2).tolist()))


def fit_and_score(config: PipelineConfig, train: tuple, validation: tuple, test: tuple,
                  test_masks: np.ndarray | None = None) -> dict:
    """Train on `train`, stop early on `validation`, score AUC on `test` (x, y pairs); with
    `test_masks`, also the median share of the attribution inside the mask on `test`."""
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    from masktfx.modules.trainer import train_model

    tf.keras.utils.set_random_seed(config.seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    model, history = train_model(config, *training_inputs(config, train, validation), verbose=0)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    probability = model.predict(test[0], verbose=0).reshape(-1)
    found = {"auc": float(roc_auc_score(test[1], probability)),
             "epochs": len(history.history["loss"]), "train_seconds": seconds,
             "train_cpu_seconds": cpu_seconds}
    if test_masks is not None:
        found["attribution_inside"] = attribution_inside(model, config, test[0], test_masks)
    return found


def epoch_seconds(prepared: dict[str, tuple], rounds: int) -> dict:
    """Seconds per training epoch of each method of `prepared` (`prepare`'s result by method
    name), the methods taking turns.

    Each round trains every method for one epoch (with its validation pass, as `train_model`
    does), one after the other, after one epoch of warm-up each. The wall time of an epoch on
    these machines jumps between two levels, one twice the other, from minute to minute, so
    whole trainings run one after the other are not comparable; epochs run in turn are, and
    each round gives a ratio to the first method, of wall time and of the process's CPU time
    (which the jumps move less).
    """
    from masktfx.modules.model import build_model

    names = list(prepared)
    fits = {name: (build_model(config), *training_inputs(config, fit, validation))
            for name, (config, fit, validation) in prepared.items()}

    def one_epoch(name: str) -> tuple[float, float]:
        model, fit, validation, weights = fits[name]
        start, cpu_start = time.perf_counter(), time.process_time()
        model.fit(fit, validation_data=validation, epochs=1, class_weight=weights, verbose=0)
        return time.perf_counter() - start, time.process_time() - cpu_start

    for name in names:
        one_epoch(name)  # tracing and the first pass over the data
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            measured[name].append(one_epoch(name))
    found = {}
    for name, pairs in measured.items():
        found[name] = {}
        for index, kind in enumerate(("seconds", "cpu_seconds")):
            values = [pair[index] for pair in pairs]
            reference = [pair[index] for pair in measured[names[0]]]
            found[name].update({
                f"epoch_{kind}": [round(value, 2) for value in values],
                f"epoch_{kind}_median": round(statistics.median(values), 2),
                f"epoch_{kind}_ratio_to_{names[0]}": round(statistics.median(
                    value / base for value, base in zip(values, reference)), 3)})
    return found


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


def logistic_score(train: Rows, test: Rows) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(region_statistics(train), train.labels)
    probability = model.predict_proba(region_statistics(test))[:, 1]
    return {"auc": float(roc_auc_score(test.labels, probability))}


def prepare(name: str, base: PipelineConfig, train: Rows) -> tuple[PipelineConfig, tuple, tuple]:
    """The method's config, and its transformed training rows split into fit and validation
    (early stopping's) pairs by group."""
    config = resolve(base.replace(**METHODS[name]), train)
    is_validation = group_split(train.groups)
    if is_validation.all() or not is_validation.any() or len(
            set(train.labels[is_validation])) < 2:
        is_validation = np.arange(len(train.labels)) % 5 == 0  # too few groups to split by
    x_train = transform(train, config)
    return (config, (x_train[~is_validation], train.labels[~is_validation]),
            (x_train[is_validation], train.labels[is_validation]))


def run_method(name: str, prepared: tuple | None, train: Rows, test: Rows, seeds: list[int],
               attribution: bool = False) -> dict:
    """One method on one train/test pair: AUC per seed and the median. `prepared` is
    `prepare`'s result for a trained method (None for the logistic regression)."""
    if name == "logistic":
        auc = round(logistic_score(train, test)["auc"], 4)
        return {"auc_median": auc, "auc_per_seed": [auc]}
    config, fit, validation = prepared
    x_test = transform(test, config)
    test_masks = (transform(test, config, masks_only=True)[:ATTRIBUTION_REGIONS]
                  if attribution else None)
    runs = [fit_and_score(config.replace(seed=seed), fit, validation, (x_test, test.labels),
                          test_masks)
            for seed in seeds]
    found = {"auc_median": round(statistics.median(r["auc"] for r in runs), 4),
             "auc_per_seed": [round(r["auc"], 4) for r in runs],
             "epochs": [r["epochs"] for r in runs],
             "train_seconds_median": round(statistics.median(r["train_seconds"] for r in runs),
                                           1),
             "train_cpu_seconds_per_seed": [round(r["train_cpu_seconds"], 1) for r in runs]}
    if attribution:
        found["attribution_inside_median"] = round(
            statistics.median(r["attribution_inside"] for r in runs), 4)
        found["attribution_inside_per_seed"] = [round(r["attribution_inside"], 4) for r in runs]
        # the share of the model's input the masks cover: what a model blind to the region
        # would put inside them
        found["mask_share_of_input"] = round(float(test_masks.mean()), 4)
    return found


# The reference of issue #16's training-time target, and the method held to it.
TIME_REFERENCE, TIMED = "previous_default", "default"


def training_time(result: dict, prepared: dict[str, tuple], rounds: int) -> dict:
    """The default's training time against the reference's (`prepared`: `prepare`'s result for
    both, the reference first): seconds per epoch taken in turns (`epoch_seconds`), and, where
    this run trained both with early stopping, the estimates (per-epoch ratio) x (median epochs
    of the default / of the reference), of wall and of CPU time, beside the ratio of the two
    whole trainings' median CPU time."""
    timing = epoch_seconds(prepared, rounds)
    found: dict = {"rounds": rounds, **timing}
    if TIME_REFERENCE in result and TIMED in result:
        epochs = {name: statistics.median(result[name]["epochs"])
                  for name in (TIME_REFERENCE, TIMED)}
        found["epochs_median"] = epochs
        for kind in ("seconds", "cpu_seconds"):
            found[f"train_{kind}_ratio_estimate"] = round(
                timing[TIMED][f"epoch_{kind}_ratio_to_{TIME_REFERENCE}"] * epochs[TIMED]
                / epochs[TIME_REFERENCE], 3)
        found["train_cpu_seconds_ratio"] = round(
            statistics.median(result[TIMED]["train_cpu_seconds_per_seed"])
            / statistics.median(result[TIME_REFERENCE]["train_cpu_seconds_per_seed"]), 3)
    return found


def evaluate_pair(label: str, base: PipelineConfig, train: Rows, test: Rows,
                  runs: list[tuple[str, list[int]]], attribution: bool = False,
                  time_rounds: int = 0) -> dict:
    """Each (method, seeds) of `runs` trained on `train` and scored on `test`; with
    `time_rounds`, also the default's training time against the reference's."""
    result: dict = {"train": len(train.labels), "test": len(test.labels),
                    "test_positive_fraction": round(float(test.labels.mean()), 3)}
    timed: dict[str, tuple] = {}  # kept for the timing, which trains them again
    for name, seeds in runs:
        started = time.perf_counter()
        prepared = None if name == "logistic" else prepare(name, base, train)
        if time_rounds and name in (TIME_REFERENCE, TIMED):
            timed[name] = prepared
        result[name] = run_method(name, prepared, train, test, seeds, attribution)
        print(f"{label} {name}: {json.dumps(result[name])} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    if time_rounds:
        prepared = {name: timed[name] if name in timed else prepare(name, base, train)
                    for name in (TIME_REFERENCE, TIMED)}
        result["training_time"] = training_time(result, prepared, time_rounds)
        print(f"{label} training_time: {json.dumps(result['training_time'])}",
              file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=["trees", "nuclei_hard", "synthetic"],
                        choices=["trees", "nuclei_hard", "synthetic"])
    parser.add_argument("--methods", nargs="+", default=list(HEADLINE), choices=list(METHODS),
                        help="the headline methods by default")
    parser.add_argument("--ablations", nargs="*", default=list(ABLATIONS),
                        choices=list(ABLATIONS),
                        help="design ablations, run on --ablation-datasets (trees by default) "
                             "with --ablation-seeds")
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--ablation-datasets", nargs="*", default=["trees"],
                        choices=["trees", "nuclei_hard", "synthetic"])
    parser.add_argument("--synthetic-examples", type=int, default=1000)
    parser.add_argument("--attribution", action="store_true",
                        help="also the median share of each trained model's integrated "
                             f"gradients inside the mask, on the first {ATTRIBUTION_REGIONS} "
                             "test regions")
    parser.add_argument("--time-rounds", type=int, default=0,
                        help=f"also time {TIMED} against {TIME_REFERENCE} (#16's reference), "
                             "epoch by epoch in turns, for this many rounds per dataset")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-quality-")
    base = PipelineConfig()
    started = time.perf_counter()
    result: dict = {
        "benchmark": "quality",
        "seeds": args.seeds,
        "default_config": {k: v for k, v in base.to_custom_config().items() if k in (
            "model_preset", "norm_layer", "stem_norm", "channels", "image_size", "mask_mode",
            "keep_mask_channel", "crop_margin", "normalization", "augmentations", "epochs",
            "batch_size", "learning_rate")},
        "methods": {name: METHODS[name] for name in [*args.methods, *args.ablations]},
        "ablation_seeds": args.ablation_seeds,
        "targets": "trees wyoming->california: default AUC >= 0.85 and above seed and logistic; "
                   "nuclei_hard: default >= 0.95 and above both; synthetic >= 0.99",
    }
    def runs(dataset: str) -> list[tuple[str, list[int]]]:
        chosen = [(name, args.seeds) for name in args.methods]
        if dataset in args.ablation_datasets:
            chosen += [(name, args.ablation_seeds) for name in args.ablations]
        return chosen

    if "trees" in args.datasets:
        result["trees"] = {}
        for train_site, test_site, train, test in tree_pairs(work):
            result["trees"][f"{train_site}_to_{test_site}"] = evaluate_pair(
                f"trees {train_site}->{test_site}", base, train, test, runs("trees"),
                args.attribution, args.time_rounds)
    for name in ("nuclei_hard", "synthetic"):
        if name not in args.datasets:
            continue
        if name == "nuclei_hard":
            manifest = write_nuclei(os.path.join(work, name), hard=True)
        else:
            manifest = write_synthetic(os.path.join(work, name),
                                       num_examples=args.synthetic_examples, size=64)
        rows = load_rows(manifest, None)
        is_eval = group_split(rows.groups)
        result[name] = evaluate_pair(name, base, rows.take(~is_eval), rows.take(is_eval),
                                     runs(name), args.attribution, args.time_rounds)
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
