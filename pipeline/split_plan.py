"""Whether ImportExampleGen's split can work on the data, decided before any component runs.

ImportExampleGen hashes each example's partition feature (`group`, or `id` with `split_by: id`)
into `train_buckets + validation_buckets + test_buckets` buckets (sha256 of the serialized
feature, as `tfx.components.example_gen.base_example_gen_executor._PartitionFn` does); a group never
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
from masktfx.intervals import MIN_GROUPS


class SplitPlanError(ValueError):
    """The configured split cannot give every split both classes; the message says what to do."""


@dataclass(frozen=True)
class SplitPlan:
    partition_feature: str  # the feature hashed: group or id
    partitions: int  # distinct values of it
    counts: dict[str, list[int]]  # split -> [negatives, positives]
    partitions_per_split: dict[str, int]  # split -> distinct values of it there


def bucket_of(value: bytes, total_buckets: int) -> int:
    """The bucket ImportExampleGen puts a partition value in (a bytes feature of one value)."""
    feature = feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[value]))
    digest = hashlib.sha256(feature.SerializeToString(deterministic=True)).hexdigest()
    return int(digest, 16) % total_buckets


def split_buckets(config: PipelineConfig) -> dict[str, int]:
    """Each split's hash buckets, in ImportExampleGen's order."""
    return {features.TRAIN_SPLIT: config.train_buckets,
            features.VALIDATION_SPLIT: config.validation_buckets,
            features.TEST_SPLIT: config.test_buckets}


def split_of(value: bytes, config: PipelineConfig) -> str:
    """The split ImportExampleGen puts a partition value in: the buckets are laid out in the
    order of the splits (`_PartitionFn` bisects their running totals)."""
    buckets = split_buckets(config)
    bucket = bucket_of(value, sum(buckets.values()))
    for split, count in buckets.items():
        if bucket < count:
            return split
        bucket -= count
    raise AssertionError("a bucket beyond the total")  # unreachable: bucket < total


def plan_split(labels_by_partition: Mapping[bytes, list[int]], config: PipelineConfig
               ) -> SplitPlan:
    """Counts per split of the partition values' [negatives, positives]."""
    counts = {split: [0, 0] for split in features.SPLITS}
    partitions = dict.fromkeys(features.SPLITS, 0)
    for value, (negatives, positives) in labels_by_partition.items():
        split = split_of(value, config)
        counts[split][0] += negatives
        counts[split][1] += positives
        partitions[split] += 1
    return SplitPlan(partition_feature_name(config), len(labels_by_partition), counts,
                     partitions)


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
    buckets = split_buckets(config)
    layout = (f"each {column} value is hashed into one of {sum(buckets.values())} buckets ("
              + ", ".join(f"{split}_buckets: {count}" for split, count in buckets.items())
              + ")")
    counts = ", ".join(f"{split} {sum(c)} ({c[0]} label 0, {c[1]} label 1; "
                       f"{plan.partitions_per_split[split]} {column} value(s))"
                       for split, c in plan.counts.items())
    advice = ("give the manifest more groups (each patient, subject, scene or site its own "
              "`group` value: the more groups, the closer the split follows the buckets), or "
              "give validation and test more buckets (validation_buckets, test_buckets), or "
              "set `split_by: id` (--split-by id) to split by example, at the risk that "
              "neighbouring examples of one group leak between the splits"
              if column == features.GROUP_KEY else
              "give the data more examples of each class, or change the buckets")
    raise SplitPlanError(
        f"the data cannot be split by the `{column}` column: {'; '.join(problems)}. It holds "
        f"{plan.partitions} distinct {column} value(s); {layout}; that gives {counts}. To fix: "
        f"{advice}.")


def few_groups_warning(plan: SplitPlan) -> str:
    """What to say when the test split holds too few groups for the cluster bootstrap's
    intervals to mean anything ('' when it holds enough)."""
    groups = plan.partitions_per_split[features.TEST_SPLIT]
    if groups >= MIN_GROUPS:
        return ""
    return (f"the test split holds {groups} {plan.partition_feature} value(s); intervals over "
            f"fewer than {MIN_GROUPS} are not meaningful and are reported as such (their gates "
            f"refuse to bless). Give the manifest more groups or raise test_buckets")
