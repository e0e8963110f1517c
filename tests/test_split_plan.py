"""Splits that cannot work are refused before any component runs; `split_by: id` splits by
example. The bucket of a partition value is checked against TFX's own partition function."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import tensorflow as tf

from masktfx import cli, features
from masktfx.config import PipelineConfig
from masktfx.demo_data import write_synthetic
from masktfx.pipeline.split_plan import (
    SplitPlanError,
    check_split,
    few_groups_warning,
    split_of,
)
from masktfx.pipeline.summary import summarize_run
from masktfx.records import make_example


def test_buckets_are_the_ones_import_example_gen_uses():
    from tfx.components.example_gen.base_example_gen_executor import _PartitionFn
    from tfx.proto import example_gen_pb2

    for buckets in ((14, 3, 3), (4, 1, 2), (7, 3, 1)):
        config = PipelineConfig(train_buckets=buckets[0], validation_buckets=buckets[1],
                                test_buckets=buckets[2])
        split_config = example_gen_pb2.SplitConfig(
            splits=[example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=count)
                    for name, count in zip(features.SPLITS, buckets)],
            partition_feature_name=features.GROUP_KEY)
        totals = [int(total) for total in np.cumsum(buckets)]  # as TFX's driver passes them
        for index in range(200):
            group = f"site{index % 7}-subject{index}".encode()
            example = tf.train.Example.FromString(make_example(
                [b"x"], [b"y"], 1, f"id{index}", group.decode()).SerializeToString())
            expected = _PartitionFn(example, 3, totals, split_config)
            assert features.SPLITS.index(split_of(group, config)) == expected, group


def test_one_group_or_one_class_per_split_is_refused_with_what_to_do():
    config = PipelineConfig()
    one_group = {b"scene-1": [40, 40]}
    with pytest.raises(SplitPlanError) as refused:
        check_split(one_group, config)
    message = str(refused.value)
    assert "`group` column" in message and "1 distinct group value" in message
    assert "would be empty" in message
    assert "train_buckets: 14, validation_buckets: 3, test_buckets: 3" in message
    assert "split_by: id" in message
    # many groups, but every positive in the train split's groups
    groups = {f"g{i}".encode(): [5, 0] for i in range(60)}
    train_only = next(g for g in groups if split_of(g, config) == features.TRAIN_SPLIT)
    groups[train_only] = [0, 50]
    with pytest.raises(SplitPlanError, match="test split would hold label 0 only"):
        check_split(groups, config)
    # enough groups of both classes: a plan, with every example counted once
    mixed = {f"g{i}".encode(): [3, 2] for i in range(60)}
    plan = check_split(mixed, config)
    assert sum(map(sum, plan.counts.values())) == 300 and plan.partitions == 60
    assert sum(plan.partitions_per_split.values()) == 60 and set(plan.counts) == {
        "train", "validation", "test"}
    # few groups in the test split: the plan works, and says the intervals will not
    few = {name: counts for name, counts in mixed.items()
           if split_of(name, config) != features.TEST_SPLIT}
    few.update(dict(list({name: counts for name, counts in mixed.items()
                          if split_of(name, config) == features.TEST_SPLIT}.items())[:2]))
    warning = few_groups_warning(check_split(few, config))
    assert "test split holds 2 group value(s)" in warning and "test_buckets" in warning
    assert few_groups_warning(plan) == ""


def _one_group_manifest(tmp_path) -> str:
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=80, size=16, seed=3)
    with open(manifest, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "group": "the-only-scene"} for row in rows)
    return manifest


def test_a_manifest_of_one_group_stops_before_any_component(tmp_path, capsys):
    manifest = _one_group_manifest(tmp_path)
    workdir = tmp_path / "work"
    assert cli.main(["run", "--data", manifest, "--workdir", str(workdir),
                     "--direct-running-mode", "in_memory"]) == 2
    err = capsys.readouterr().err
    assert "`group` column" in err and "1 distinct group value" in err and "split_by: id" in err
    assert not (workdir / "metadata.sqlite").exists()  # no component ran


@pytest.mark.slow
def test_split_by_id_trains_and_evaluates_on_both_splits(tmp_path, capsys):
    manifest = _one_group_manifest(tmp_path)
    workdir = str(tmp_path / "work")
    assert cli.main(["run", "--data", manifest, "--workdir", workdir, "--split-by", "id",
                     "--image-size", "16", "--epochs", "2", "--model-preset", "seed",
                     "--min-accuracy", "0", "--direct-running-mode", "in_memory",
                     # tested in test_serving_check.py, test_intervals.py and the e2e run
                     "--no-serving-check", "--no-confidence-intervals"]) == 0
    captured = capsys.readouterr()
    assert "split_by: id" in captured.err and "train, validation and test" in captured.err
    summary = summarize_run(PipelineConfig(workdir=workdir))
    assert summary.components["Trainer"] == "COMPLETE" and summary.metrics["example_count"] > 0
    assert all(summary.examples[split] > 0 for split in features.SPLITS)
    assert sum(summary.examples[split] for split in features.SPLITS) == 80
    pattern = os.path.join(workdir, "pipeline_root", "ImportExampleGen", "examples", "*",
                           "Split-test", "*.gz")
    labels = {tf.train.Example.FromString(record.numpy()).features.feature[
        features.LABEL_KEY].int64_list.value[0]
        for record in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern),
                                              compression_type="GZIP")}
    assert labels == {0, 1}
