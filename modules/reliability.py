"""What the Trainer fits, besides the network, so that a served answer says how far to trust it.

- The out-of-distribution score: how unlike the training regions a region is. Two blocks of
  features, each with its own Mahalanobis distance to the training regions: the network's fused
  features (what it decides on) and the region's intensity statistics before normalization
  (`modules.transform.region_statistics`: what the region normalization hides from the network,
  such as another site's brightness and colour). Each block's squared distance is divided by its
  dimension, and the score is their mean, so both blocks weigh the same whatever their sizes. The
  covariance of each block is shrunk towards its diagonal (features standardized first), since a
  few hundred training regions do not pin down a 128 x 128 covariance. `in_distribution` is the
  score under the threshold that IN_DISTRIBUTION_SHARE of the validation regions pass.
- The calibration of the probability on the validation split (Platt scaling, and a variant whose
  CBPE AUC equals the validation split's measured AUC: `masktfx.performance`), with which new
  data's AUC and accuracy are estimated without labels.

Both are fitted in NumPy and the score is built into the served graph as constants.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

IN_DISTRIBUTION_SHARE = 0.95
MAX_FIT_REGIONS = 20_000  # training regions the Mahalanobis statistics are fitted on, at most


def fit_block(values: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, scale and the inverse of the shrunk correlation matrix of one block [N, D]."""
    values = np.asarray(values, dtype=np.float64)
    count, dims = values.shape
    mean = values.mean(axis=0)
    scale = values.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)  # a constant feature adds nothing
    standardized = (values - mean) / scale
    correlation = standardized.T @ standardized / max(count - 1, 1)
    shrinkage = min(1.0, dims / max(count, 1))
    shrunk = (1.0 - shrinkage) * correlation + shrinkage * np.eye(dims)
    return {"mean": mean, "scale": scale, "precision": np.linalg.inv(shrunk)}


def block_distance(values: np.ndarray, block: dict[str, np.ndarray]) -> np.ndarray:
    """Squared Mahalanobis distance per region, divided by the block's dimension."""
    standardized = (np.asarray(values, dtype=np.float64) - block["mean"]) / block["scale"]
    return np.einsum("nd,de,ne->n", standardized, block["precision"], standardized) / len(
        block["mean"])


def fit_ood(embeddings: np.ndarray, statistics: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The two blocks, fitted on the training regions' features."""
    return {"embedding": fit_block(embeddings), "statistics": fit_block(statistics)}


def ood_scores(model: dict[str, dict[str, np.ndarray]], embeddings: np.ndarray,
               statistics: np.ndarray) -> np.ndarray:
    return 0.5 * (block_distance(embeddings, model["embedding"])
                  + block_distance(statistics, model["statistics"]))


def ood_threshold(validation_scores: np.ndarray) -> float:
    """The score IN_DISTRIBUTION_SHARE of the validation regions are at or under."""
    return float(np.quantile(np.asarray(validation_scores, dtype=np.float64),
                             IN_DISTRIBUTION_SHARE))


class OodScore(tf.Module):
    """The fitted score as a TensorFlow function of the same features (saved with the model)."""

    def __init__(self, model: dict[str, dict[str, np.ndarray]], threshold: float):
        super().__init__(name="ood_score")
        self.blocks = {name: {key: tf.constant(value, tf.float32) for key, value in block.items()}
                       for name, block in model.items()}
        self.threshold = tf.constant(threshold, tf.float32)

    def _distance(self, values: tf.Tensor, block: dict[str, tf.Tensor]) -> tf.Tensor:
        standardized = (values - block["mean"]) / block["scale"]
        return tf.reduce_sum(tf.matmul(standardized, block["precision"]) * standardized,
                             axis=1) / tf.cast(tf.shape(block["mean"])[0], tf.float32)

    def __call__(self, embeddings: tf.Tensor, statistics: tf.Tensor) -> dict[str, tf.Tensor]:
        score = 0.5 * (self._distance(embeddings, self.blocks["embedding"])
                       + self._distance(statistics, self.blocks["statistics"]))
        return {"ood_score": score, "in_distribution": score <= self.threshold}


# The calibration the estimates on new data use (`masktfx.performance`): chosen by
# bench/reliability's rule on the training sites' test splits (README, Knowing when not to trust
# a model).
ESTIMATE_CALIBRATION = "auc_matched"


def summary(calibrations: dict[str, dict[str, float]], threshold: float,
            validation: dict[str, Any]) -> dict[str, Any]:
    """The reliability file stored in the SavedModel (features.RELIABILITY_FILE)."""
    return {"calibration": {"method": ESTIMATE_CALIBRATION,
                            **calibrations[ESTIMATE_CALIBRATION]},
            "calibrations": calibrations,
            "ood": {"threshold": threshold, "in_distribution_share": IN_DISTRIBUTION_SHARE,
                    "blocks": ["embedding", "statistics"]},
            "validation": validation}
