"""Keras models. Every preset runs one tower, shared by the K views, and fuses views by pooling.

- `seed`: the seed article's CNN: Conv32-pool-Conv64-pool-Flatten-Dense128, sigmoid output.
- `resnet` (default): a small residual CNN with global average pooling and dropout; global
  pooling makes it less tied to where in the crop the finding sits. Its normalization layers
  (`norm_layer`) default to group normalization: it normalizes each region by its own feature
  statistics, so no statistic of the training sites is frozen into the served model, as batch
  normalization's moving averages are (measured in bench/quality: see the README). With
  `tower_pooling: mask` it pools its last features over the region and around it separately;
  with `mixstyle` among the `augmentations` its first blocks mix feature statistics (`MixStyle`).

With `backbone` set, the tower is instead an architecture of tf.keras.applications with the
user's pretrained weights, frozen, partly or wholly trained.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import tensorflow as tf

from masktfx import features
from masktfx.config import ConfigError, PipelineConfig

keras = tf.keras


def stop_autograph_converting_keras() -> None:
    """Leave Keras 2's own code to run as written when a tf.function traces it.

    Autograph has never converted Keras 2 (its rules skip `tensorflow` and `keras`), but TF 2.16
    loads Keras 2 as the `tf_keras` package under TF_USE_LEGACY_KERAS, which no rule names, so
    every trace converted Keras's train step, losses, metrics and optimizer source again, most
    of a small Trainer's time (docs/benchmarks.md). Later TensorFlow releases add this rule.
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


class GroupNormalization(keras.layers.Layer):
    """Group normalization (Wu and He, 2018) of [B, H, W, C] features: each region's channels in
    `groups` groups, each group scaled to zero mean and unit variance over its pixels and
    channels, then a learnt per-channel scale and offset.

    The same function as Keras' GroupNormalization, with its gradient written out: on CPU,
    training is bound by the passes over the full-resolution activations, and automatic
    differentiation of the statistics makes several more passes than the closed form needs
    (README, Quality across sites). Forward: one pass for the sums of x and x squared per
    channel, one multiply-add. Backward: one pass for the sums of dy and dy * x per channel, one
    pass for dx = a * dy + b * x + c with per-region, per-channel a, b and c.
    """

    def __init__(self, groups: int, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups
        self.epsilon = epsilon

    def build(self, input_shape: tf.TensorShape) -> None:
        channels = int(input_shape[-1])
        if channels % self.groups:
            raise ValueError(f"{channels} channels do not split into {self.groups} groups")
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return group_normalization(inputs, self.gamma, self.beta, self.groups, self.epsilon)

    def get_config(self) -> dict:
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}


def group_normalization(inputs: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, groups: int,
                        epsilon: float) -> tf.Tensor:
    """GroupNormalization's function and its gradient (see the layer)."""
    channels = inputs.shape[-1]
    per_group = channels // groups

    def by_group(per_channel: tf.Tensor) -> tf.Tensor:  # [B, C] -> [B, G, C/G]
        return tf.reshape(per_channel, [-1, groups, per_group])

    def per_channel(value: tf.Tensor) -> tf.Tensor:  # [B, G, C/G or 1] -> [B, 1, C]
        return tf.reshape(value * tf.ones([1, 1, per_group], value.dtype), [-1, 1, channels])

    @tf.custom_gradient
    def normalize(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor):
        shape = tf.shape(x)
        flat = tf.reshape(x, [shape[0], -1, channels])  # [B, pixels, C]
        count = tf.cast(tf.shape(flat)[1] * per_group, x.dtype)
        mean = tf.reduce_sum(by_group(tf.reduce_sum(flat, 1)), 2, keepdims=True) / count
        mean_of_squares = tf.reduce_sum(by_group(tf.reduce_sum(tf.square(flat), 1)), 2,
                                        keepdims=True) / count
        # E[x^2] - E[x]^2 can round below 0 when a group is nearly constant
        inverse_std = tf.math.rsqrt(tf.maximum(mean_of_squares - tf.square(mean), 0.0)
                                    + epsilon)  # [B, G, 1]
        gamma_grouped = tf.reshape(gamma, [1, groups, per_group])
        scale = inverse_std * gamma_grouped  # [B, G, C/G]
        offset = tf.reshape(beta, [1, groups, per_group]) - mean * scale
        output = flat * per_channel(scale) + per_channel(offset)

        def gradient(upstream: tf.Tensor):
            dy = tf.reshape(upstream, [shape[0], -1, channels])
            sum_dy = tf.reduce_sum(dy, 1)  # [B, C]
            # sum over the pixels of dy * (x - mean) / std, the normalized x
            sum_dy_normalized = inverse_std * (by_group(tf.reduce_sum(dy * flat, 1))
                                               - mean * by_group(sum_dy))  # [B, G, C/G]
            # dx = scale * (dy - mean(dy * gamma) / gamma - normalized * mean(dy * gamma *
            # normalized) / gamma), the means over the group; as a * dy + b * x + c
            mean_dy = tf.reduce_sum(gamma_grouped * by_group(sum_dy), 2, keepdims=True) / count
            mean_dy_normalized = tf.reduce_sum(gamma_grouped * sum_dy_normalized, 2,
                                               keepdims=True) / count
            b = -tf.square(inverse_std) * mean_dy_normalized
            c = -inverse_std * mean_dy - mean * b
            dx = dy * per_channel(scale) + (flat * per_channel(b) + per_channel(c))
            return (tf.reshape(dx, shape),
                    tf.reshape(tf.reduce_sum(sum_dy_normalized, 0), [channels]),
                    tf.reduce_sum(sum_dy, 0))

        return tf.reshape(output, shape), gradient

    return normalize(inputs, gamma, beta)


