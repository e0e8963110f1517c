"""Trainer module file: `run_fn` trains the model on the transformed examples and saves it with
the Transform graph attached, so serving decodes, masks and crops exactly as training did.

Signatures of the SavedModel:
- `serving_default`: `examples` (serialized tf.Example without the label) -> `probability`,
  `label`, `ood_score` and `in_distribution` (modules/reliability.py).
- `predict_raw`: `images` (string [batch, K]) and `masks` (string [batch, 1 or K]) -> the same.
- `transform_features`: `examples` -> the transformed features (for TFMA on transformed features).
- `attribution`: `examples` -> where the model looked: integrated gradients of `probability` on
  the model's input, their share inside the region's mask, the heat map and the mask on the
  model's grid (the Evaluator's attribution check and the report's heat maps).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from masktfx import features, performance
from masktfx.config import PipelineConfig
from masktfx.modules import reliability
from masktfx.modules.augmentation import augment
from masktfx.modules.model import build_model, model_inputs
from masktfx.modules.operating_point import operating_point
from masktfx.modules.pretraining import pretrain
from masktfx.modules.transform import transform_regions


def _transformed_dataset(file_pattern: list[str] | str, tf_transform_output: tft.TFTransformOutput,
                         batch_size: int) -> tf.data.Dataset:
    files = tf.io.gfile.glob(file_pattern) if isinstance(file_pattern, str) else [
        name for pattern in file_pattern for name in tf.io.gfile.glob(pattern)]
    if not files:
        raise ValueError(f"no transformed examples match {file_pattern}")
    spec = tf_transform_output.transformed_feature_spec()
    dataset = tf.data.Dataset.from_tensor_slices(sorted(files)).interleave(
        lambda name: tf.data.TFRecordDataset(name, compression_type="GZIP"),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return dataset.batch(batch_size).map(
        lambda records: tf.io.parse_example(records, spec), num_parallel_calls=tf.data.AUTOTUNE)


def make_input(file_pattern: list[str] | str, tf_transform_output: tft.TFTransformOutput,
               config: PipelineConfig, training: bool) -> tf.data.Dataset:
    """(region, label) batches of transformed examples; shuffled and augmented for training."""
    return training_pairs(_transformed_dataset(file_pattern, tf_transform_output,
                                               config.batch_size), config, training)


def training_pairs(batches: tf.data.Dataset, config: PipelineConfig, training: bool
                   ) -> tf.data.Dataset:
    """Batches of transformed feature dicts -> (model input, label), the regions augmented only
    for training."""
    if training:
        batches = batches.unbatch().shuffle(2048, seed=config.seed).batch(config.batch_size)

    def split(batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor | dict, tf.Tensor]:
        if training and config.augmentation_list:
            batch = {**batch, features.REGION_KEY: augment(
                batch[features.REGION_KEY], config.channels, config.augmentation_list)}
        return model_inputs(batch, config), batch[features.TRANSFORMED_LABEL_KEY]

    return batches.map(split, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def labelled(batches: tf.data.Dataset, unlabeled: bool = False) -> tf.data.Dataset:
    """The labelled regions of batches of transformed feature dicts (or, with `unlabeled`,
    those nobody has labelled), one by one."""
    def keep(example: dict[str, tf.Tensor]) -> tf.Tensor:
        is_unlabeled = tf.equal(example[features.TRANSFORMED_LABEL_KEY], features.UNLABELED)
        return is_unlabeled if unlabeled else tf.logical_not(is_unlabeled)

    return batches.unbatch().filter(keep)


def label_counts_and_moments(file_pattern: list[str] | str,
                             tf_transform_output: tft.TFTransformOutput
                             ) -> tuple[list[int], tuple[np.ndarray, np.ndarray], int]:
    """[negatives, positives] of the labelled training regions, the mean and standard deviation
    of their region statistics, and the number of unlabeled regions, from one cheap pass."""
    counts = [0, 0]
    unlabeled = 0
    statistics = []
    for batch in _transformed_dataset(file_pattern, tf_transform_output, 1024):
        labels = batch[features.TRANSFORMED_LABEL_KEY].numpy().reshape(-1)
        known = labels != features.UNLABELED
        counts[1] += int((labels == 1).sum())
        counts[0] += int((labels == 0).sum())
        unlabeled += int((~known).sum())
        statistics.append(batch[features.REGION_STATISTICS_KEY].numpy()[known])
    return counts, statistics_moments(np.concatenate(statistics)), unlabeled


def statistics_moments(statistics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of [N, D] region statistics: the mean and standard deviation."""
    return statistics.mean(axis=0), statistics.std(axis=0)


