"""The levers for sites the model never saw (issue #31): MixStyle inside the resnet tower and
random convolutions among the augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from masktfx.config import ConfigError, PipelineConfig
from masktfx.modules.augmentation import augment
from masktfx.modules.model import MixStyle, build_model


def _styled(rng: np.random.Generator, regions: int, views: int, channels: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature maps whose per-map, per-channel mean and spread are exactly the ones drawn."""
    base = rng.normal(size=(regions * views, 4, 4, channels))
    base = (base - base.mean((1, 2), keepdims=True)) / base.std((1, 2), keepdims=True)
    mean = rng.uniform(-3, 3, (regions * views, 1, 1, channels))
    spread = rng.uniform(0.5, 4, (regions * views, 1, 1, channels))
    return (base * spread + mean).astype(np.float32), mean[:, 0, 0], spread[:, 0, 0]


def test_mixstyle_mixes_a_view_with_the_same_view_of_another_region_in_training_only(rng):
    regions, views, channels = 12, 3, 2
    found, mean, spread = _styled(rng, regions, views, channels)
    layer = MixStyle(views, probability=1.0, alpha=0.5)
    np.testing.assert_array_equal(layer(found, training=False).numpy(), found)
    tf.random.set_seed(7)
    mixed = layer(found, training=True).numpy()
    out_mean, out_spread = mixed.mean((1, 2)), mixed.std((1, 2))
    mixed_with_another = 0
    for region in range(regions):
        own = slice(region * views, (region + 1) * views)
        if np.allclose(out_mean[own], mean[own], atol=1e-4):
            continue  # shuffled onto itself, or a weight of 1
        # one partner region and one weight explain every view and channel, means and spreads
        found_partner = []
        for partner in set(range(regions)) - {region}:
            other = slice(partner * views, (partner + 1) * views)
            weight = (out_mean[own] - mean[other]) / (mean[own] - mean[other])
            if (np.allclose(weight, weight.flat[0], atol=1e-3) and 0 <= weight.flat[0] <= 1
                    and np.allclose(out_spread[own], weight * spread[own]
                                    + (1 - weight) * spread[other], atol=1e-3)):
                found_partner.append(partner)
        assert len(found_partner) == 1, f"region {region}: {found_partner}"
        mixed_with_another += 1
    assert mixed_with_another >= regions // 2


def test_mixstyle_sits_after_the_first_two_blocks_and_is_refused_where_there_are_none(
        tmp_path):
    config = PipelineConfig(num_views=2, num_masks=1, image_size=16,
                            augmentations="flip,mixstyle").validate()
    model = build_model(config)
    tower = model.get_layer("views").layer
    assert [layer.name for layer in tower.layers if isinstance(layer, MixStyle)] == [
        "mixstyle_1", "mixstyle_2"]
    regions = np.random.default_rng(0).normal(size=(4, 2, 16, 16, 2)).astype(np.float32)
    np.testing.assert_array_equal(model(regions, training=False).numpy(),
                                  model(regions, training=False).numpy())
    assert not np.allclose(model(regions, training=True).numpy(),
                           model(regions, training=True).numpy())
    # saved for serving, it is the identity
    model.save(str(tmp_path / "model"), save_format="tf")
    np.testing.assert_allclose(tf.saved_model.load(str(tmp_path / "model"))(regions).numpy(),
                               model(regions, training=False).numpy(), atol=1e-6)
    assert not any(isinstance(layer, MixStyle)
                   for layer in build_model(config.replace(augmentations="flip"))
                   .get_layer("views").layer.layers)
    for change in ({"model_preset": "seed"},
                   {"backbone": "MobileNetV2", "backbone_train_layers": -1}):
        with pytest.raises(ConfigError, match="augmentations. names mixstyle, which needs"):
            config.replace(**change).validate()


def test_random_convolution_keeps_each_region_mean_and_the_mask(rng):
    batch, views, size = 8, 2, 16
    image = rng.normal(1.0, 2.0, (batch, views, size, size, 3)).astype(np.float32)
    mask = np.zeros((batch, views, size, size, 1), np.float32)
    mask[:, :, 3:11, 5:13] = 1.0
    tf.random.set_seed(5)
    out = augment(tf.constant(np.concatenate([image, mask], -1)), 3,
                  ("random_convolution",)).numpy()
    np.testing.assert_array_equal(out[..., 3:], mask)
    np.testing.assert_allclose(out[..., :3].mean((2, 3)), image.mean((2, 3)), atol=1e-4)
    changed = ~np.isclose(out[..., :3], image, atol=1e-3).all((2, 3, 4))
    assert changed.mean() > 0.8  # the blend's amount is uniform: few regions keep their pixels
