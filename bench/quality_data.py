"""bench/quality's data: the regions of a dataset as ingest stores them, the two tree sites, and
the three-way split of a site (issue #31's protocol)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402

from masktfx import features  # noqa: E402
from masktfx.config import PipelineConfig  # noqa: E402
from masktfx.demo_data import write_nuclei, write_synthetic, write_trees  # noqa: E402
from masktfx.images import load_region  # noqa: E402
from masktfx.manifest import read_manifest  # noqa: E402
from masktfx.pipeline.split_plan import split_of  # noqa: E402


@dataclass
class Rows:
    images: list[list[bytes]]
    masks: list[list[bytes]]
    labels: np.ndarray
    groups: list[str]
    sites: list[str]
    channels: int  # the channels the images are stored with (largest of the data)

    def take(self, keep: np.ndarray) -> Rows:
        index = np.flatnonzero(keep)
        return Rows([self.images[i] for i in index], [self.masks[i] for i in index],
                    self.labels[index], [self.groups[i] for i in index],
                    [self.sites[i] for i in index], self.channels)

    def joined(self, other: Rows) -> Rows:
        return Rows(self.images + other.images, self.masks + other.masks,
                    np.concatenate([self.labels, other.labels]), self.groups + other.groups,
                    self.sites + other.sites, max(self.channels, other.channels))


def load_rows(manifest_path: str, site_column: str | None) -> Rows:
    """Encoded images and masks as ingest stores them, labels, groups and sites."""
    manifest = read_manifest(manifest_path)
    images, masks, labels, groups, sites, channels = [], [], [], [], [], 1
    for row in manifest.rows:
        region = load_region(row.images, row.masks, 10**8)
        channels = max(channels, *(info.channels for info in region.images))
        images.append([info.encoded for info in region.images])
        masks.append(region.masks)
        labels.append(row.label)
        groups.append(row.group)
        metadata = dict(row.metadata)
        sites.append(metadata[site_column] if site_column else row.group)
    return Rows(images, masks, np.array(labels), groups, sites, channels)


def single_site_manifest(work: str, name: str, synthetic_examples: int) -> str:
    """The manifest of `nuclei_hard` or `synthetic`, written under `work`."""
    if name == "nuclei_hard":
        return write_nuclei(os.path.join(work, name), hard=True)
    return write_synthetic(os.path.join(work, name), num_examples=synthetic_examples, size=64)


def tree_pairs(work: str, unlabeled_regions: int = 0):
    """(training site, other site, their rows) of the trees data written under `work`, trained
    on Wyoming and scored on California, then the reverse. The rows the data holds with an
    empty label (`unlabeled_regions` of them, from an unannotated scene) are left out here and
    read by `unlabeled_rows`."""
    rows = load_rows(write_trees(os.path.join(work, "trees"),
                                 unlabeled_regions=unlabeled_regions), "site")
    sites = np.array(rows.sites)
    for site, other in (("wyoming", "california"), ("california", "wyoming")):
        yield site, other, rows.take(sites == site), rows.take(sites == other)


def unlabeled_rows(work: str) -> Rows:
    """The unlabeled rows of the trees data `tree_pairs` wrote under `work` (label -1)."""
    manifest = read_manifest(os.path.join(work, "trees", "manifest.csv"), empty_labels=True)
    images, masks, groups, sites, channels = [], [], [], [], 1
    for row in manifest.rows:
        if row.label is not None:
            continue
        region = load_region(row.images, row.masks, 10**8)
        channels = max(channels, *(info.channels for info in region.images))
        images.append([info.encoded for info in region.images])
        masks.append(region.masks)
        groups.append(row.group)
        sites.append(dict(row.metadata)["site"])
    return Rows(images, masks, np.full(len(images), features.UNLABELED), groups, sites,
                channels)


def three_way(rows: Rows) -> tuple[dict[str, Rows], str]:
    """`fit`, `validation` and `holdout` rows of one site, by group, with the pipeline's own
    hash buckets (train / validation / test): the hold-out's groups are never used for fitting
    or early stopping. Data with too few groups for each split to hold both classes are split
    by row instead (as the pipeline's `split_by: id`); the second value says which."""
    config = PipelineConfig()
    for split_by, keys in (("group", rows.groups),
                           ("row", [str(index) for index in range(len(rows.labels))])):
        names = np.array([split_of(key.encode(), config) for key in keys])
        found = {key: rows.take(names == split) for key, split in (
            ("fit", features.TRAIN_SPLIT), ("validation", features.VALIDATION_SPLIT),
            ("holdout", features.TEST_SPLIT))}
        if all(len(set(part.labels.tolist())) == 2 for part in found.values()):
            return found, split_by
    raise SystemExit(f"{len(rows.labels)} rows cannot be split three ways with both classes "
                     "in each split")


def describe_splits(splits: dict[str, Rows]) -> dict:
    """Regions, groups and the positive share of each split."""
    return {key: {"regions": len(rows.labels), "groups": len(set(rows.groups)),
                  "positive_fraction": round(float(rows.labels.mean()), 3)}
            for key, rows in splits.items()}
