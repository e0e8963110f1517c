"""Where a model looked: the share of its attribution that falls inside each eval region's mask.

The Trainer saves an `attribution` signature with every model (modules/trainer.py: integrated
gradients of the probability on the model's own input). The Evaluator calls it on the eval
regions and writes what it found beside TFMA's files: each region's share inside the mask, its
distribution per class, and a few heat maps for the report. A model that decides from the
context (a scanner mark, a site artefact, the tile around the region) puts little of its
attribution inside the mask; the optional gate `min_attribution_inside` refuses to bless it.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from masktfx import features
from masktfx.records import split_records

ATTRIBUTION_FILE = "masktfx-attribution.json"
MAPS_FILE = "masktfx-attribution-maps.npz"  # model input, heat map and mask of a few regions
MAPS_PER_CLASS = 4
BATCH = 32


def _summary(shares: np.ndarray) -> dict[str, float]:
    return {"count": int(shares.size),
            "median": round(float(np.median(shares)), 4) if shares.size else float("nan"),
            "q25": round(float(np.percentile(shares, 25)), 4) if shares.size else float("nan"),
            "q75": round(float(np.percentile(shares, 75)), 4) if shares.size else float("nan")}


def attribute_eval_regions(saved_model_dir: str, examples_uris: Sequence[str], regions: int,
                           output_uri: str) -> dict[str, Any]:
    """Calls the model's `attribution` signature on the first `regions` test regions of the
    examples; writes ATTRIBUTION_FILE and MAPS_FILE into `output_uri` and returns the first."""
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model_dir)
    if features.ATTRIBUTION_SIGNATURE not in loaded.signatures:
        found: dict[str, Any] = {"regions": 0, "note": "the model has no attribution signature "
                                                       "(trained before it existed)"}
    else:
        attribute = loaded.signatures[features.ATTRIBUTION_SIGNATURE]
        records = list(itertools.islice(split_records(examples_uris, [features.TEST_SPLIT]),
                                        regions))
        labels, shares, maps = [], [], {0: [], 1: []}
        for start in range(0, len(records), BATCH):
            batch = records[start:start + BATCH]
            out = attribute(examples=tf.constant(batch))
            batch_shares = out[features.INSIDE_SHARE_OUTPUT].numpy()
            for index, record in enumerate(batch):
                label = int(tf.train.Example.FromString(record).features.feature[
                    features.LABEL_KEY].int64_list.value[0])
                labels.append(label)
                shares.append(float(batch_shares[index]))
                if len(maps[label]) < MAPS_PER_CLASS:  # view 1 of the first regions of each class
                    maps[label].append((out[features.MODEL_INPUT_OUTPUT][index, 0].numpy(),
                                        out[features.HEAT_OUTPUT][index, 0].numpy(),
                                        out[features.REGION_MASK_OUTPUT][index, 0].numpy(),
                                        float(batch_shares[index])))
        label_array, share_array = np.array(labels, int), np.array(shares)
        found = {"regions": len(shares), "steps": features.ATTRIBUTION_STEPS,
                 "overall": _summary(share_array),
                 "by_class": {str(label): _summary(share_array[label_array == label])
                              for label in (0, 1)},
                 "shares": [round(value, 4) for value in shares], "labels": labels}
        buffer = io.BytesIO()
        kept = [(label, item) for label in (0, 1) for item in maps[label]]
        np.savez_compressed(buffer, labels=np.array([label for label, _ in kept], int),
                            model_input=np.array([item[0] for _, item in kept]),
                            heat=np.array([item[1] for _, item in kept]),
                            mask=np.array([item[2] for _, item in kept]),
                            share=np.array([item[3] for _, item in kept]))
        tf.io.gfile.makedirs(output_uri)
        with tf.io.gfile.GFile(os.path.join(output_uri, MAPS_FILE), "wb") as out_file:
            out_file.write(buffer.getvalue())
    with tf.io.gfile.GFile(os.path.join(output_uri, ATTRIBUTION_FILE), "w") as out_file:
        out_file.write(json.dumps(found, indent=1))
    return found


def gate_failure(found: dict[str, Any], min_inside: float) -> str | None:
    """Why the attribution gate refuses the model (None: it passes, or there is no gate)."""
    if min_inside <= 0:
        return None
    if not found.get("regions"):
        return (f"attribution inside the mask could not be measured "
                f"({found.get('note', 'no eval regions')}); min_attribution_inside is "
                f"{min_inside:g}")
    median = found["overall"]["median"]
    if median < min_inside:
        return (f"attribution inside the mask: median share {median:.3f} over "
                f"{found['regions']} eval regions is below min_attribution_inside "
                f"{min_inside:g} (the model decides from outside the region)")
    return None


def read_maps(evaluation_uri: str) -> dict[str, np.ndarray]:
    """The heat maps the Evaluator kept ({} when it kept none)."""
    from tfx.dsl.io import fileio

    path = os.path.join(evaluation_uri, MAPS_FILE)
    if not fileio.exists(path):
        return {}
    with fileio.open(path, "rb") as handle, np.load(io.BytesIO(handle.read())) as stored:
        return {name: stored[name] for name in stored.files}
