"""bench/quality_time: the default's training time with unlabeled regions against the
default's training when issue #31 was filed (`ISSUE_DEFAULT`: no unlabeled regions, the
augmentations of then), whole trainings in turns (issue #31: the default's training time at
most 1.5x, CPU time, in turns). `--method` times another of bench/quality's methods instead.

Trees, trained on Wyoming's fit split (early stopping on its validation split) as in
bench/quality.py; the unlabeled regions are California's 74, their labels unread. Each round
trains both with the round's seed, one after the other (the order alternates), and takes the
ratio of their CPU times (the process's, all threads) and of their wall times; the JSON gives
every round and the medians.

    python bench/quality_time.py [--rounds 3] [--method default]
                                 [--output bench/results/quality-time-unlabeled.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from measure import report  # noqa: E402
from quality import prepare, train_seed, transform  # noqa: E402
from quality_data import three_way, tree_pairs  # noqa: E402
from quality_methods import METHODS  # noqa: E402

from masktfx.config import PipelineConfig  # noqa: E402

# The default when issue #31 was filed, in the fields that have changed since.
ISSUE_DEFAULT = {"augmentations": "flip,intensity,color,noise,blur,scale",
                 "unlabeled_training": "none"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--method", default="default", choices=list(METHODS),
                        help="the timed method (trained with the unlabeled regions)")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args()
    import tensorflow as tf

    site, other, train, unlabeled_rows = next(tree_pairs(tempfile.mkdtemp(prefix="bench-")))
    splits, _ = three_way(train)
    config, fit, validation = prepare(args.method, PipelineConfig(), splits["fit"],
                                      splits["validation"])
    # the reference: the same regions (its fields leave the transform alone), trained as then
    reference = config.replace(**ISSUE_DEFAULT)
    unlabeled = transform(unlabeled_rows, config)
    rounds = []
    for round_ in range(args.rounds):
        found = {}
        order = ("with_unlabeled", "labelled_only")
        for name in order if round_ % 2 == 0 else order[::-1]:
            tf.keras.utils.set_random_seed(round_)
            wall, cpu = time.perf_counter(), time.process_time()
            timed = name == "with_unlabeled"
            _, history, used = train_seed((config if timed else reference).replace(seed=round_),
                                          fit, validation, unlabeled if timed else None)
            found[name] = {"cpu_seconds": round(time.process_time() - cpu, 1),
                           "seconds": round(time.perf_counter() - wall, 1),
                           "first_stage_epochs": len(history.history["loss"]),
                           **({"pseudo_labels": used} if used else {})}
        for kind in ("cpu_seconds", "seconds"):
            found[f"{kind}_ratio"] = round(found["with_unlabeled"][kind]
                                           / found["labelled_only"][kind], 3)
        print(f"round {round_}: {found}", file=sys.stderr, flush=True)
        rounds.append(found)
    report({"benchmark": "quality_time", "trained_on": site, "unlabeled_from": other,
            "unlabeled_regions": len(unlabeled_rows.labels),
            "fit_regions": len(splits["fit"].labels),
            "method": args.method, "timed": METHODS[args.method], "reference": ISSUE_DEFAULT,
            "unlabeled_training": config.unlabeled_training, "rounds": rounds,
            "cpu_seconds_ratio_median": statistics.median(r["cpu_seconds_ratio"] for r in rounds),
            "seconds_ratio_median": statistics.median(r["seconds_ratio"] for r in rounds)},
           args.output)


if __name__ == "__main__":
    main()
