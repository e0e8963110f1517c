"""bench/quality_time: the default's training time with unlabeled regions against the same
training without them (today's default before `ranked_pseudo_labels`), whole trainings in
turns (issue #31: the default's training time at most 1.5x, CPU time, in turns).

Trees, trained on Wyoming's fit split (early stopping on its validation split) as in
bench/quality.py; the unlabeled regions are California's 74, their labels unread. Each round
trains both with the round's seed, one after the other (the order alternates), and takes the
ratio of their CPU times (the process's, all threads) and of their wall times; the JSON gives
every round and the medians.

    python bench/quality_time.py [--rounds 3] [--output bench/results/quality-time-unlabeled.json]
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

from masktfx.config import PipelineConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args()
    import tensorflow as tf

    site, other, train, unlabeled_rows = next(tree_pairs(tempfile.mkdtemp(prefix="bench-")))
    splits, _ = three_way(train)
    config, fit, validation = prepare("default", PipelineConfig(), splits["fit"],
                                      splits["validation"])
    unlabeled = transform(unlabeled_rows, config)
    rounds = []
    for round_ in range(args.rounds):
        seeded = config.replace(seed=round_)
        found = {}
        order = ("with_unlabeled", "labelled_only")
        for name in order if round_ % 2 == 0 else order[::-1]:
            tf.keras.utils.set_random_seed(round_)
            wall, cpu = time.perf_counter(), time.process_time()
            _, history, used = train_seed(seeded, fit, validation,
                                          unlabeled if name == "with_unlabeled" else None)
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
            "unlabeled_training": config.unlabeled_training, "rounds": rounds,
            "cpu_seconds_ratio_median": statistics.median(r["cpu_seconds_ratio"] for r in rounds),
            "seconds_ratio_median": statistics.median(r["seconds_ratio"] for r in rounds)},
           args.output)


if __name__ == "__main__":
    main()
