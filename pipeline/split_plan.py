"""Whether ImportExampleGen's split can work on the data, decided before any component runs.

ImportExampleGen hashes each example's partition feature (`group`, or `id` with `split_by: id`)
into `train_buckets + eval_buckets` buckets (sha256 of the serialized feature, as
`tfx.components.example_gen.base_example_gen_executor._PartitionFn` does); a group never
straddles the splits. Data whose rows share one group, or too few groups, can leave a split empty
or without one of the classes: the Trainer then fails after minutes, or the Evaluator refuses to
bless for a reason nobody can read. This reproduces the assignment from the partition values and
labels that `verify_shards` reads once per shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from tensorflow.core.example import feature_pb2

from masktfx import features
from masktfx.config import PipelineConfig


class SplitPlanError(ValueError):
    """The configured split cannot give both splits both classes; the message says what to do."""


@dataclass(frozen=True)
class SplitPlan:
    partition_feature: str  # the feature hashed: group or id
    partitions: int  # distinct values of it
    counts: dict[str, list[int]]  # split -> [negatives, positives]


def bucket_of(value: bytes, total_buckets: int) -> int:
    """The bucket ImportExampleGen puts a partition value in (a bytes feature of one value)."""
    feature = feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[value]))
    digest = hashlib.sha256(feature.SerializeToString(deterministic=True)).hexdigest()
    return int(digest, 16) % total_buckets


def plan_split(labels_by_partition: Mapping[bytes, list[int]], config: PipelineConfig
               ) -> SplitPlan:
    """Counts per split of the partition values' [negatives, positives]."""
    total = config.train_buckets + config.eval_buckets
    counts = {features.TRAIN_SPLIT: [0, 0], features.EVAL_SPLIT: [0, 0]}
    for value, (negatives, positives) in labels_by_partition.items():
        split = (features.TRAIN_SPLIT if bucket_of(value, total) < config.train_buckets
                 else features.EVAL_SPLIT)
        counts[split][0] += negatives
        counts[split][1] += positives
    return SplitPlan(partition_feature_name(config), len(labels_by_partition), counts)


def partition_feature_name(config: PipelineConfig) -> str:
    return features.ID_KEY if config.split_by == "id" else features.GROUP_KEY


def check_split(labels_by_partition: Mapping[bytes, list[int]], config: PipelineConfig
                ) -> SplitPlan:
    """The plan, or SplitPlanError naming the column, the number of its values, the split plan
    and what to do when a split would be empty or hold one class only."""
    plan = plan_split(labels_by_partition, config)
    problems = []
    for split, (negatives, positives) in plan.counts.items():
        if negatives + positives == 0:
            problems.append(f"the {split} split would be empty")
        elif not negatives or not positives:
            problems.append(f"the {split} split would hold label {1 if positives else 0} only "
                            f"({negatives + positives} examples)")
    if not problems:
        return plan
    column = plan.partition_feature
    layout = (f"each {column} value is hashed into one of "
              f"{config.train_buckets + config.eval_buckets} buckets, {config.eval_buckets} of "
              f"them eval (train_buckets: {config.train_buckets}, eval_buckets: "
              f"{config.eval_buckets})")
    counts = ", ".join(f"{split} {sum(c)} ({c[0]} label 0, {c[1]} label 1)"
                       for split, c in plan.counts.items())
    advice = ("give the manifest more groups (each patient, subject, scene or site its own "
              "`group` value: the more groups, the closer the split follows the buckets), or "
              "set `split_by: id` (--split-by id) to split by example, at the risk that "
              "neighbouring examples of one group leak between train and eval"
              if column == features.GROUP_KEY else
              "give the data more examples of each class, or change the buckets")
    raise SplitPlanError(
        f"the data cannot be split by the `{column}` column: {'; '.join(problems)}. It holds "
        f"{plan.partitions} distinct {column} value(s); {layout}; that gives {counts}. To fix: "
        f"{advice}.")
