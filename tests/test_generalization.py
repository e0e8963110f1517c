"""The levers for sites the model never saw (issue #31): MixStyle inside the resnet tower,
random convolutions among the augmentations and contrastive pretraining of the tower."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from masktfx import features
from masktfx.config import ConfigError, PipelineConfig
from masktfx.modules.augmentation import augment
from masktfx.modules.model import MixStyle, build_model
from masktfx.modules.pretraining import contrastive_loss, pretrain


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


def test_contrastive_loss_is_nt_xent(rng):
    first, second = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    unit = np.concatenate([first, second])
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    similarity = unit @ unit.T / 0.2
    expected = np.mean([np.log(np.exp(np.delete(similarity[i], i)).sum())
                        - similarity[i, (i + 5) % 10] for i in range(10)])
    np.testing.assert_allclose(contrastive_loss(tf.constant(first, tf.float32),
                                                tf.constant(second, tf.float32), 0.2).numpy(),
                               expected, rtol=1e-5)


def _patterned_regions(rng: np.random.Generator, count: int, views: int, size: int
                       ) -> np.ndarray:
    """Regions of a disc of one size and contrast each on stripes of one frequency, and a mask
    channel: what tells one region from another survives the flips, intensity changes and
    noise of the augmentations."""
    grid = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    radius = np.hypot(grid[0], grid[1])
    regions = np.zeros((count, views, size, size, 2), np.float32)
    for index in range(count):
        stripes = np.sin(rng.uniform(0.3, 2.5) * grid[0])
        disc = rng.uniform(-2, 2) * (radius < rng.uniform(2, size / 2))
        regions[index, :, :, :, 0] = stripes + disc
    regions[:, :, 4:12, 4:12, 1] = 1.0
    return regions


def test_pretraining_trains_the_tower_alone_on_every_region_it_is_given(rng):
    config = PipelineConfig(num_views=2, num_masks=1, image_size=16, batch_size=8,
                            pretraining_epochs=6, augmentations="flip,intensity,noise",
                            learning_rate=3e-3).validate()
    tf.keras.utils.set_random_seed(0)
    model = build_model(config)
    head = model.get_layer(features.PROBABILITY_OUTPUT).get_weights()
    kernels = [w.copy() for w in model.get_layer("views").get_weights() if w.ndim == 4]
    regions = _patterned_regions(rng, 40, 2, 16)
    labels = np.full(40, features.UNLABELED)  # unread
    found = pretrain(model, tf.data.Dataset.from_tensor_slices(
        {features.REGION_KEY: regions, features.TRANSFORMED_LABEL_KEY: labels}), config,
        verbose=0)
    assert found["epochs"] == 6 and found["regions"] == 40 and len(found["loss"]) == 6
    # the tower's convolutions learnt (they are the model's own weights), the decision did not
    after = [w for w in model.get_layer("views").get_weights() if w.ndim == 4]
    assert all(not np.allclose(a, b) for a, b in zip(after, kernels))
    for a, b in zip(model.get_layer(features.PROBABILITY_OUTPUT).get_weights(), head):
        np.testing.assert_array_equal(a, b)
    # two augmentations of a region are told apart from the others better than at the start:
    # NT-Xent of a batch of 16 starts near log(31) = 3.4
    assert found["loss"][0] > 2.5 and found["loss"][-1] < found["loss"][0] - 0.3, found


def test_pretraining_needs_augmentations_and_a_count_of_epochs():
    with pytest.raises(ConfigError, match="pretraining_epochs. is 3, but no augmentation"):
        PipelineConfig(pretraining_epochs=3, augment=False).validate()
    with pytest.raises(ConfigError, match="pretraining_epochs. must be >= 0"):
        PipelineConfig(pretraining_epochs=-1).validate()
