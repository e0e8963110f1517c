"""The TFRecord contract between `masktfx ingest`, the pipeline, the module files and serving.

Every feature name, file pattern and signature name lives here and is imported everywhere else, so
that a rename cannot leave one side of the contract behind.
"""

# Raw features written by `masktfx ingest` (one tf.Example per region).
IMAGES_KEY = "images"  # bytes list: K encoded images (PNG/JPEG as read, TIFF re-encoded as PNG)
MASKS_KEY = "masks"  # bytes list: 1 (shared) or K single-channel PNG masks, 0 outside, 255 inside
LABEL_KEY = "label"  # int64: 1 when the feature is present inside the region
# The label of a region nobody has labelled yet (a manifest row whose label is empty): such
# regions go to the `unlabeled` split, which the Trainer may learn from (`unlabeled_training`)
# and nothing scores.
UNLABELED = -1
ID_KEY = "id"  # bytes: the example's identifier
GROUP_KEY = "group"  # bytes: patient/subject/scene/site; a group never straddles the splits

# int64: the span a record was read from, written by ImportExampleGen when a run trains on a
# window of spans (`span_window` > 1), so the evaluation can be sliced by span.
SPAN_KEY = "span"

# Features that are not user metadata; every other bytes feature is a metadata column.
RESERVED_KEYS = (IMAGES_KEY, MASKS_KEY, LABEL_KEY, ID_KEY, GROUP_KEY, SPAN_KEY)

# Features the serving model does not need from a client (never sent at inference time).
NON_INPUT_KEYS = (LABEL_KEY, ID_KEY, GROUP_KEY, SPAN_KEY)

# Transformed features produced by `preprocessing_fn` and consumed by the Trainer.
REGION_KEY = "region"  # float32 [K, S, S, C'] crops (C' = channels, +1 with the mask channel)
TRANSFORMED_LABEL_KEY = "label_xf"
# float32 [4 C + 1]: the region's intensity statistics before normalization (inside and around
# the mask, per channel), which the out-of-distribution score looks at beside the network
REGION_STATISTICS_KEY = "region_statistics"

# Files written by `masktfx ingest`.
SPAN_DIR_TEMPLATE = "span-{span}"
SPAN_DIR_PATTERN = "span-{SPAN}"  # ImportExampleGen's placeholder for the span number
SHARD_PREFIX = "data"
SHARD_SUFFIX = ".tfrecord.gz"
SHARD_GLOB = f"{SHARD_PREFIX}-*{SHARD_SUFFIX}"
INGEST_REPORT = "ingest_report.json"
REJECTED_CSV = "rejected.csv"

# Serving signatures and their tensors.
SERVING_SIGNATURE = "serving_default"
RAW_SIGNATURE = "predict_raw"
TRANSFORM_SIGNATURE = "transform_features"
# examples -> integrated gradients of the probability on the model's input, against the mask
ATTRIBUTION_SIGNATURE = "attribution"
INSIDE_SHARE_OUTPUT = "inside_share"  # [B]: the share of the attribution inside the mask
HEAT_OUTPUT = "heat"  # [B, K, S, S]: |attribution| summed over the image channels
REGION_MASK_OUTPUT = "region_mask"  # [B, K, S, S]: the mask on the model's grid
MODEL_INPUT_OUTPUT = "model_input"  # [B, K, S, S]: the first image channel the model sees
ATTRIBUTION_STEPS = 16  # integrated gradients: points on the path from the baseline
EXAMPLES_INPUT = "examples"
PROBABILITY_OUTPUT = "probability"
PREDICTED_LABEL_OUTPUT = "label"
# How unlike the training regions a region is (a Mahalanobis distance of the network's features
# and the region's statistics, fitted by the Trainer), and whether it is under the threshold that
# 95% of the validation regions pass.
OOD_SCORE_OUTPUT = "ood_score"
IN_DISTRIBUTION_OUTPUT = "in_distribution"
# The calibration of the probability and the OOD threshold, fitted on the validation split:
# what `masktfx drift` and the DriftCheck estimate a span's performance with.
RELIABILITY_FILE = "assets.extra/masktfx_reliability.json"
# The served label's threshold and how it was chosen (modules/operating_point.py), stored inside
# the SavedModel, so a pushed version carries the threshold it serves with.
OPERATING_POINT_FILE = "assets.extra/masktfx_operating_point.json"

# The Trainer's account of its training (class weights, the unlabeled regions it used, the
# history of each epoch), in its `model_run` output.
TRAINING_SUMMARY = "training_summary.json"

# The logger the Trainer reports each epoch to (record args: epoch, epochs and Keras' logs), which
# `masktfx run` shows live.
TRAINER_PROGRESS_LOGGER = "masktfx.trainer"

# Split names written by ImportExampleGen, by group. The Trainer fits on `train` and uses
# `validation` for early stopping, the operating point, the calibration and the out-of-distribution
# threshold; the Evaluator (gates, intervals, attribution) and the ServingCheck read only `test`,
# which nothing before them has seen.
TRAIN_SPLIT = "train"
VALIDATION_SPLIT = "validation"
TEST_SPLIT = "test"
SPLITS = (TRAIN_SPLIT, VALIDATION_SPLIT, TEST_SPLIT)
# Every unlabeled region, whatever its group's hash (ExampleGen routes them here when the data
# holds any): Transform transforms it, the Trainer reads it beside `train`; the Evaluator never
# does, so no metric counts it.
UNLABELED_SPLIT = "unlabeled"
