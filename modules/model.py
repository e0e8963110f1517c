"""Keras models. Every preset runs one tower, shared by the K views, and fuses views by pooling.

- `seed`: the seed article's CNN: Conv32-pool-Conv64-pool-Flatten-Dense128, sigmoid output.
- `resnet` (default): a small residual CNN with batch norm, global average pooling and dropout;
  global pooling makes it less tied to where in the crop the finding sits.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from masktfx.config import PipelineConfig  # noqa: E402
from modules import features  # noqa: E402

keras = tf.keras


def stop_autograph_converting_keras() -> None:
    """Leave Keras 2's own code to run as written when a tf.function traces it.

    Autograph has never converted Keras 2 (its rules skip `tensorflow` and `keras`), but TF 2.16
    loads Keras 2 as the `tf_keras` package under TF_USE_LEGACY_KERAS, which no rule names, so
    every trace converted Keras's train step, losses, metrics and optimizer source again: 12 s
    of the Trainer's 20 s at 1,000 regions. Later TensorFlow releases add this same rule.
    """
    from tensorflow.python.autograph.core import config as autograph_config

    rule = autograph_config.DoNotConvert("tf_keras")
    if not any(str(existing) == str(rule) for existing in autograph_config.CONVERSION_RULES):
        autograph_config.CONVERSION_RULES = (rule, *autograph_config.CONVERSION_RULES)


stop_autograph_converting_keras()


def seed_tower(input_shape: tuple[int, int, int]) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.Model(inputs, x, name="seed_tower")


def _residual_block(x: tf.Tensor, filters: int, stride: int) -> tf.Tensor:
    shortcut = x
    y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = keras.layers.BatchNormalization(momentum=0.9)(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = keras.layers.BatchNormalization(momentum=0.9)(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
        shortcut = keras.layers.BatchNormalization(momentum=0.9)(shortcut)
    return keras.layers.ReLU()(keras.layers.Add()([shortcut, y]))


def resnet_tower(input_shape: tuple[int, int, int]) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    for filters, stride in ((32, 2), (64, 2), (128, 2)):
        x = _residual_block(x, filters, stride)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    return keras.Model(inputs, x, name="resnet_tower")


TOWERS = {"seed": seed_tower, "resnet": resnet_tower}


def build_model(config: PipelineConfig) -> keras.Model:
    """Input [B, K, S, S, C'] -> probability [B, 1]."""
    tf.random.set_seed(config.seed)
    shape = (config.num_views, config.image_size, config.image_size, config.input_channels)
    inputs = keras.Input(shape, name=features.REGION_KEY)
    tower = TOWERS[config.model_preset](shape[1:])
    per_view = keras.layers.TimeDistributed(tower, name="views")(inputs)
    fused = keras.layers.GlobalAveragePooling1D(name="fuse_views")(per_view)
    output = keras.layers.Dense(1, activation="sigmoid", name=features.PROBABILITY_OUTPUT)(fused)
    model = keras.Model(inputs, output, name=f"masktfx_{config.model_preset}")
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc"),
                 keras.metrics.BinaryAccuracy(name="accuracy",
                                              threshold=config.decision_threshold)],
    )
    return model
