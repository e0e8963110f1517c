"""Unlabeled regions (manifest rows whose label is empty): ingest keeps them, ExampleGen puts
them in a split of their own, the Trainer may learn from them, and no metric counts them. The
pipeline run that learns from them is test_span_window.py's (a window whose second span holds
some)."""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf
from conftest import blank_labels, ingest_manifest

from masktfx import cli, features
from masktfx.config import PipelineConfig
from masktfx.demo_data import write_synthetic
from masktfx.manifest import read_manifest
from masktfx.modules.schema import contract_schema
from masktfx.modules.trainer import label_counts_and_moments, labelled, pseudo_labels
from masktfx.pipeline.pipeline import training_splits


def test_ingest_keeps_rows_with_an_empty_label_as_unlabeled(tmp_path):
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=16, size=16)
    blanked = blank_labels(manifest, "site4")
    assert blanked == 4
    # a reader that needs labels still refuses them, naming the row
    refused = read_manifest(manifest).rejected
    assert len(refused) == 4 and all("empty label" in item.reason for item in refused)
    records, rejected = ingest_manifest(manifest, str(tmp_path / "out"))
    assert rejected == {} and len(records) == 16
    labels = {key: list(feature[features.LABEL_KEY].int64_list.value)
              for key, feature in records.items()}
    assert sorted(key for key, value in labels.items() if value == [features.UNLABELED]) == \
        sorted(key for key, feature in records.items()
               if feature["site"].bytes_list.value[0] == b"site4")
    with open(tmp_path / "out" / features.INGEST_REPORT, encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["unlabeled"] == 4 and report["examples_written"] == 16
    assert report["label_balance"]["0"] + report["label_balance"]["1"] == 12


def test_the_contract_admits_the_unlabeled_value_only_for_data_that_holds_it():
    config = PipelineConfig(num_views=1, num_masks=1)
    for unlabeled_split, lowest in ((False, 0), (True, features.UNLABELED)):
        schema = contract_schema(config.replace(unlabeled_split=unlabeled_split))
        label = next(f for f in schema.feature if f.name == features.LABEL_KEY)
        assert (label.int_domain.min, label.int_domain.max) == (lowest, 1)


def test_a_run_on_unlabeled_regions_alone_is_refused_before_any_component(tmp_path, capsys):
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=8, size=16, num_sites=1)
    blank_labels(manifest, "site1")
    workdir = tmp_path / "work"
    assert cli.main(["run", "--data", manifest, "--workdir", str(workdir)]) == 2
    assert "all 8 regions are unlabeled" in capsys.readouterr().err
    assert not (workdir / "pipeline_root").exists()


def _transformed(labels: list[int], seed: int = 0) -> tf.data.Dataset:
    rng = np.random.default_rng(seed)
    count = len(labels)
    return tf.data.Dataset.from_tensor_slices({
        features.REGION_KEY: rng.normal(size=(count, 1, 16, 16, 2)).astype(np.float32),
        features.REGION_STATISTICS_KEY: rng.normal(size=(count, 5)).astype(np.float32),
        features.TRANSFORMED_LABEL_KEY: np.array(labels, np.int64)}).batch(4)