def class_weights(counts: list[int]) -> dict[int, float]:
    """Balanced weights n / (2 n_c)."""
    total = sum(counts)
    if min(counts) == 0:
        raise ValueError(f"the training split holds only one class (counts {counts}); "
                         "a binary classifier needs both")
    return {label: total / (2.0 * count) for label, count in enumerate(counts)}


def with_embedding(model: tf.keras.Model) -> tf.keras.Model:
    """The model with a second output: the fused features its last layer decides on."""
    return tf.keras.Model(model.input, [model.output, model.get_layer("fuse_views").output])


def make_signatures(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput,
                    config: PipelineConfig, threshold: float | None = None,
                    ood: reliability.OodScore | None = None) -> dict[str, Any]:
    """The serving signatures; `label` is probability >= `threshold` (default: the config's
    decision_threshold); with `ood`, `ood_score` and `in_distribution` too."""
    model.tft_layer = tf_transform_output.transform_features_layer()
    model.ood = ood
    scorer = with_embedding(model)
    raw_spec = tf_transform_output.raw_feature_spec()
    serving_spec = {key: raw_spec[key] for key in (features.IMAGES_KEY, features.MASKS_KEY)}
    num_masks = serving_spec[features.MASKS_KEY].shape[0]
    threshold = config.decision_threshold if threshold is None else threshold

    def predict(raw: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        transformed = model.tft_layer(raw)
        output, embedding = scorer(model_inputs(transformed, config), training=False)
        probability = tf.reshape(output, [-1])
        answers = {features.PROBABILITY_OUTPUT: probability,
                   features.PREDICTED_LABEL_OUTPUT: tf.cast(probability >= threshold, tf.int64)}
        if ood is not None:
            found = ood(embedding, transformed[features.REGION_STATISTICS_KEY])
            answers[features.OOD_SCORE_OUTPUT] = found["ood_score"]
            answers[features.IN_DISTRIBUTION_OUTPUT] = found["in_distribution"]
        return answers

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=features.EXAMPLES_INPUT)])
    def serve_examples(examples):
        return predict(tf.io.parse_example(examples, serving_spec))

    @tf.function(input_signature=[
        tf.TensorSpec([None, config.num_views], tf.string, name=features.IMAGES_KEY),
        tf.TensorSpec([None, num_masks], tf.string, name=features.MASKS_KEY)])
    def predict_raw(images, masks):
        return predict({features.IMAGES_KEY: images, features.MASKS_KEY: masks})

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=features.EXAMPLES_INPUT)])
    def transform_features(examples):
        return model.tft_layer(tf.io.parse_example(examples, raw_spec))

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=features.EXAMPLES_INPUT)])
    def attribution(examples):
        raw = tf.io.parse_example(examples, serving_spec)
        transformed = model.tft_layer(raw)
        regions = transformed[features.REGION_KEY]
        masks = transform_regions(raw[features.IMAGES_KEY], raw[features.MASKS_KEY], config,
                                  masks_only=True)
        statistics = transformed[features.REGION_STATISTICS_KEY] if config.statistics_input \
            else None
        heat = integrated_gradients(model, regions, config.channels, statistics=statistics)
        inside = tf.reduce_sum(heat * masks, axis=[1, 2, 3])
        total = tf.reduce_sum(heat, axis=[1, 2, 3])
        return {features.INSIDE_SHARE_OUTPUT: inside / tf.maximum(total, 1e-12),
                features.HEAT_OUTPUT: heat, features.REGION_MASK_OUTPUT: masks,
                features.MODEL_INPUT_OUTPUT: regions[..., 0],
                features.PROBABILITY_OUTPUT: tf.reshape(
                    model(model_inputs(transformed, config), training=False), [-1])}

    return {
        features.SERVING_SIGNATURE: serve_examples.get_concrete_function(),
        features.RAW_SIGNATURE: predict_raw.get_concrete_function(),
        features.TRANSFORM_SIGNATURE: transform_features.get_concrete_function(),
        features.ATTRIBUTION_SIGNATURE: attribution.get_concrete_function(),
    }


