"""Splits that cannot work are refused before any component runs; `split_by: id` splits by
example. The bucket of a partition value is checked against TFX's own partition function."""

from __future__ import annotations

import csv
import os

import pytest
import tensorflow as tf

from masktfx import cli, features
from masktfx.config import PipelineConfig
from masktfx.demo_data import write_synthetic
from masktfx.pipeline.split_plan import SplitPlanError, bucket_of, check_split
from masktfx.pipeline.summary import summarize_run
from masktfx.records import make_example


def test_buckets_are_the_ones_import_example_gen_uses():
    from tfx.components.example_gen.base_example_gen_executor import _PartitionFn
    from tfx.proto import example_gen_pb2

    for train, evaluation in ((4, 1), (7, 3)):
        split_config = example_gen_pb2.SplitConfig(
            splits=[example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=train),
                    example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=evaluation)],
            partition_feature_name=features.GROUP_KEY)
        for index in range(200):
            group = f"site{index % 7}-subject{index}".encode()
            example = tf.train.Example.FromString(make_example(
                [b"x"], [b"y"], 1, f"id{index}", group.decode()).SerializeToString())
            expected = _PartitionFn(example, 2, [train, train + evaluation], split_config)
            ours = 0 if bucket_of(group, train + evaluation) < train else 1
            assert ours == expected, group


def test_one_group_or_one_class_per_split_is_refused_with_what_to_do():
    config = PipelineConfig()
    one_group = {b"scene-1": [40, 40]}
    with pytest.raises(SplitPlanError) as refused:
        check_split(one_group, config)
    message = str(refused.value)
    assert "`group` column" in message and "1 distinct group value" in message
    assert "would be empty" in message and "train_buckets: 4, eval_buckets: 1" in message
    assert "split_by: id" in message
    # many groups, but every positive in the train split's groups
    groups = {f"g{i}".encode(): [5, 0] for i in range(60)}
    train_only = next(g for g in groups if bucket_of(g, 5) < 4)
    groups[train_only] = [0, 50]
    with pytest.raises(SplitPlanError, match="eval split would hold label 0 only"):
        check_split(groups, config)
    # enough groups of both classes: a plan, with every example counted once
    mixed = {f"g{i}".encode(): [3, 2] for i in range(60)}
    plan = check_split(mixed, config)
    assert sum(map(sum, plan.counts.values())) == 300 and plan.partitions == 60


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
    assert "split_by: id" in captured.err and "both train and eval" in captured.err
    summary = summarize_run(PipelineConfig(workdir=workdir))
    assert summary.components["Trainer"] == "COMPLETE" and summary.metrics["example_count"] > 0
    assert summary.examples["train"] > 0 and summary.examples["eval"] > 0
    assert summary.examples["train"] + summary.examples["eval"] == 80
    pattern = os.path.join(workdir, "pipeline_root", "ImportExampleGen", "examples", "*",
                           "Split-eval", "*.gz")
    labels = {tf.train.Example.FromString(record.numpy()).features.feature[
        features.LABEL_KEY].int64_list.value[0]
        for record in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern),
                                              compression_type="GZIP")}
    assert labels == {0, 1}
