"""bench/quality: how well the models separate the classes on sites they never saw, in one run,
under a protocol that keeps the test site unseen (issue #31).

Datasets (all made by `masktfx demo-data`, nothing downloaded at run time):
- `trees`: real aerial RGB tree crowns of two regions (deepforest wheel), in both directions:
  trained on Wyoming and scored on California, and the reverse.
- `nuclei_hard`: real fluorescence nuclei (stardist wheel) whose negatives mostly overlap a
  nucleus.
- `synthetic`: the demo task.

The protocol: each training site is split by group with the pipeline's own hash buckets into
`fit` (training), `validation` (early stopping) and `holdout`, whose groups nothing is fitted
or stopped on. Every method is scored on the hold-out (`same_scene`) and, for trees, on the
other site (`other_site`). Choices between methods (`decisions` in the JSON) look only at
Wyoming's same-scene hold-out and the reverse direction (California -> Wyoming); California's
labels in the Wyoming -> California direction are scored once per method and never looked at
to choose. A change tried with and without unlabeled regions (`PAIRED`) is judged in both.

Methods (bench/quality_methods.py): the default config (`default`), the default when issue
#16 was filed (`previous_default`), two classical baselines fitted on fit + validation
(`logistic`: a logistic regression on colour and intensity statistics inside and around the
mask; `gradient_boosting`: gradient boosting on the DriftCheck's region descriptors), one-field
ablations (`--ablations`, or named in `--methods`), and the unlabeled-regions lever
(`pseudo_labels`, `ranked_pseudo_labels`: the scored site's regions, their labels unread;
`pseudo_labels_new_scene`: 1,000 candidate regions of the deepforest wheel's unannotated
scene). Every network runs with each seed (`--reverse-seeds` for California -> Wyoming); the
JSON gives each seed's AUC, their median, range, mean and its standard error, the AUC of the
seeds' mean probability (`ensemble_auc`) and the AUC with test-time flips (`tta_auc_median`,
`tta_auc_mean`; four passes per region). The transform and the training are the pipeline's
own functions (`modules.transform.transform_regions`, `modules.trainer.train_model`), run in
process.

    python bench/quality.py [--seeds 0 1 2] [--reverse-seeds 0 1 2 3 4 5 6 7]
                            [--datasets trees nuclei_hard synthetic]
                            [--methods default previous_default ...] [--ablations color ...]
                            [--attribution] [--time-rounds 8]
                            [--output bench/results/quality.json]

Prints JSON (and writes it to --output).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from measure import report, write_json  # noqa: E402
from quality_baselines import BASELINES, baseline_probabilities  # noqa: E402
from quality_data import (  # noqa: E402
    Rows,
    describe_splits,
    load_rows,
    single_site_manifest,
    three_way,
    tree_pairs,
    unlabeled_rows,
)
from quality_decisions import NEVER_SELECTED_ON, SELECTION_DATA, paired_decisions  # noqa: E402
from quality_methods import (  # noqa: E402
    ABLATIONS,
    HEADLINE,
    METHODS,
    NEW_SCENE_REGIONS,
    PAIRED,
    UNLABELED_SOURCES,
)
from quality_training import TIME_REFERENCE, TIMED, training_inputs, training_time  # noqa: E402

from masktfx import features  # noqa: E402
from masktfx.config import PipelineConfig, model_channels  # noqa: E402
from masktfx.demo_data import (  # noqa: E402
    UNLABELED_TREE_SCENE,
)


def resolve(config: PipelineConfig, rows: Rows) -> PipelineConfig:
    """What the pipeline fills from the data (pipeline/data.py::resolve_config)."""
    return config.replace(num_views=len(rows.images[0]), num_masks=len(rows.masks[0]),
                          channels=config.channels or model_channels(rows.channels)).validate()


def transform(rows: Rows, config: PipelineConfig) -> dict[str, np.ndarray]:
    """The Transform's outputs of each region: the model's input and the region statistics."""
    import tensorflow as tf

    from masktfx.modules.transform import transform_regions

    regions, statistics = [], []
    for start in range(0, len(rows.images), 256):
        found = transform_regions(tf.constant(rows.images[start:start + 256]),
                                  tf.constant(rows.masks[start:start + 256]), config,
                                  with_statistics=True)
        regions.append(found[0].numpy())
        statistics.append(found[1].numpy())
    return {features.REGION_KEY: np.concatenate(regions),
            features.REGION_STATISTICS_KEY: np.concatenate(statistics)}


def transform_masks(rows: Rows, config: PipelineConfig) -> np.ndarray:
    """Each region's mask on the model's grid."""
    import tensorflow as tf

    from masktfx.modules.transform import transform_regions

    return np.concatenate([transform_regions(
        tf.constant(rows.images[start:start + 256]), tf.constant(rows.masks[start:start + 256]),
        config, masks_only=True).numpy() for start in range(0, len(rows.images), 256)])


ATTRIBUTION_REGIONS = 256  # test regions attributed per trained model (the first ones)


def attribution_inside(model, config: PipelineConfig, x_test: dict[str, np.ndarray],
                       masks: np.ndarray) -> float:
    """Median share of the integrated gradients inside the mask over the first test regions,
    with the function the served `attribution` signature runs."""
    import tensorflow as tf

    from masktfx.modules.trainer import integrated_gradients

    shares = []
    for start in range(0, min(len(masks), ATTRIBUTION_REGIONS), 32):
        stop = min(start + 32, ATTRIBUTION_REGIONS)
        statistics = x_test[features.REGION_STATISTICS_KEY][start:stop]
        heat = integrated_gradients(
            model, tf.constant(x_test[features.REGION_KEY][start:stop]), config.channels,
            statistics=tf.constant(statistics) if config.statistics_input else None).numpy()
        inside = (heat * masks[start:stop]).sum(axis=(1, 2, 3))
        shares.extend(inside / np.maximum(heat.sum(axis=(1, 2, 3)), 1e-12))
    return float(np.median(shares))


def prepare(name: str, base: PipelineConfig, fit: Rows, validation: Rows
            ) -> tuple[PipelineConfig, tuple, tuple]:
    """The method's config and its transformed fit and validation (early stopping's) pairs."""
    config = resolve(base.replace(**METHODS[name]), fit)
    return (config, (transform(fit, config), fit.labels),
            (transform(validation, config), validation.labels))


def train_seed(config: PipelineConfig, fit: tuple, validation: tuple,
               unlabeled: dict[str, np.ndarray] | None = None) -> tuple:
    """One training as the Trainer runs it: `train_model` on the transformed fit pairs (early
    stopping on validation), then, with `unlabeled` transformed regions and `unlabeled_training`
    other than none, `self_train`. Returns the model, the first stage's history and the
    pseudo-label counts (None without that second stage)."""
    import tensorflow as tf

    from masktfx.modules.trainer import self_train, statistics_moments, train_model

    train, evaluation, weights = training_inputs(config, fit, validation)
    # pretraining (`pretraining_epochs`) reads the fit regions and the unlabeled ones, as the
    # Trainer reads its train split with the unlabeled regions in it
    pretraining_regions = None
    if config.pretraining_epochs:  # the copy of every region only where it is read
        pretraining_regions = tf.data.Dataset.from_tensor_slices({features.REGION_KEY: (
            np.concatenate([fit[0][features.REGION_KEY]] + ([] if unlabeled is None else [
                unlabeled[features.REGION_KEY]])))})
    model, history, pretrained = train_model(
        config, train, evaluation, weights, verbose=0,
        moments=statistics_moments(fit[0][features.REGION_STATISTICS_KEY]),
        pretraining_regions=pretraining_regions)
    if pretrained:  # in the run's log: whether the pretraining learnt
        print(f"pretraining: {pretrained}", file=sys.stderr, flush=True)
    if unlabeled is None or config.unlabeled_training == "none":
        return model, history, None
    _, used = self_train(
        model, config, tf.data.Dataset.from_tensor_slices(
            {**fit[0], features.TRANSFORMED_LABEL_KEY: fit[1]}),
        np.bincount(fit[1], minlength=2).tolist(), tf.data.Dataset.from_tensor_slices(unlabeled),
        evaluation, verbose=0)
    return model, history, used


def flipped_probabilities(model, x: dict[str, np.ndarray], config: PipelineConfig
                          ) -> np.ndarray:
    """Test-time augmentation: the mean probability over the four flips of each view (regions
    are [B, K, S, S, C])."""
    from masktfx.modules.model import model_inputs

    regions = x[features.REGION_KEY]
    found = [model.predict(model_inputs({**x, features.REGION_KEY: np.flip(regions, axis=axes)
                                         if axes else regions}, config), verbose=0).reshape(-1)
             for axes in ((), (2,), (3,), (2, 3))]
    return np.mean(found, axis=0)


def auc_summary(labels: np.ndarray, per_seed: list[np.ndarray]) -> dict:
    """Each seed's AUC, their median and spread; with several seeds, also the AUC of the
    seeds' mean probability (an ensemble of the seeds' models)."""
    from sklearn.metrics import roc_auc_score

    aucs = [round(float(roc_auc_score(labels, p)), 4) for p in per_seed]
    found = {"auc_median": round(statistics.median(aucs), 4), "auc_per_seed": aucs,
             "auc_spread": round(max(aucs) - min(aucs), 4),
             "auc_mean": round(statistics.mean(aucs), 4)}
    if len(per_seed) > 1:
        # the standard error of the mean over seeds: the noise of the estimate the decisions
        # compare (quality_decisions.MARGIN_RULE)
        found["auc_sem"] = round(statistics.stdev(aucs) / len(aucs) ** 0.5, 4)
        found["ensemble_auc"] = round(float(roc_auc_score(labels, np.mean(per_seed, axis=0))),
                                      4)
    return found


def run_method(name: str, base: PipelineConfig, splits: dict[str, Rows],
               scored: dict[str, Rows], seeds: list[int], attribution: bool = False,
               prepared: tuple | None = None,
               unlabeled_sources: dict[str, Rows] | None = None) -> dict:
    """One method trained on the `fit` split (early stopping on `validation`; the baselines fit
    on both) and scored on each of `scored` (name -> rows): AUC per seed, median, spread, the
    seeds' ensemble and, for the networks, test-time flips. `unlabeled_sources`: unlabeled rows
    by name (UNLABELED_SOURCES) besides the scored ones."""
    unlabeled_sources = unlabeled_sources or {}
    if name in BASELINES:
        train = splits["fit"].joined(splits["validation"])
        runs = [baseline_probabilities(name, seed, train, scored) for seed in seeds]
        return {key: auc_summary(rows.labels, [run[key] for run in runs])
                for key, rows in scored.items()}
    import tensorflow as tf

    from masktfx.modules.model import model_inputs

    config, fit, validation = prepared or prepare(name, base, splits["fit"],
                                                  splits["validation"])
    x_scored = {key: transform(rows, config) for key, rows in scored.items()}
    plain: dict[str, list] = {key: [] for key in scored}
    flipped: dict[str, list] = {key: [] for key in scored}
    found: dict = {"epochs": [], "train_cpu_seconds_per_seed": [], "train_seconds": [],
                   "tta_predict_seconds_ratio": []}
    for seed in seeds:
        seeded = config.replace(seed=seed)
        tf.keras.utils.set_random_seed(seed)
        start, cpu_start = time.perf_counter(), time.process_time()
        # As in the pipeline, the Trainer learns from unlabeled regions only where the data
        # holds some: the methods of UNLABELED_SOURCES have the site they are scored on,
        # unlabeled (what a user has of a new site before anyone labels it; its labels are
        # never read here), or the unannotated scene; the others have none.
        source = UNLABELED_SOURCES.get(name)
        if source and source not in x_scored and source not in unlabeled_sources:
            raise SystemExit(f"{name} needs unlabeled regions ({source}): trees only")
        unlabeled = None if not source else (
            x_scored[source] if source in x_scored
            else transform(unlabeled_sources[source], config))
        model, history, used = train_seed(seeded, fit, validation, unlabeled)
        if used is not None:
            found.setdefault("pseudo_labels_per_seed", []).append(used)
        found["train_seconds"].append(round(time.perf_counter() - start, 1))
        found["train_cpu_seconds_per_seed"].append(round(time.process_time() - cpu_start, 1))
        found["epochs"].append(len(history.history["loss"]))
        for key, x in x_scored.items():
            fed = model_inputs(x, seeded)
            plain[key].append(model.predict(fed, verbose=0).reshape(-1))  # traces predict
            started = time.process_time()
            flipped[key].append(flipped_probabilities(model, x, seeded))
            four = time.process_time() - started
            started = time.process_time()
            model.predict(fed, verbose=0)
            found["tta_predict_seconds_ratio"].append(
                four / max(time.process_time() - started, 1e-6))
        if attribution and "same_scene" in scored:
            masks = transform_masks(scored["same_scene"], seeded)
            found.setdefault("attribution_inside_per_seed", []).append(round(
                attribution_inside(model, seeded, x_scored["same_scene"], masks), 4))
    found["tta_predict_seconds_ratio"] = round(statistics.median(
        found["tta_predict_seconds_ratio"]), 2)
    for key, rows in scored.items():
        found[key] = auc_summary(rows.labels, plain[key])
        with_flips = auc_summary(rows.labels, flipped[key])
        found[key]["tta_auc_median"] = with_flips["auc_median"]
        found[key]["tta_auc_mean"] = with_flips["auc_mean"]
    return found


def evaluate_site(label: str, base: PipelineConfig, splits: dict[str, Rows],
                  scored: dict[str, Rows], runs: list[tuple[str, list[int]]],
                  attribution: bool = False, time_rounds: int = 0,
                  unlabeled_sources: dict[str, Rows] | None = None) -> dict:
    """Each (method, seeds) of `runs` trained on `splits` (one site's fit / validation /
    holdout) and scored on each of `scored`; with `time_rounds`, also the default's training
    time against the reference's."""
    result: dict = {"splits": describe_splits(splits),
                    "scored": {key: describe_splits({key: rows})[key]
                               for key, rows in scored.items()}}
    timed: dict[str, tuple] = {}  # kept for the timing, which trains them again
    for name, seeds in runs:
        started = time.perf_counter()
        prepared = None
        if name not in BASELINES:
            prepared = prepare(name, base, splits["fit"], splits["validation"])
            if time_rounds and name in (TIME_REFERENCE, TIMED):
                timed[name] = prepared
        result[name] = run_method(name, base, splits, scored, seeds, attribution, prepared,
                                  unlabeled_sources)
        print(f"{label} {name}: {json.dumps(result[name])} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    if time_rounds:
        prepared = {name: timed.get(name) or prepare(name, base, splits["fit"],
                                                     splits["validation"])
                    for name in (TIME_REFERENCE, TIMED)}
        result["training_time"] = training_time(result, prepared, time_rounds)
        print(f"{label} training_time: {json.dumps(result['training_time'])}",
              file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reverse-seeds", type=int, nargs="+", default=None,
                        help="the seeds of trees California -> Wyoming (default: --seeds): "
                             "its 25 training regions make a seed cheap and its AUC noisy")
    parser.add_argument("--datasets", nargs="+", default=["trees", "nuclei_hard", "synthetic"],
                        choices=["trees", "nuclei_hard", "synthetic"])
    parser.add_argument("--methods", nargs="+", default=list(HEADLINE), choices=list(METHODS),
                        help="the headline methods by default")
    parser.add_argument("--ablations", nargs="*", default=[], choices=list(ABLATIONS),
                        help="design ablations, run on --ablation-datasets (trees by default)")
    parser.add_argument("--ablation-datasets", nargs="*", default=["trees"],
                        choices=["trees", "nuclei_hard", "synthetic"])
    parser.add_argument("--synthetic-examples", type=int, default=1000)
    parser.add_argument("--attribution", action="store_true",
                        help="also the median share of each trained model's integrated "
                             f"gradients inside the mask, on the first {ATTRIBUTION_REGIONS} "
                             "hold-out regions")
    parser.add_argument("--time-rounds", type=int, default=0,
                        help=f"also time {TIMED} against {TIME_REFERENCE} (#16's reference), "
                             "epoch by epoch in turns, for this many rounds per dataset")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args()
    reverse_seeds = args.reverse_seeds or args.seeds
    work = tempfile.mkdtemp(prefix="bench-quality-")
    base = PipelineConfig()
    started = time.perf_counter()
    result: dict = {
        "benchmark": "quality",
        "seeds": args.seeds,
        "reverse_seeds": reverse_seeds,
        "default_config": {k: v for k, v in base.to_custom_config().items() if k in (
            "model_preset", "norm_layer", "stem_norm", "channels", "image_size", "mask_mode",
            "keep_mask_channel", "crop_margin", "normalization", "augmentations", "epochs",
            "batch_size", "learning_rate", "tower_pooling", "unlabeled_training")},
        "methods": {name: METHODS[name] for name in [*args.methods, *args.ablations]},
        "protocol": {
            "splits": "each site split by group with the pipeline's hash buckets "
                      f"({base.train_buckets}/{base.validation_buckets}/{base.test_buckets}): "
                      "fit (training), validation (early stopping), holdout (same_scene: "
                      "never used for training or early stopping); baselines fit on fit + "
                      "validation",
            "selection_data": [f"trees {d} {s}" for d, s in SELECTION_DATA],
            "never_selected_on": [f"trees {d} {s}" for d, s in NEVER_SELECTED_ON],
        },
        "targets": "trees wyoming->california >= 0.95, california->wyoming >= 0.88, same-scene "
                   "hold-out >= 0.96, default above both baselines everywhere; nuclei_hard >= "
                   "0.97; synthetic >= 0.99",
    }

    def runs(dataset: str, seeds: list[int]) -> list[tuple[str, list[int]]]:
        chosen = list(args.methods)
        if dataset in args.ablation_datasets:
            chosen += args.ablations
        return [(name, [seeds[0]] if name in BASELINES else seeds) for name in chosen]

    if "trees" in args.datasets:
        result["trees"] = {}
        new_scene = "pseudo_labels_new_scene" in [*args.methods, *args.ablations]
        pairs = list(tree_pairs(work, NEW_SCENE_REGIONS if new_scene else 0))
        sources = {"new_scene": unlabeled_rows(work)} if new_scene else {}
        if new_scene:
            result["unlabeled_new_scene"] = {"regions": len(sources["new_scene"].labels),
                                             "scene": UNLABELED_TREE_SCENE[1]}
        for train_site, test_site, train, other in pairs:
            splits, split_by = three_way(train)
            found = evaluate_site(f"trees {train_site}->{test_site}", base, splits,
                                  {"same_scene": splits["holdout"], "other_site": other},
                                  runs("trees", reverse_seeds if train_site == "california"
                                       else args.seeds),
                                  args.attribution, args.time_rounds, sources)
            result["trees"][f"{train_site}_to_{test_site}"] = {"split_by": split_by, **found}
            write_json(result, args.output)  # after each dataset: a later failure loses none
        candidates = [name for name in [*args.methods, *args.ablations]
                      if name not in BASELINES]
        result["decisions"] = paired_decisions(result["trees"], candidates,
                                               set(UNLABELED_SOURCES), PAIRED)
    for name in ("nuclei_hard", "synthetic"):
        if name not in args.datasets:
            continue
        manifest = single_site_manifest(work, name, args.synthetic_examples)
        splits, split_by = three_way(load_rows(manifest, None))
        result[name] = {"split_by": split_by, **evaluate_site(
            name, base, splits, {"same_scene": splits["holdout"]}, runs(name, args.seeds),
            args.attribution, args.time_rounds)}
        write_json(result, args.output)
    result["seconds"] = round(time.perf_counter() - started, 1)
    report(result, args.output)


if __name__ == "__main__":
    main()