def test_training_counts_and_reads_labelled_and_unlabeled_regions_apart(tmp_path):
    labels = [0, 1, features.UNLABELED, 1, features.UNLABELED, 0, 0]
    batches = _transformed(labels)
    assert [int(x[features.TRANSFORMED_LABEL_KEY]) for x in labelled(batches)] == [0, 1, 1, 0, 0]
    assert len(list(labelled(batches, unlabeled=True))) == 2
    # the pass that gives the class weights and the statistics' moments, over gzipped records
    path = str(tmp_path / "part.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for batch in batches.unbatch():
            feature = {
                features.REGION_KEY: tf.train.Feature(float_list=tf.train.FloatList(
                    value=batch[features.REGION_KEY].numpy().ravel())),
                features.REGION_STATISTICS_KEY: tf.train.Feature(float_list=tf.train.FloatList(
                    value=batch[features.REGION_STATISTICS_KEY].numpy())),
                features.TRANSFORMED_LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(
                    value=[int(batch[features.TRANSFORMED_LABEL_KEY])]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                         .SerializeToString())

    class Output:  # what label_counts_and_moments asks of a TFTransformOutput
        @staticmethod
        def transformed_feature_spec():
            return {features.REGION_KEY: tf.io.FixedLenFeature([1, 16, 16, 2], tf.float32),
                    features.REGION_STATISTICS_KEY: tf.io.FixedLenFeature([5], tf.float32),
                    features.TRANSFORMED_LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}

    counts, (mean, _), unlabeled = label_counts_and_moments(path, Output())
    assert counts == [3, 2] and unlabeled == 2
    known = np.concatenate([x[features.REGION_STATISTICS_KEY].numpy()
                            for x in batches])[np.array(labels) != features.UNLABELED]
    np.testing.assert_allclose(mean, known.mean(axis=0), rtol=1e-6)


def test_pseudo_labels_keep_the_most_confident_share_of_each_class():
    """A model whose probability is the mean of the region's first channel, sigmoid-squashed:
    of the regions on either side of 0, the half farthest from it is kept, with the label its
    side gives, however sure the model is of each side."""
    config = PipelineConfig(num_views=1, num_masks=1, channels=1, image_size=16,
                            pseudo_label_share=0.5).validate()
    inputs = tf.keras.Input([1, 16, 16, 2])
    model = tf.keras.Model(inputs, tf.keras.layers.Lambda(lambda x: tf.sigmoid(
        40.0 * tf.reduce_mean(x[..., 0], axis=[1, 2, 3])))(inputs))
    # four regions on the negative side (all barely), three on the positive one (0.0 counts
    # as positive: probability 0.5), one of them far out
    levels = np.array([-0.01, -0.02, 0.0, 0.02, -0.005, 1.0, -0.03], np.float32)
    regions = np.broadcast_to(levels[:, None, None, None, None], (7, 1, 16, 16, 2)).copy()
    unlabeled = tf.data.Dataset.from_tensor_slices({
        features.REGION_KEY: regions,
        features.REGION_STATISTICS_KEY: np.zeros((7, 5), np.float32),
        features.TRANSFORMED_LABEL_KEY: np.full(7, features.UNLABELED, np.int64)})
    found, used = pseudo_labels(model, unlabeled, config)
    assert used == {"unlabeled_seen": 7, "pseudo_labelled_0": 2, "pseudo_labelled_1": 2}
    np.testing.assert_array_equal(found[features.TRANSFORMED_LABEL_KEY], [0, 1, 1, 0])
    np.testing.assert_array_equal(found[features.REGION_KEY][:, 0, 0, 0, 0],
                                  np.float32([-0.02, 0.02, 1.0, -0.03]))
    everything, used = pseudo_labels(model, unlabeled, config.replace(pseudo_label_share=1.0))
    assert len(everything[features.TRANSFORMED_LABEL_KEY]) == 7


def test_ranked_pseudo_labels_take_both_ends_of_the_ranking_in_the_labelled_shares():
    """A model that calls every region present (probabilities 0.6-0.95, as on a site it never
    saw): the confidence rule gives one class; the ranking rule takes the share of all regions
    at the two ends, split as the labelled regions are (here 3 present to 1 absent)."""
    inputs = tf.keras.Input([1, 8, 8, 2])
    model = tf.keras.Model(inputs, tf.keras.layers.Lambda(
        lambda x: tf.reduce_mean(x[..., 0], axis=[1, 2, 3]))(inputs))
    levels = np.linspace(0.6, 0.95, 16).astype(np.float32)[::-1].copy()  # any order
    unlabeled = tf.data.Dataset.from_tensor_slices({
        features.REGION_KEY: np.broadcast_to(levels[:, None, None, None, None],
                                             (16, 1, 8, 8, 2)).copy(),
        features.TRANSFORMED_LABEL_KEY: np.full(16, features.UNLABELED, np.int64)})
    config = PipelineConfig(num_views=1, num_masks=1, image_size=8, pseudo_label_share=0.5,
                            unlabeled_training="pseudo_labels").validate()
    _, used = pseudo_labels(model, unlabeled, config, present_share=0.75)
    assert used == {"unlabeled_seen": 16, "pseudo_labelled_0": 0, "pseudo_labelled_1": 8}
    found, used = pseudo_labels(model, unlabeled.batch(1).unbatch(),  # batches do not matter
                                config.replace(unlabeled_training="ranked_pseudo_labels"),
                                present_share=0.75)
    assert used == {"unlabeled_seen": 16, "pseudo_labelled_0": 2, "pseudo_labelled_1": 6}
    by_level = dict(zip(found[features.REGION_KEY][:, 0, 0, 0, 0].round(4),
                        found[features.TRANSFORMED_LABEL_KEY]))
    assert by_level == {**{level: 1 for level in np.sort(levels)[-6:].round(4)},
                        **{level: 0 for level in np.sort(levels)[:2].round(4)}}


def test_a_kubeflow_spec_compiled_from_data_with_unlabeled_regions_trains_on_them(tmp_path):
    import yaml

    manifest = write_synthetic(str(tmp_path / "data"), num_examples=16, size=16)
    blank_labels(manifest, "site4")
    ingest_manifest(manifest, str(tmp_path / "ingested"))
    output = str(tmp_path / "pipeline.yaml")
    assert cli.main(["compile", "--output", output, "--image", "registry.example/masktfx:0.1.0",
                     "--pipeline-root", str(tmp_path / "root"), "--data-sample",
                     str(tmp_path / "ingested"), "--no-use-spans"]) == 0
    with open(output, encoding="utf-8") as handle:
        spec = next(yaml.safe_load_all(handle))
    # ExampleGen routes the unlabeled regions, Transform transforms their split
    tasks = spec["root"]["dag"]["tasks"]
    example_gen = json.dumps(tasks["ImportExampleGen"])
    assert "unlabeled_split" in example_gen and "google.protobuf.Struct" in example_gen
    splits = json.loads(tasks["Transform"]["inputs"]["parameters"]["splits_config"][
        "runtimeValue"]["constant"])
    assert splits["transform"] == ["train", "validation", features.UNLABELED_SPLIT]
    # the Trainer reads the unlabeled split to pseudo-label it, or to pretrain on it
    base = PipelineConfig(unlabeled_split=True)
    assert training_splits(base) == ["train", features.UNLABELED_SPLIT]
    assert training_splits(base.replace(unlabeled_training="none")) == []
    assert training_splits(base.replace(unlabeled_training="none", pretraining_epochs=2)) == [
        "train", features.UNLABELED_SPLIT]


def test_the_run_summary_says_what_became_of_the_unlabeled_regions():
    from masktfx.pipeline.summary import NO_UNLABELED_REGIONS, RunSummary, format_summary

    split = features.UNLABELED_SPLIT
    summary = RunSummary(run_id="r", examples={"train": 30, "validation": 6, "test": 6,
                                               split: 12})
    shown = format_summary(summary)
    assert f"examples: train 30, validation 6, test 6, {split} 12" in shown
    assert "unlabeled regions: 12, not used for training (unlabeled_training: none)" in shown
    summary.pretraining = {"epochs": 3, "regions": 42, "loss": [4.1, 4.0, 3.9]}
    shown = format_summary(summary)
    assert "unlabeled regions: 12, not pseudo-labelled (unlabeled_training: none)" in shown
    assert ("pretraining: the tower learnt from 42 training regions, labelled or not, for 3 "
            "epochs") in shown
    summary.pretraining = {}
    summary.unlabeled = {"unlabeled_regions": 12, "unlabeled_training": "pseudo_labels",
                         "unlabeled_seen": 12, "pseudo_labelled_0": 2, "pseudo_labelled_1": 4}
    assert "the Trainer used 6 of 12 as pseudo-labels (2 absent, 4 present)" in \
        format_summary(summary)
    labelled_only = RunSummary(run_id="r", examples={"train": 30, "validation": 6, "test": 6})
    assert "unlabeled regions" not in format_summary(labelled_only)  # no training summary
    # the default learns from unlabeled regions: without any, the summary says what it misses
    labelled_only.unlabeled = {"unlabeled_regions": 0,
                               "unlabeled_training": PipelineConfig().unlabeled_training}
    assert NO_UNLABELED_REGIONS in format_summary(labelled_only)
    labelled_only.unlabeled["unlabeled_training"] = "none"
    assert "unlabeled regions" not in format_summary(labelled_only)