def integrated_gradients(model: tf.keras.Model, regions: tf.Tensor, channels: int,
                         steps: int = features.ATTRIBUTION_STEPS,
                         statistics: tf.Tensor | None = None) -> tf.Tensor:
    """|Integrated gradients| (Sundararajan et al., 2017) of the probability on each pixel of
    the image channels of `regions` [B, K, S, S, C'], summed over them: [B, K, S, S].

    The baseline is 0 in the image channels, the region's mean after the Transform's region
    normalization (an image without contrast); a mask channel keeps its values, because where
    the region is is given, not decided. Midpoint rule over `steps` points of the path. A
    model with `statistics_input` gets the regions' `statistics` unchanged along the path: the
    attribution is that of the pixels the model looks at.
    """
    is_image = tf.range(tf.shape(regions)[-1]) < channels
    baseline = tf.where(is_image, tf.zeros_like(regions), regions)
    total = tf.zeros_like(regions)
    for step in tf.range(steps):
        alpha = (tf.cast(step, tf.float32) + 0.5) / steps
        point = baseline + alpha * (regions - baseline)
        with tf.GradientTape() as tape:
            tape.watch(point)
            probability = model(point if statistics is None else {
                features.REGION_KEY: point, features.REGION_STATISTICS_KEY: statistics},
                training=False)
        total += tape.gradient(probability, point)
    attributions = (regions - baseline) * total / steps
    return tf.reduce_sum(tf.abs(attributions[..., :channels]), axis=-1)


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """The configured strategy; the model is built and compiled in its scope."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()  # the default: no distribution


class EpochLog(tf.keras.callbacks.Callback):
    """Reports each epoch to the progress logger (`masktfx run` shows it; Keras' own epoch
    lines go to the run's log)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = {name: float(value) for name, value in (logs or {}).items()}
        values.update(epoch=epoch + 1, epochs=self.epochs)
        logging.getLogger(features.TRAINER_PROGRESS_LOGGER).info("epoch %(epoch)d/%(epochs)d",
                                                                 values)


EARLY_STOPPING_WARMUP_EPOCHS = 3


def train_model(config: PipelineConfig, train: tf.data.Dataset, evaluation: tf.data.Dataset,
                weights: dict[int, float], log_dir: str | None = None,
                steps_per_epoch: int | None = None, verbose: int = 2,
                moments: tuple[np.ndarray, np.ndarray] | None = None,
                pretraining_regions: tf.data.Dataset | None = None
                ) -> tuple[tf.keras.Model, tf.keras.callbacks.History, dict]:
    """Fit with early stopping on the validation split's AUC (best weights kept); shared by
    run_fn and bench. `moments`: the training split's `statistics_moments`, which a model with
    `statistics_input` needs. With `pretraining_epochs`, the tower is first pretrained on
    `pretraining_regions` (modules/pretraining.py); what that found is returned third ({} when
    it did not run)."""
    pretrained: dict = {}
    with distribution_strategy(config.distribution_strategy).scope():
        model = build_model(config, moments)
        if config.pretraining_epochs and pretraining_regions is not None:
            pretrained = pretrain(model, pretraining_regions, config, verbose)
    callbacks = [
        # The first epochs of a freshly initialized network can score a lucky validation AUC that
        # the next `patience` epochs, still learning, do not beat: watched from the start,
        # early stopping then ends a run that was about to learn (the demo data, once in a few
        # runs, since CPU training is not bit-for-bit repeatable).
        tf.keras.callbacks.EarlyStopping(monitor="val_auc", mode="max",
                                         patience=config.early_stopping_patience,
                                         restore_best_weights=True,
                                         start_from_epoch=EARLY_STOPPING_WARMUP_EPOCHS),
        EpochLog(config.epochs),
    ]
    if log_dir:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    history = model.fit(train, validation_data=evaluation, epochs=config.epochs,
                        steps_per_epoch=steps_per_epoch, class_weight=weights,
                        callbacks=callbacks, verbose=verbose)
    return model, history, pretrained


# The most pseudo-labelled regions kept in memory for the second stage of `self_train`.
MAX_PSEUDO_LABELS = 20_000


def _flip_probabilities(model: tf.keras.Model, batch: dict[str, tf.Tensor],
                        config: PipelineConfig) -> np.ndarray:
    """The mean probability over the four flips of each view (a label that holds under flips
    is less often wrong)."""
    regions = batch[features.REGION_KEY]
    return tf.reduce_mean(tf.stack([
        tf.reshape(model(model_inputs({**batch, features.REGION_KEY: tf.reverse(
            regions, axis) if axis else regions}, config), training=False), [-1])
        for axis in ([], [2], [3], [2, 3])]), axis=0).numpy()


def pseudo_labels(model: tf.keras.Model, unlabeled: tf.data.Dataset, config: PipelineConfig,
                  present_share: float = 0.5) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The unlabeled regions (a dataset of transformed feature dicts, one region each) that
    `model` is most confident about, with a label. `pseudo_labels`: of the regions it predicts
    as each class, the `pseudo_label_share` most confident, with the label it predicts
    (class-balanced self-training, Zou et al., ECCV 2018: a threshold per class, so a model
    that is more sure of one class still gives both, when it predicts both).
    `ranked_pseudo_labels`: the regions ranked by probability, the `pseudo_label_share` of them
    at the two ends, split between the classes as the labelled regions are (`present_share`):
    the top ones present, the bottom ones absent, whatever side of 0.5 they fall on. On a site
    it never saw, a model's probabilities shift while its ranking (its AUC) holds better, so
    this still gives both classes where the first rule gives one. Two passes over the regions:
    the first predicts them (the probabilities alone are held) and sets the thresholds, the
    second keeps the regions past them (at most MAX_PSEUDO_LABELS; the dataset must give the
    same order twice). Returns them and what was found: regions seen, and kept per label."""
    ranked = config.unlabeled_training == "ranked_pseudo_labels"
    probabilities = np.concatenate([_flip_probabilities(model, batch, config)
                                    for batch in unlabeled.batch(256)] or [np.zeros(0)])
    seen = len(probabilities)
    if ranked:
        ordered = np.sort(probabilities)
        present = min(seen, round(seen * config.pseudo_label_share * present_share))
        absent = min(seen - present, round(seen * config.pseudo_label_share
                                           * (1.0 - present_share)))
        # the lowest probability called present, the highest called absent
        lowest_present = ordered[seen - present] if present else np.inf
        highest_absent = ordered[absent - 1] if absent else -np.inf
    else:
        def most_confident(found: np.ndarray, last: bool) -> float:
            """Where a class's most confident share begins (none predicted: none kept)."""
            if not len(found):
                return np.inf if last else -np.inf
            ordered = np.sort(found)[::-1] if last else np.sort(found)
            return ordered[max(0, math.ceil(len(found) * config.pseudo_label_share) - 1)]

        predicted = probabilities >= 0.5
        lowest_present = most_confident(probabilities[predicted], last=True)
        highest_absent = most_confident(probabilities[~predicted], last=False)
    kept: dict[str, list[np.ndarray]] = {}
    offset = total = 0
    # the second pass over the regions, whose probabilities the first found
    for batch in unlabeled.batch(256):
        probability = probabilities[offset:offset + len(batch[features.REGION_KEY])]
        offset += len(probability)
        keep = (probability >= lowest_present) | (probability <= highest_absent)
        if not keep.any():
            continue
        found = {key: value.numpy()[keep] for key, value in batch.items()}
        found[features.TRANSFORMED_LABEL_KEY] = (probability[keep] >= lowest_present).astype(
            np.int64)
        for key, value in found.items():
            kept.setdefault(key, []).append(value)
        total += int(keep.sum())
        if total >= MAX_PSEUDO_LABELS:
            break
    joined = {key: np.concatenate(parts)[:MAX_PSEUDO_LABELS] for key, parts in kept.items()}
    labels = joined.get(features.TRANSFORMED_LABEL_KEY, np.zeros(0, np.int64))
    return joined, {"unlabeled_seen": seen, "pseudo_labelled_0": int((labels == 0).sum()),
                    "pseudo_labelled_1": int((labels == 1).sum())}


def self_train(model: tf.keras.Model, config: PipelineConfig, labelled_regions: tf.data.Dataset,
               counts: list[int], unlabeled: tf.data.Dataset, evaluation: tf.data.Dataset,
               verbose: int = 2) -> tuple[tf.keras.callbacks.History | None, dict[str, int]]:
    """Pseudo-labelling (`unlabeled_training`): the trained `model` labels the
    unlabeled regions it is most confident about (`pseudo_labels`), and training goes on from
    its weights on the labelled regions and those, drawn in proportion, with early stopping on
    the validation split as before. `labelled_regions` and `unlabeled` hold transformed feature
    dicts, one region each (`labelled`). Returns the second stage's history (None when there
    was no unlabeled region) and the counts of `pseudo_labels`."""
    found, used = pseudo_labels(model, unlabeled, config, present_share=counts[1] / sum(counts))
    pseudo = len(found.get(features.TRANSFORMED_LABEL_KEY, ()))
    logging.info("pseudo-labels: %s", used)
    if not pseudo:
        return None, used
    labelled_count = sum(counts)
    mixed = tf.data.Dataset.sample_from_datasets(
        [labelled_regions.repeat(), tf.data.Dataset.from_tensor_slices(found).repeat()],
        weights=[labelled_count / (labelled_count + pseudo), pseudo / (labelled_count + pseudo)],
        seed=config.seed)
    train = training_pairs(mixed.batch(config.batch_size), config, True)
    weights = class_weights([counts[0] + used["pseudo_labelled_0"],
                             counts[1] + used["pseudo_labelled_1"]])
    callbacks = [tf.keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=config.early_stopping_patience,
        restore_best_weights=True), EpochLog(config.epochs)]
    history = model.fit(train, validation_data=evaluation, epochs=max(1, config.epochs // 2),
                        steps_per_epoch=max(1, math.ceil((labelled_count + pseudo)
                                                         / config.batch_size)),
                        class_weight=weights, callbacks=callbacks, verbose=verbose)
    return history, used


def region_outputs(model: tf.keras.Model, file_pattern: list[str] | str,
                   tf_transform_output: tft.TFTransformOutput, config: PipelineConfig,
                   limit: int | None = None) -> dict[str, np.ndarray]:
    """Labels, probabilities, fused features and region statistics of the labelled transformed
    examples (the first `limit` of them), without augmentation."""
    scorer = with_embedding(model)
    found: dict[str, list[np.ndarray]] = {"labels": [], "probabilities": [], "embeddings": [],
                                          "statistics": []}
    seen = 0
    for batch in labelled(_transformed_dataset(file_pattern, tf_transform_output, 256)).batch(
            256):
        output, embedding = scorer(model_inputs(batch, config), training=False)
        found["probabilities"].append(tf.reshape(output, [-1]).numpy())
        found["embeddings"].append(embedding.numpy())
        found["statistics"].append(batch[features.REGION_STATISTICS_KEY].numpy())
        found["labels"].append(batch[features.TRANSFORMED_LABEL_KEY].numpy().reshape(-1))
        seen += len(found["labels"][-1])
        if limit is not None and seen >= limit:
            break
    return {name: np.concatenate(values)[:limit] for name, values in found.items()}


def choose_operating_point(validation: dict[str, np.ndarray], config: PipelineConfig) -> dict:
    """The served threshold, chosen by `threshold_policy` on the validation split's
    predictions."""
    point = operating_point(validation["labels"], validation["probabilities"],
                            config.threshold_policy, config.decision_threshold, seed=config.seed)
    logging.info("operating point: %s", point)
    return point


def fit_reliability(train: dict[str, np.ndarray], validation: dict[str, np.ndarray],
                    threshold: float) -> tuple[reliability.OodScore, dict[str, Any]]:
    """The OOD score (fitted on `train`, its threshold on `validation`) and the reliability
    file: the calibration on `validation` and what the validation split gave."""
    ood = reliability.fit_ood(train["embeddings"], train["statistics"])
    validation_scores = reliability.ood_scores(ood, validation["embeddings"],
                                               validation["statistics"])
    ood_threshold = reliability.ood_threshold(validation_scores)
    platt = performance.fit_calibration(validation["labels"], validation["probabilities"])
    calibrations = {"platt": platt, "auc_matched": performance.fit_auc_matched(
        validation["labels"], validation["probabilities"], platt)}
    labels, probabilities = validation["labels"], validation["probabilities"]
    measured = {"regions": int(len(labels)), "auc": performance.auc(labels, probabilities),
                "accuracy": float(np.mean((probabilities >= threshold) == (labels == 1)))
                if len(labels) else float("nan"),
                "in_distribution": float(np.mean(validation_scores <= ood_threshold))
                if len(labels) else float("nan")}
    return (reliability.OodScore(ood, ood_threshold),
            reliability.summary(calibrations, ood_threshold, measured))


def run_fn(fn_args: Any) -> None:
    """TFX Trainer entry point (generic trainer); `custom_config` holds the TRAINER_FIELDS."""
    config = PipelineConfig.from_component_config(fn_args.custom_config)
    tf.keras.utils.set_random_seed(config.seed)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)

    def regions(unlabeled: bool = False) -> tf.data.Dataset:
        # `train` and, when the data holds unlabeled regions, the `unlabeled` split
        return labelled(_transformed_dataset(fn_args.train_files, tf_transform_output,
                                             config.batch_size), unlabeled)

    train = training_pairs(regions().batch(config.batch_size), config, training=True)
    evaluation = make_input(fn_args.eval_files, tf_transform_output, config, training=False)
    counts, moments, unlabeled_count = label_counts_and_moments(fn_args.train_files,
                                                                tf_transform_output)
    weights = class_weights(counts)
    # One iterator across all epochs: the shuffle buffer fills once, not at every epoch start.
    train = train.repeat()
    if fn_args.train_steps:
        steps_per_epoch = max(1, int(fn_args.train_steps) // config.epochs)
    else:
        steps_per_epoch = max(1, math.ceil(sum(counts) / config.batch_size))
    # pretraining reads every region of the train split, labelled or not, its labels unread
    model, history, pretrained = train_model(
        config, train, evaluation, weights, fn_args.model_run_dir, steps_per_epoch,
        moments=moments, pretraining_regions=_transformed_dataset(
            fn_args.train_files, tf_transform_output, config.batch_size).unbatch())
    logging.info("class weights %s; epochs run %d", weights, len(history.history["loss"]))
    unlabeled_use = {"unlabeled_regions": unlabeled_count,
                     "unlabeled_training": config.unlabeled_training}
    histories = [history]
    if unlabeled_count and config.unlabeled_training != "none":
        second, found = self_train(model, config, regions(), counts, regions(unlabeled=True),
                                   evaluation)
        unlabeled_use.update(found)
        histories += [second] if second else []
    validation = region_outputs(model, fn_args.eval_files, tf_transform_output, config)
    point = choose_operating_point(validation, config)
    ood, reliability_found = fit_reliability(
        region_outputs(model, fn_args.train_files, tf_transform_output, config,
                       limit=reliability.MAX_FIT_REGIONS), validation, point["threshold"])
    signatures = make_signatures(model, tf_transform_output, config, point["threshold"], ood)
    # The signatures' gradients (attribution) are traced into their graphs here; saving the
    # custom gradient of GroupNormalization as well would only serve differentiating the
    # loaded model again, and makes every save and load of it several seconds slower.
    model.save(fn_args.serving_model_dir, save_format="tf", signatures=signatures,
               options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    for name, found in ((features.OPERATING_POINT_FILE, point),
                        (features.RELIABILITY_FILE, reliability_found)):
        path = os.path.join(fn_args.serving_model_dir, name)
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path, "w") as out:
            out.write(json.dumps(found, indent=1))
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    summary_path = os.path.join(fn_args.model_run_dir, features.TRAINING_SUMMARY)
    with tf.io.gfile.GFile(summary_path, "w") as out:
        out.write(json.dumps({"class_weights": weights, "unlabeled": unlabeled_use,
                              "pretraining": pretrained,
                              "history": {key: [float(v) for stage in histories
                                                for v in stage.history[key]]
                                          for key in history.history}}))