def normalization(kind: str, filters: int) -> keras.layers.Layer:
    """The `norm_layer` after a convolution; `none` keeps the convolution's output as it is."""
    if kind == "group":
        return GroupNormalization(groups=min(8, filters))
    if kind == "layer":
        return keras.layers.LayerNormalization(axis=[1, 2, 3])
    if kind == "batch":
        return keras.layers.BatchNormalization(momentum=0.9)
    return keras.layers.Identity()


def _residual_block(x: tf.Tensor, filters: int, stride: int, norm: str) -> tf.Tensor:
    shortcut = x
    bias = norm == "none"  # a normalization layer's offset replaces the convolution's bias
    y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=bias)(x)
    y = normalization(norm, filters)(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=bias)(y)
    y = normalization(norm, filters)(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=bias)(shortcut)
        shortcut = normalization(norm, filters)(shortcut)
    return keras.layers.ReLU()(keras.layers.Add()([shortcut, y]))


class MaskPooling(keras.layers.Layer):
    """[B, h, w, F] features and the [B, H, W, 1] mask -> [B, 2 F]: the features' mean over the
    region and over the context around it, each weighted by the mask's share of the feature's
    cell (the mask averaged down to h x w). The decision then compares the region with its
    surroundings, as the classical baselines' inside/around statistics do, instead of pooling
    both into one mean."""

    def call(self, inputs: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        found, mask = inputs
        shape = tf.shape(found)
        # where the region is is given, not learnt: no gradient flows into the mask (nor has
        # the area resize one)
        inside = tf.image.resize(tf.stop_gradient(mask), shape[1:3], method="area")
        outside = 1.0 - inside

        def mean(weights: tf.Tensor) -> tf.Tensor:
            # a region that fills the crop has no context: its context mean is 0
            return (tf.reduce_sum(found * weights, axis=[1, 2])
                    / tf.maximum(tf.reduce_sum(weights, axis=[1, 2]), 1e-3))

        return tf.concat([mean(inside), mean(outside)], axis=-1)


class MixStyle(keras.layers.Layer):
    """MixStyle (Zhou et al., ICLR 2021), in training only: each [B * K, h, w, F] feature map's
    per-channel mean and spread, the "style" a site's sensor, light and season leave in early
    features, mixed with another region's, by a weight drawn from Beta(alpha, alpha), for a
    `probability` share of the regions. The network then cannot lean on one site's style. The
    maps come from `TimeDistributed`, region-major: a region's view k is mixed with another
    region's view k, never with another view (another sequence or date)."""

    def __init__(self, views: int, probability: float = 0.5, alpha: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.views, self.probability, self.alpha = views, probability, alpha

    def call(self, found: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not training:
            return found
        mean = tf.stop_gradient(tf.reduce_mean(found, axis=[1, 2], keepdims=True))
        spread = tf.stop_gradient(tf.sqrt(tf.math.reduce_variance(
            found, axis=[1, 2], keepdims=True) + 1e-6))
        regions = tf.shape(found)[0] // self.views
        partner = tf.reshape(tf.random.shuffle(tf.range(regions))[:, None] * self.views
                             + tf.range(self.views)[None, :], [-1])
        draw = tf.random.gamma([regions], self.alpha), tf.random.gamma([regions], self.alpha)
        weight = draw[0] / tf.maximum(draw[0] + draw[1], 1e-12)
        weight = tf.where(tf.random.uniform([regions]) < self.probability, weight, 1.0)
        weight = tf.reshape(tf.repeat(weight, self.views), [-1, 1, 1, 1])
        mixed_mean = weight * mean + (1.0 - weight) * tf.gather(mean, partner)
        mixed_spread = weight * spread + (1.0 - weight) * tf.gather(spread, partner)
        return (found - mean) / spread * mixed_spread + mixed_mean

    def get_config(self) -> dict:
        return {**super().get_config(), "views": self.views, "probability": self.probability,
                "alpha": self.alpha}


def resnet_tower(input_shape: tuple[int, int, int], norm: str = "group",
                 stem_norm: bool = True, mask_pooling: bool = False,
                 mixstyle_views: int = 0) -> keras.Model:
    """With `mask_pooling`, the input's last channel is the region's mask (`MaskPooling`). With
    `mixstyle_views` (the regions' view count), `MixStyle` after the first two blocks, where the
    method's authors found it helps most (style sits in early features, the label in late)."""
    inputs = keras.Input(input_shape)
    # The stem sees regions already normalized by the Transform, so a normalization layer after
    # it, on the largest activations of the network (full resolution), is optional: without it
    # training is faster and a little less accurate on unseen sites (bench/quality).
    normalize_stem = stem_norm and norm != "none"
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=not normalize_stem)(inputs)
    if normalize_stem:
        x = normalization(norm, 32)(x)
    x = keras.layers.ReLU()(x)
    for block, (filters, stride) in enumerate(((32, 2), (64, 2), (128, 2))):
        x = _residual_block(x, filters, stride, norm)
        if mixstyle_views and block < 2:
            x = MixStyle(mixstyle_views, name=f"mixstyle_{block + 1}")(x)
    if mask_pooling:
        x = MaskPooling(name="mask_pooling")([x, inputs[..., -1:]])
    else:
        x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    return keras.Model(inputs, x, name="resnet_tower")


def backbone_application(name: str) -> Any:
    """The tf.keras.applications constructor called `name`; ConfigError naming the field when
    there is none."""
    application = getattr(keras.applications, name, None)
    if not (name[:1].isupper() and callable(application)):
        known = ", ".join(sorted(attribute for attribute in dir(keras.applications)
                                 if attribute[:1].isupper()))
        raise ConfigError(f"backbone: {name!r} is no tf.keras.applications architecture; "
                          f"known: {known}")
    return application


def check_backbone(config: PipelineConfig) -> None:
    """Before any component runs: the architecture exists and its weights file can be read."""
    if not config.backbone:
        return
    application = backbone_application(config.backbone)
    try:  # an architecture has a smallest input it takes
        application(include_top=False, weights=None, pooling="avg",
                    input_shape=(config.image_size, config.image_size, 3))
    except ValueError as error:
        raise ConfigError(f"backbone: {config.backbone} does not take image_size "
                          f"{config.image_size} ({error})") from None
    if config.backbone_weights and not tf.io.gfile.exists(config.backbone_weights):
        raise ConfigError(f"backbone_weights: no file at {config.backbone_weights}")


def _adapter_kernel(channels: int) -> np.ndarray:
    """A 1x1 convolution from the region's channels to the backbone's three that starts as what
    the weights expect: the first three channels as they are (the mask channel, if any, at 0),
    or one gray channel in all three."""
    kernel = np.zeros((1, 1, channels, 3), np.float32)
    if channels >= 3:
        kernel[0, 0, [0, 1, 2], [0, 1, 2]] = 1.0
    else:
        kernel[0, 0, 0, :] = 1.0
    return kernel


def _load_backbone_weights(backbone: keras.Model, uri: str) -> None:
    """Keras reads .h5 weights from a local file only: a URI is copied to one first."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="masktfx-backbone-") as folder:
        local = os.path.join(folder, "weights.h5")
        tf.io.gfile.copy(uri, local)
        try:
            backbone.load_weights(local)
        except (ValueError, OSError) as error:
            raise ConfigError(f"backbone_weights: {uri} does not hold weights of "
                              f"{backbone.name} without its classifier ({error})") from None


def backbone_tower(config: PipelineConfig, input_shape: tuple[int, int, int]) -> keras.Model:
    """The user's pretrained architecture as the tower: the region mapped to three channels and
    to the pixel range its weights were trained on, then the architecture without its
    classifier, globally pooled; its last `backbone_train_layers` layers train."""
    application = backbone_application(config.backbone)
    inputs = keras.Input(input_shape)
    adapted = keras.layers.Conv2D(
        3, 1, use_bias=False, name="backbone_adapter",
        kernel_initializer=keras.initializers.Constant(_adapter_kernel(input_shape[-1])))(inputs)
    # The Transform standardizes each region; a photograph's pixels spread about 64 grey
    # levels around the middle of 0-255, the range the architecture's own preprocessing expects.
    pixels = keras.layers.Rescaling(64.0, offset=128.0, name="backbone_pixels")(adapted)
    preprocess = sys.modules[application.__module__].preprocess_input
    backbone = application(include_top=False, weights=None, pooling="avg",
                           input_shape=(input_shape[0], input_shape[1], 3))
    if config.backbone_weights:
        _load_backbone_weights(backbone, config.backbone_weights)
    if config.backbone_train_layers == 0:
        backbone.trainable = False
    elif config.backbone_train_layers > 0:
        for layer in backbone.layers[:-config.backbone_train_layers]:
            layer.trainable = False
    return keras.Model(inputs, backbone(preprocess(pixels)), name="backbone_tower")


def build_tower(config: PipelineConfig, input_shape: tuple[int, int, int]) -> keras.Model:
    if config.backbone:
        return backbone_tower(config, input_shape)
    if config.model_preset == "seed":
        return seed_tower(input_shape)
    return resnet_tower(input_shape, config.norm_layer, config.stem_norm,
                        mask_pooling=config.tower_pooling == "mask",
                        mixstyle_views=config.num_views if "mixstyle" in config.augmentation_list
                        else 0)


def build_model(config: PipelineConfig,
                statistics_moments: tuple[np.ndarray, np.ndarray] | None = None) -> keras.Model:
    """Input [B, K, S, S, C'] -> probability [B, 1]. With `statistics_input`, the input is a
    dict of the regions and their `region_statistics` [B, 4 C + 1], and `statistics_moments`
    (their mean and standard deviation on the training split) scale the statistics."""
    tf.random.set_seed(config.seed)
    shape = (config.num_views, config.image_size, config.image_size, config.input_channels)
    regions = keras.Input(shape, name=features.REGION_KEY)
    tower = build_tower(config, shape[1:])
    per_view = keras.layers.TimeDistributed(tower, name="views")(regions)
    fused = keras.layers.GlobalAveragePooling1D(name="fuse_views")(per_view)
    inputs: keras.KerasTensor | dict = regions
    if config.statistics_input:
        if statistics_moments is None:
            raise ValueError("statistics_input needs the training split's statistics moments")
        mean, std = (np.asarray(value, np.float32) for value in statistics_moments)
        statistics = keras.Input(mean.shape, name=features.REGION_STATISTICS_KEY)
        # The region normalization hides a region's brightness, contrast and colour, and its
        # share of the crop, from the tower; this branch gives them back to the decision.
        scaled = keras.layers.Normalization(mean=mean, variance=np.square(np.maximum(std, 1e-6)),
                                            name="scale_statistics")(statistics)
        described = keras.layers.Dense(32, activation="relu", name="statistics")(scaled)
        fused = keras.layers.Concatenate(name="fuse_statistics")([fused, described])
        inputs = {features.REGION_KEY: regions, features.REGION_STATISTICS_KEY: statistics}
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


def model_inputs(transformed: dict[str, tf.Tensor], config: PipelineConfig
                 ) -> tf.Tensor | dict[str, tf.Tensor]:
    """What `build_model`'s model takes, from the Transform's outputs."""
    if config.statistics_input:
        return {features.REGION_KEY: transformed[features.REGION_KEY],
                features.REGION_STATISTICS_KEY: transformed[features.REGION_STATISTICS_KEY]}
    return transformed[features.REGION_KEY]
