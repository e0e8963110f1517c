"""bench/quality_few_labels: what the default reaches from as few labelled regions as
California -> Wyoming gives it, on the site they come from, to read issue #31's C -> W target
against (0.88 on Wyoming from California's 25 fit regions).

Trees, Wyoming: each seed draws whole groups of Wyoming's fit split until they hold at least
`--fit-regions` regions, and of its validation split until `--validation-regions` (early
stopping), as C -> W has 25 and 28 from California's groups; the model (the default, no
unlabeled regions) is scored on Wyoming's same-scene hold-out (groups never drawn) and on
California. The splits are bench/quality's (the pipeline's hash buckets).

    python bench/quality_few_labels.py [--seeds 0 1 2 3 4 5 6 7] [--fit-regions 25]
                                       [--validation-regions 28]
                                       [--output bench/results/quality-few-labels.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from measure import report  # noqa: E402
from quality import auc_summary, prepare, train_seed, transform  # noqa: E402
from quality_data import Rows, describe_splits, three_way, tree_pairs  # noqa: E402

from masktfx.config import PipelineConfig  # noqa: E402
from masktfx.modules.model import model_inputs  # noqa: E402


def draw_groups(rows: Rows, regions: int, rng: np.random.Generator) -> Rows:
    """Whole groups of `rows`, in a random order, until they hold at least `regions` regions
    and both classes."""
    groups = np.array(rows.groups)
    chosen: list[str] = []
    for group in rng.permutation(sorted(set(rows.groups))):
        chosen.append(group)
        kept = np.isin(groups, chosen)
        if kept.sum() >= regions and len(set(rows.labels[kept])) == 2:
            return rows.take(kept)
    raise SystemExit(f"the split holds fewer than {regions} regions of both classes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--fit-regions", type=int, default=25)
    parser.add_argument("--validation-regions", type=int, default=28)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args()
    import tensorflow as tf

    site, other, train, other_rows = next(tree_pairs(tempfile.mkdtemp(prefix="bench-")))
    splits, split_by = three_way(train)
    scored = {"same_scene": splits["holdout"], "other_site": other_rows}
    probabilities: dict[str, list[np.ndarray]] = {key: [] for key in scored}
    drawn = []
    scored_inputs: dict | None = None
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        fit = draw_groups(splits["fit"], args.fit_regions, rng)
        validation = draw_groups(splits["validation"], args.validation_regions, rng)
        drawn.append(describe_splits({"fit": fit, "validation": validation}))
        config, fit_pairs, validation_pairs = prepare("default", PipelineConfig(), fit,
                                                      validation)
        config = config.replace(seed=seed)
        tf.keras.utils.set_random_seed(seed)
        model, _, _ = train_seed(config, fit_pairs, validation_pairs)
        if scored_inputs is None:  # every draw resolves the same config: transformed once
            scored_inputs = {key: model_inputs(transform(rows, config), config)
                             for key, rows in scored.items()}
        for key, inputs in scored_inputs.items():
            probabilities[key].append(model.predict(inputs, verbose=0).reshape(-1))
        print(f"seed {seed}: {drawn[-1]}", file=sys.stderr, flush=True)
    report({"benchmark": "quality_few_labels", "trained_on": site, "scored_other_site": other,
            "method": "default, no unlabeled regions", "split_by": split_by,
            "seeds": args.seeds, "drawn_per_seed": drawn,
            **{key: auc_summary(rows.labels, probabilities[key])
               for key, rows in scored.items()}}, args.output)


if __name__ == "__main__":
    main()
