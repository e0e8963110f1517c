"""The module files on their own: preprocessing_fn through tft_beam, the models, and run_fn on
tiny transformed data, down to a SavedModel whose signatures agree."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_transform, square_mask

from masktfx import features
from masktfx.config import ConfigError, PipelineConfig
from masktfx.images import encode_png
from masktfx.modules.model import build_model
from masktfx.records import make_example


def _transform(instances, config, tmp_path):
    return run_transform(instances, config, tmp_path)


def _gradient(size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return ((y * 7 + x * 3) % 256).astype(np.uint8)


def test_crop_mode_crops_the_region_box_with_margin(tmp_path):
    image = _gradient(32)
    mask = square_mask(32, 4, 12)  # rows and columns 4..11
    config = PipelineConfig(num_views=1, num_masks=1, image_size=12, crop_margin=0.25)
    instance = {features.IMAGES_KEY: [encode_png(image)], features.MASKS_KEY: [encode_png(mask)],
                features.LABEL_KEY: [1]}
    transformed, _ = _transform([instance], config, tmp_path)
    region = np.asarray(transformed[0][features.REGION_KEY]).reshape(1, 12, 12, 2)
    assert transformed[0][features.TRANSFORMED_LABEL_KEY] == 1
    # box: 8 pixels widened by 25% on each side = 12, centred on 7.5 -> pixels 2..13, 1:1
    expected_mask = mask[2:14, 2:14].astype(np.float32)
    np.testing.assert_array_equal(region[0, :, :, 1], expected_mask)
    crop = image[2:14, 2:14].astype(np.float32) / 255.0
    inside = crop[expected_mask > 0]
    expected = (crop - inside.mean()) / inside.std()
    np.testing.assert_allclose(region[0, :, :, 0], expected, atol=1e-4)


def test_zero_and_channel_modes_with_three_views_and_per_view_masks(tmp_path, rng):
    views = [rng.integers(0, 255, (24, 24), np.uint8) for _ in range(3)]
    masks = [square_mask(24, 3 * i + 2, 3 * i + 14) for i in range(3)]
    instance = {features.IMAGES_KEY: [encode_png(v) for v in views],
                features.MASKS_KEY: [encode_png(m) for m in masks], features.LABEL_KEY: [0]}
    zero = PipelineConfig(num_views=3, num_masks=3, image_size=24, mask_mode="zero")
    transformed, _ = _transform([instance], zero, tmp_path)
    region = np.asarray(transformed[0][features.REGION_KEY]).reshape(3, 24, 24, 2)
    for view in range(3):
        np.testing.assert_array_equal(region[view, :, :, 1], masks[view].astype(np.float32))
        assert np.all(region[view, :, :, 0][~masks[view]] == 0)
        assert np.any(region[view, :, :, 0][masks[view]] != 0)
    channel = PipelineConfig(num_views=3, num_masks=3, image_size=16, mask_mode="channel",
                             keep_mask_channel=False, normalization="dataset")
    transformed, meta = _transform([instance, instance], channel, tmp_path / "b")
    region = np.asarray(transformed[0][features.REGION_KEY]).reshape(3, 16, 16, 2)
    pixels = np.stack([np.asarray(t[features.REGION_KEY]).reshape(3, 16, 16, 2)[..., 0]
                       for t in transformed])
    assert abs(pixels.mean()) < 1e-3 and abs(pixels.std() - 1) < 1e-2


def test_views_are_checked_against_the_config(tmp_path, rng):
    instance = {features.IMAGES_KEY: [encode_png(rng.integers(0, 255, (16, 16), np.uint8))],
                features.MASKS_KEY: [encode_png(square_mask(16, 2, 9))], features.LABEL_KEY: [0]}
    config = PipelineConfig(num_views=1, num_masks=1, image_size=8, channels=3)
    transformed, _ = _transform([instance], config, tmp_path)
    assert np.asarray(transformed[0][features.REGION_KEY]).size == 8 * 8 * 4  # gray -> RGB + mask


@pytest.mark.parametrize("preset", ["seed", "resnet"])
@pytest.mark.parametrize("views", [1, 3])
def test_models_build_for_one_and_three_views(preset, views):
    config = PipelineConfig(num_views=views, num_masks=1, image_size=32, model_preset=preset)
    model = build_model(config)
    batch = np.zeros((2, views, 32, 32, config.input_channels), np.float32)
    assert model(batch).shape == (2, 1)
    assert model.input_shape == (None, views, 32, 32, 2)


@pytest.mark.parametrize("norm", ["group", "layer", "batch", "none"])
def test_resnet_normalization_layers(norm):
    config = PipelineConfig(num_views=1, num_masks=1, image_size=16, norm_layer=norm)
    model = build_model(config)
    kinds = {type(layer).__name__ for layer in model.get_layer("views").layer.layers}
    expected = {"group": "GroupNormalization", "layer": "LayerNormalization",
                "batch": "BatchNormalization"}
    for name, layer_kind in expected.items():
        assert (layer_kind in kinds) == (name == norm), kinds
    # group normalization keeps no statistic of the training data: a region's output does not
    # depend on what was trained on before, only on the weights
    if norm == "group":
        assert not [w for w in model.non_trainable_weights if "moving" in w.name]
    with pytest.raises(ConfigError, match="norm_layer"):
        PipelineConfig(norm_layer="instance").validate()


def test_group_normalization_is_keras_group_normalization_in_value_and_gradient(rng):
    from masktfx.modules.model import GroupNormalization

    features_in = tf.constant(rng.normal(3.0, 2.0, (4, 8, 8, 32)), tf.float32)
    ours, theirs = GroupNormalization(groups=8), tf.keras.layers.GroupNormalization(groups=8)
    ours.build(features_in.shape)
    theirs.build(features_in.shape)
    scale, offset = rng.normal(1.0, 0.3, 32), rng.normal(0.0, 0.3, 32)
    for layer in (ours, theirs):
        layer.set_weights([scale, offset])
    outputs, gradients = [], []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            tape.watch(features_in)
            result = layer(features_in)
            loss = tf.reduce_sum(result * tf.sin(features_in))
        outputs.append(result.numpy())
        gradients.append(tape.gradient(loss, [features_in, *layer.trainable_weights]))
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)
    for mine, keras_own in zip(*gradients):
        np.testing.assert_allclose(mine.numpy(), keras_own.numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="30 channels do not split into 8 groups"):
        GroupNormalization(groups=8).build(tf.TensorShape([None, 4, 4, 30]))


def test_stem_norm_adds_a_normalization_after_the_first_convolution():
    def normalizations(stem_norm: bool) -> int:
        config = PipelineConfig(num_views=1, num_masks=1, image_size=16, stem_norm=stem_norm)
        tower = build_model(config).get_layer("views").layer
        return sum(type(layer).__name__ == "GroupNormalization" for layer in tower.layers)

    assert normalizations(True) == normalizations(False) + 1


def test_every_augmentation_keeps_the_mask_binary_and_the_labels_apart(rng):
    from masktfx.modules.augmentation import augment

    batch, size = 16, 16
    image = rng.random((batch, 2, size, size, 3)).astype(np.float32)
    mask = np.zeros((batch, 2, size, size, 1), np.float32)
    mask[:, :, 4:12, 4:12] = 1.0
    regions = tf.constant(np.concatenate([image, mask], -1))
    tf.random.set_seed(3)
    names = ("flip", "intensity", "color", "noise", "blur", "scale", "random_convolution")
    out = augment(regions, 3, names).numpy()
    assert out.shape == regions.shape
    assert set(np.unique(out[..., 3])) <= {0.0, 1.0}  # the mask channel stays a mask
    np.testing.assert_array_equal(out[:, 0, ..., 3], out[:, 1, ..., 3])  # views move together
    assert not np.allclose(out[..., :3], image)
    # each augmentation alone changes the image channels, and only them
    for name in names:
        alone = augment(regions, 3, (name,)).numpy()
        assert not np.allclose(alone[..., :3], image), name
        if name not in ("flip", "scale"):
            np.testing.assert_array_equal(alone[..., 3], mask[..., 0])
    # colour on gray images is a no-op (intensity covers it)
    gray = tf.constant(np.concatenate([image[..., :1], mask], -1))
    np.testing.assert_array_equal(augment(gray, 1, ("color",)).numpy(), gray.numpy())
    with pytest.raises(ConfigError, match="augmentations"):
        PipelineConfig(augmentations="flip,rainbow").validate()
    assert PipelineConfig(augment=False).augmentation_list == []


def test_channels_zero_takes_the_channels_of_the_data(tmp_path):
    from masktfx.pipeline.data import describe_data, resolve_config

    for name, array, expected in (
            ("gray", _gradient(16), 1),
            ("rgb", np.stack([_gradient(16)] * 3, -1), 3),
            ("rgba", np.dstack([_gradient(16)] * 4), 3)):
        folder = tmp_path / name
        folder.mkdir()
        example = make_example([encode_png(array)], [encode_png(square_mask(16, 4, 12))], 1)
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        with tf.io.TFRecordWriter(str(folder / "data-00000-of-00001.tfrecord.gz"),
                                  options=options) as writer:
            writer.write(example.SerializeToString())
        description = describe_data(str(folder))
        assert description.channels == expected, name
        resolved = resolve_config(PipelineConfig(channels=0), description)
        assert resolved.channels == expected
        assert resolve_config(PipelineConfig(channels=1), description).channels == 1


def test_augment_moves_views_and_mask_together_and_scales_only_image_channels():
    from masktfx.modules.augmentation import augment

    rng = np.random.default_rng(0)
    batch, views, size = 64, 2, 8
    image = rng.random((batch, views, size, size, 1)).astype(np.float32)
    mask = np.repeat((rng.random((batch, 1, size, size, 1)) > 0.5).astype(np.float32), views, 1)
    tf.random.set_seed(1)
    out = augment(tf.constant(np.concatenate([image, mask], -1)), channels=1).numpy()

    def symmetries(square):  # the square's 8 flips and rotations
        return [np.rot90(base, turns) for base in (square, square.T) for turns in range(4)]

    used = set()
    for b in range(batch):
        matches = [i for i, candidate in enumerate(symmetries(image[b, 0, ..., 0]))
                   if np.allclose(np.corrcoef(candidate.ravel(), out[b, 0, ..., 0].ravel())[0, 1],
                                  1.0, atol=1e-5)]
        assert len(matches) == 1, f"example {b}: not one flip/rotation of its input"
        used.add(matches[0])
        for view in range(views):  # every view and the mask channel move the same way
            moved = symmetries(image[b, view, ..., 0])[matches[0]]
            assert np.array_equal(out[b, view, ..., 1],
                                  symmetries(mask[b, view, ..., 0])[matches[0]])
            contrast, brightness = np.polyfit(moved.ravel(), out[b, view, ..., 0].ravel(), 1)
            assert 0.8 <= contrast <= 1.2 and -0.2 <= brightness <= 0.2
            assert np.allclose(out[b, view, ..., 0], contrast * moved + brightness, atol=1e-5)
    assert used == set(range(8))


def test_autograph_leaves_keras_as_written_and_still_converts_our_functions():
    # TF 2.16 loads Keras 2 as `tf_keras`, which its autograph rules do not name: every trace
    # converted Keras's train step and metrics again (12 of the Trainer's 20 s at 1,000 regions)
    import tf_keras
    from tensorflow.python.autograph.impl import conversion

    from masktfx.modules.augmentation import augment

    assert conversion.is_allowlisted(tf_keras.Model.train_step)
    assert conversion.is_allowlisted(tf_keras.metrics.AUC.update_state)
    assert not conversion.is_allowlisted(augment)  # our tf.data functions keep autograph


def test_run_fn_saves_a_model_whose_signatures_agree(tiny_model):
    serving_dir, examples = tiny_model
    assert os.listdir(os.path.join(os.path.dirname(serving_dir), "run"))  # TensorBoard, summary
    loaded = tf.saved_model.load(serving_dir)
    assert set(loaded.signatures) == {features.SERVING_SIGNATURE, features.RAW_SIGNATURE,
                                      features.TRANSFORM_SIGNATURE,
                                      features.ATTRIBUTION_SIGNATURE}
    serialized = tf.constant([make_example([img], [mask]).SerializeToString()
                              for _, img, mask in examples])
    by_example = loaded.signatures[features.SERVING_SIGNATURE](examples=serialized)
    by_raw = loaded.signatures[features.RAW_SIGNATURE](
        images=tf.constant([[img] for _, img, _ in examples]),
        masks=tf.constant([[mask] for _, _, mask in examples]))
    probability = by_example[features.PROBABILITY_OUTPUT].numpy()
    assert probability.shape == (24,) and np.all((probability >= 0) & (probability <= 1))
    np.testing.assert_allclose(probability, by_raw[features.PROBABILITY_OUTPUT].numpy(),
                               atol=1e-6)
    np.testing.assert_array_equal(by_example[features.PREDICTED_LABEL_OUTPUT].numpy(),
                                  (probability >= 0.5).astype(np.int64))
    # attribution: the same probability; its mask is the region on the model's grid, the very
    # mask channel the model is fed; each share is the heat map's part inside that mask
    attributed = loaded.signatures[features.ATTRIBUTION_SIGNATURE](examples=serialized)
    np.testing.assert_allclose(attributed[features.PROBABILITY_OUTPUT].numpy(), probability,
                               atol=1e-6)
    labelled = tf.constant([make_example([img], [mask], label).SerializeToString()
                            for label, img, mask in examples])
    fed = loaded.signatures[features.TRANSFORM_SIGNATURE](examples=labelled)[
        features.REGION_KEY].numpy()
    masks = attributed[features.REGION_MASK_OUTPUT].numpy()
    np.testing.assert_array_equal(masks, fed[..., -1])
    np.testing.assert_array_equal(attributed[features.MODEL_INPUT_OUTPUT].numpy(), fed[..., 0])
    heat = attributed[features.HEAT_OUTPUT].numpy()
    assert heat.shape == masks.shape == (24, 1, 16, 16) and (heat >= 0).all()
    np.testing.assert_allclose(attributed[features.INSIDE_SHARE_OUTPUT].numpy(),
                               (heat * masks).sum(axis=(1, 2, 3)) / heat.sum(axis=(1, 2, 3)),
                               rtol=1e-5)


def test_integrated_gradients_add_up_to_the_change_of_the_probability(rng):
    from masktfx.modules.trainer import integrated_gradients

    # every pixel pushes the probability the same way, so |IG| summed is IG summed, which the
    # completeness axiom makes f(input) - f(baseline); the mask channel is not attributed
    inputs = tf.keras.Input((1, 8, 8, 2))
    weights = np.concatenate([rng.uniform(0.01, 0.05, (64, 1)), np.full((64, 1), 5.0)])
    flat = tf.keras.layers.Reshape((128,))(tf.keras.layers.Permute((1, 4, 2, 3))(inputs))
    dense = tf.keras.layers.Dense(1, activation="sigmoid")
    model = tf.keras.Model(inputs, dense(flat))
    dense.set_weights([weights.astype(np.float32), np.zeros(1, np.float32)])
    regions = np.concatenate([rng.uniform(0.5, 2.0, (3, 1, 8, 8, 1)),
                              np.ones((3, 1, 8, 8, 1))], axis=-1).astype(np.float32)
    heat = integrated_gradients(model, tf.constant(regions), channels=1).numpy()
    baseline = regions.copy()
    baseline[..., 0] = 0.0
    change = (model(regions) - model(baseline)).numpy().reshape(-1)
    np.testing.assert_allclose(heat.sum(axis=(1, 2, 3)), change, rtol=1e-3)


def test_training_under_a_mirrored_strategy(rng):
    from masktfx.modules.trainer import train_model

    config = PipelineConfig(num_views=1, num_masks=1, image_size=16, epochs=1, batch_size=8,
                            model_preset="seed", distribution_strategy="mirrored",
                            pretraining_epochs=1)
    regions = rng.random((32, 1, 16, 16, config.input_channels)).astype(np.float32)
    labels = (regions[:, 0, :, :, 0].mean(axis=(1, 2)) > 0.5).astype(np.int64)
    data = tf.data.Dataset.from_tensor_slices((regions, labels)).batch(8)
    # the contrastive pretraining runs in the same strategy's scope, on the regions it is given
    model, history, pretrained = train_model(
        config, data, data, {0: 1.0, 1: 1.0}, verbose=0,
        pretraining_regions=tf.data.Dataset.from_tensor_slices({features.REGION_KEY: regions}))
    assert isinstance(model.distribute_strategy, tf.distribute.MirroredStrategy)
    assert len(history.history["loss"]) == 1
    assert pretrained["regions"] == 32 and len(pretrained["loss"]) == 1
    with pytest.raises(ConfigError, match="distribution_strategy"):
        PipelineConfig(distribution_strategy="tpu").validate()


def test_statistics_input_lets_the_model_see_the_brightness_region_normalization_hides(
        tmp_path, tiny_model):
    from conftest import train_tiny_model

    # a region and the same region 40 grey levels brighter: identical after the region
    # normalization, so only the statistics branch can tell them apart
    rng = np.random.default_rng(11)
    image = rng.integers(0, 60, (20, 20)).astype(np.uint8)
    mask = encode_png(square_mask(20, 5, 15))
    pair = tf.constant([make_example([encode_png(image)], [mask]).SerializeToString(),
                        make_example([encode_png(image + 40)], [mask]).SerializeToString()])
    probabilities = {}
    # the tiny model: the same examples without statistics_input
    examples = tiny_model[1]
    for statistics_input, serving_dir in ((False, tiny_model[0]), (True, train_tiny_model(
            tmp_path, examples, statistics_input=True)[0])):
        loaded = tf.saved_model.load(serving_dir)
        probabilities[statistics_input] = loaded.signatures[features.SERVING_SIGNATURE](
            examples=pair)[features.PROBABILITY_OUTPUT].numpy()
    assert abs(probabilities[False][0] - probabilities[False][1]) < 1e-5
    assert abs(probabilities[True][0] - probabilities[True][1]) > 1e-3
    _assert_signatures_agree(loaded, examples)


def _assert_signatures_agree(loaded, examples) -> None:
    """The serving, raw and attribution signatures give the same probabilities, with a
    non-negative heat map and an OOD score."""
    serialized = tf.constant([make_example([img], [m]).SerializeToString()
                              for _, img, m in examples])
    by_example = loaded.signatures[features.SERVING_SIGNATURE](examples=serialized)
    by_raw = loaded.signatures[features.RAW_SIGNATURE](
        images=tf.constant([[img] for _, img, _ in examples]),
        masks=tf.constant([[m] for _, _, m in examples]))
    attributed = loaded.signatures[features.ATTRIBUTION_SIGNATURE](examples=serialized)
    for answers in (by_raw, attributed):
        np.testing.assert_allclose(answers[features.PROBABILITY_OUTPUT].numpy(),
                                   by_example[features.PROBABILITY_OUTPUT].numpy(), atol=1e-6)
    assert (attributed[features.HEAT_OUTPUT].numpy() >= 0).all()
    assert features.OOD_SCORE_OUTPUT in by_example


def test_statistics_input_needs_the_training_moments():
    config = PipelineConfig(num_views=1, num_masks=1, image_size=16, model_preset="seed",
                            statistics_input=True)
    with pytest.raises(ValueError, match="moments"):
        build_model(config)
    model = build_model(config, (np.zeros(5), np.ones(5)))
    assert {tensor.name.split(":")[0] for tensor in model.inputs} == {
        features.REGION_KEY, features.REGION_STATISTICS_KEY}


@pytest.fixture(scope="module")
def user_backbone_weights(tmp_path_factory):
    """The weights a user brings: MobileNet without its classifier, saved here (nothing is
    downloaded) and read through a URI (TensorFlow's in-memory file system)."""
    reference = tf.keras.applications.MobileNet(include_top=False, weights=None,
                                                  pooling="avg", input_shape=(32, 32, 3))
    local = str(tmp_path_factory.mktemp("weights") / "mobilenet_notop.h5")
    reference.save_weights(local)
    uri = "ram://user-weights/mobilenet_notop.h5"
    tf.io.gfile.copy(local, uri, overwrite=True)
    # by layer name (the input layer's is numbered, and holds no weights)
    return uri, {layer.name: layer.get_weights() for layer in reference.layers}


def _backbone(model: tf.keras.Model) -> tf.keras.Model:
    tower = model.get_layer("views").layer
    return next(layer for layer in tower.layers if isinstance(layer, tf.keras.Model))


def test_a_backbone_the_user_brings_is_loaded_then_frozen_partly_or_wholly_trained(
        user_backbone_weights, rng):
    uri, saved = user_backbone_weights
    config = PipelineConfig(num_views=1, num_masks=1, image_size=32, backbone="MobileNet",
                            backbone_weights=uri).validate()
    regions = rng.normal(size=(8, 1, 32, 32, config.input_channels)).astype(np.float32)
    labels = np.array([0, 1] * 4)
    for train_layers, trains in ((0, False), (-1, None), (4, True)):  # None: not fitted
        model = build_model(config.replace(backbone_train_layers=train_layers))
        backbone = _backbone(model)

        def moved(layer: tf.keras.layers.Layer) -> bool:
            return any(not np.array_equal(now, before)
                       for now, before in zip(layer.get_weights(), saved.get(layer.name, [])))

        assert not any(moved(layer) for layer in backbone.layers)  # the user's weights
        trainable = [layer.name for layer in backbone.layers if layer.trainable]
        assert trainable == {0: [], -1: [layer.name for layer in backbone.layers],
                             4: [layer.name for layer in backbone.layers[-4:]]}[train_layers]
        if trains is None:
            continue
        model.fit(regions, labels, epochs=1, batch_size=8, verbose=0)
        changed = [layer.name for layer in backbone.layers if moved(layer)]
        assert bool(changed) == trains
        assert set(changed) <= set(trainable)


def test_a_backbone_that_does_not_fit_is_refused_by_the_field_that_names_it(
        user_backbone_weights):
    from masktfx.modules.model import check_backbone

    uri, _ = user_backbone_weights
    config = PipelineConfig(num_views=1, num_masks=1, image_size=32, backbone="MobileNet",
                            backbone_weights=uri)
    with pytest.raises(ConfigError, match="backbone: .MobileNetV9.*MobileNetV2"):
        check_backbone(config.replace(backbone="MobileNetV9"))
    with pytest.raises(ConfigError, match="backbone: MobileNet does not take image_size 16"):
        check_backbone(config.replace(image_size=16))
    with pytest.raises(ConfigError, match="backbone_weights: no file at ram://elsewhere"):
        check_backbone(config.replace(backbone_weights="ram://elsewhere/w.h5"))
    with pytest.raises(ConfigError, match="backbone_weights: .* does not hold weights of"):
        build_model(config.replace(backbone="MobileNetV3Small"))
    with pytest.raises(ConfigError, match="backbone_weights.*needs backbone"):
        config.replace(backbone="").validate()
    with pytest.raises(ConfigError, match="backbone_train_layers.*must train"):
        config.replace(backbone_weights="").validate()


def test_run_fn_with_a_backbone_saves_a_model_whose_signatures_agree(
        tmp_path, user_backbone_weights):
    from conftest import train_tiny_model

    serving_dir, examples = train_tiny_model(
        tmp_path, image_size=32, epochs=1, backbone="MobileNet",
        backbone_weights=user_backbone_weights[0], backbone_train_layers=0)
    _assert_signatures_agree(tf.saved_model.load(serving_dir), examples)


def test_mask_pooling_averages_the_features_inside_and_around_the_region(rng):
    from masktfx.modules.model import MaskPooling

    found = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    mask = np.zeros((2, 8, 8, 1), np.float32)
    mask[0, :4, :4] = 1.0  # the top-left 2 x 2 cells of the features
    mask[1, :4, :3] = 1.0  # the same, but the second column of cells only half covered
    pooled = MaskPooling()([tf.constant(found), tf.constant(mask)]).numpy()
    assert pooled.shape == (2, 6)
    for example, cover in enumerate((np.array([[1.0, 1.0], [1.0, 1.0]]),
                                     np.array([[1.0, 0.5], [1.0, 0.5]]))):
        weights = np.zeros((4, 4))
        weights[:2, :2] = cover
        for part, weight in ((slice(0, 3), weights), (slice(3, 6), 1.0 - weights)):
            expected = (found[example] * weight[..., None]).sum((0, 1)) / weight.sum()
            np.testing.assert_allclose(pooled[example, part], expected, rtol=1e-5)


def test_mask_pooling_is_refused_without_the_mask_channel_or_the_resnet_tower():
    config = PipelineConfig(num_views=1, num_masks=1, tower_pooling="mask")
    tower = build_model(config.validate()).get_layer("views").layer
    assert tower.get_layer("mask_pooling").output_shape == (None, 256)  # 128 inside, 128 around
    for change in ({"keep_mask_channel": False}, {"mask_mode": "none"},
                   {"model_preset": "seed"}):
        with pytest.raises(ConfigError, match="tower_pooling. is mask, which needs"):
            config.replace(**change).validate()


def test_run_fn_with_mask_pooling_saves_a_model_whose_signatures_agree(tmp_path):
    from conftest import train_tiny_model

    serving_dir, examples = train_tiny_model(tmp_path, epochs=1, model_preset="resnet",
                                             tower_pooling="mask")
    _assert_signatures_agree(tf.saved_model.load(serving_dir), examples)
