"""bench/quality's training inputs and its timing of issue #16's training-time target: epochs
of two methods taken in turns (`epoch_seconds`), and the default's training time against the
reference's (`training_time`)."""

from __future__ import annotations

import statistics
import time

import numpy as np

from masktfx import features
from masktfx.config import PipelineConfig


def batches(x: dict[str, np.ndarray], y: np.ndarray, batch_size: int):
    """Transformed feature batches, as Transform's output reaches `training_pairs`."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(
        {**x, features.TRANSFORMED_LABEL_KEY: y}).batch(batch_size)


def training_inputs(config: PipelineConfig, fit: tuple, validation: tuple) -> tuple:
    """What `train_model` takes for transformed (x, y) fit and validation rows: the augmented
    training pairs, the validation pairs and the class weights."""
    from masktfx.modules.trainer import class_weights, training_pairs

    return (training_pairs(batches(*fit, config.batch_size), config, True),
            training_pairs(batches(*validation, config.batch_size), config, False),
            class_weights(np.bincount(fit[1], minlength=2).tolist()))


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
    from masktfx.modules.trainer import statistics_moments

    names = list(prepared)
    fits = {name: (build_model(config, statistics_moments(
                       fit[0][features.REGION_STATISTICS_KEY])),
                   *training_inputs(config, fit, validation))
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
