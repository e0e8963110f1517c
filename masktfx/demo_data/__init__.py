"""Built-in demo data, made on the spot: nothing is downloaded at run time.

`synthetic`: every image holds the same number of look-alike spots; a positive region holds one of
them inside its mask, a negative region holds none (all its spots lie outside). The region itself
is invisible without its mask, so a model that ignores the mask sees no difference between the
classes. Half of all regions, of either class, also hold a bright thin streak (a vessel-like
confounder), so the brightest pixel inside the region does not give the answer away: the shape
does. Sites differ the way scanners do: brightness, contrast, noise and scale.

`nuclei`: real fluorescence microscopy (BBBC038, the 2018 Data Science Bowl) as shipped in the
`stardist==0.9.2` wheel. Positive: a nucleus's own mask; negative: the same shape moved onto
background with no overlap. One tile around each region. With `hard=True` two of every three
negatives are the nucleus's shape shifted by 15-35% of its size, so that it covers most of the
nucleus without being it: brightness inside the region no longer gives the answer, the outline
does.

`trees`: real aerial RGB tree crowns from the `deepforest==2.1.0` wheel (`masktfx.demo_data.trees`).

`brain`: a real T1-weighted MR volume, `anatomical.nii` (33 x 41 x 25 voxels), as the `nibabel`
package ships it, read as NIfTI with a NIfTI label map: regions are disks on its axial slices,
each one value of `labels.nii.gz`; positive when most of the disk is bright tissue (above the
volume's 75th percentile), negative when it holds none. The labels come from the image's own
intensities: a demo of volumes, slices and label maps, not a clinical task. Groups are blocks of
five slices, so neighbouring slices never straddle the split.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from masktfx.demo_data.trees import TREE_SCENES, UNLABELED_TREE_SCENE, write_trees
from masktfx.demo_data.wheels import (
    STARDIST_IMAGE,
    STARDIST_LABELS,
    DemoDataError,
    find_deepforest_wheel,
    find_stardist_wheel,
    read_wheel_tiff,
    tile_origin,
)
from masktfx.images import encode_png

# What the package offers: each dataset's writer, and what its tests and the CLI name.
__all__ = ["TREE_SCENES", "UNLABELED_TREE_SCENE", "DemoDataError", "find_deepforest_wheel",
           "find_stardist_wheel", "write_brain", "write_nuclei", "write_synthetic", "write_trees"]


@dataclass(frozen=True)
class Site:
    name: str
    brightness: float
    contrast: float
    noise: float
    scale: float
    region_scale: float = 1.0  # the regions' size (1 for every generated site)


def make_sites(count: int, rng: np.random.Generator) -> list[Site]:
    sites = []
    for index in range(count):
        sites.append(Site(
            name=f"site{index + 1}",
            brightness=float(rng.uniform(-0.12, 0.12)),
            contrast=float(rng.uniform(0.75, 1.25)),
            noise=float(rng.uniform(0.03, 0.09)),
            scale=float(rng.uniform(0.8, 1.25)),
        ))
    return sites


def _spot(grid_y, grid_x, cy, cx, radius):
    return np.exp(-((grid_y - cy) ** 2 + (grid_x - cx) ** 2) / (2.0 * radius ** 2))


def synthesize_region(rng: np.random.Generator, size: int, views: int, positive: bool,
                      site: Site) -> tuple[list[np.ndarray], np.ndarray]:
    """K co-registered uint8 images and a bool mask for one region."""
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32)
    # The region: an ellipse away from the border.
    ry, rx = np.minimum(rng.uniform(0.16, 0.28, size=2) * size * site.region_scale,
                        0.45 * size - 2)
    cy = rng.uniform(ry + 2, size - ry - 2)
    cx = rng.uniform(rx + 2, size - rx - 2)
    inside = ((grid_y - cy) / ry) ** 2 + ((grid_x - cx) / rx) ** 2 <= 1.0
    radius = 0.035 * size * site.scale
    # Same number of spots in both classes; a positive has exactly one of them inside the region.
    total = int(rng.integers(2, 5))
    centres = []
    if positive:
        inner = np.argwhere(((grid_y - cy) / (ry - radius * 1.5)) ** 2
                            + ((grid_x - cx) / (rx - radius * 1.5)) ** 2 <= 1.0)
        centres.append(inner[rng.integers(len(inner))])
    outer_ok = (((grid_y - cy) / (ry + radius * 3)) ** 2
                + ((grid_x - cx) / (rx + radius * 3)) ** 2) > 1
    margin = int(np.ceil(radius * 2))
    outer_ok[:margin], outer_ok[-margin:], outer_ok[:, :margin], outer_ok[:, -margin:] = (
        False, False, False, False)
    outer = np.argwhere(outer_ok)
    while len(centres) < total and len(outer):
        centres.append(outer[rng.integers(len(outer))])
    streak = None
    if rng.random() < 0.5:  # a bright, thin, vessel-like streak inside the region, either class
        angle = rng.uniform(0, np.pi)
        length = 0.8 * min(ry, rx)
        distance = np.abs((grid_x - cx) * np.sin(angle) - (grid_y - cy) * np.cos(angle))
        along = np.abs((grid_x - cx) * np.cos(angle) + (grid_y - cy) * np.sin(angle))
        streak = np.exp(-distance ** 2 / (2 * (0.35 * radius) ** 2)) * (along <= length)
    images = []
    for view in range(views):
        # Background: smooth anatomy-like texture plus site-specific brightness and noise.
        background = np.full((size, size), 0.45, np.float32)
        for _ in range(3):
            by, bx = rng.uniform(0, size, size=2)
            background += rng.uniform(-0.12, 0.12) * _spot(grid_y, grid_x, by, bx,
                                                           rng.uniform(0.15, 0.4) * size)
        sign = 1.0 if view % 2 == 0 else -1.0  # views differ in contrast, like MRI sequences
        amplitude = sign * rng.uniform(0.28, 0.4)
        spots = np.zeros_like(background)
        for spot_y, spot_x in centres:
            spots += _spot(grid_y, grid_x, spot_y, spot_x, radius * rng.uniform(0.85, 1.15))
        image = background + amplitude * spots
        if streak is not None:
            image += amplitude * 1.1 * streak
        image = (image - 0.45) * site.contrast + 0.45 + site.brightness
        image += rng.normal(0.0, site.noise, size=image.shape)
        images.append(np.clip(image * 255.0, 0, 255).astype(np.uint8))
    return images, inside


def write_synthetic(output: str, num_examples: int = 400, views: int = 1, size: int = 64,
                    num_sites: int = 4, regions_per_subject: int = 4, seed: int = 0,
                    brightness_shift: float = 0.0, scale: float = 1.0) -> str:
    """Write images, masks and manifest.csv under `output`; returns the manifest's path.

    `brightness_shift` and `scale` move every site (its brightness, and the size of its regions
    and spots), e.g. beyond the range of the generated sites to make data that has drifted."""
    if num_examples < 2:
        raise DemoDataError("--num-examples must be at least 2")
    if not 1 <= views <= 16:
        raise DemoDataError("--views must be between 1 and 16")
    if not 16 <= size <= 1024:
        raise DemoDataError("--size must be between 16 and 1024")
    if not 0.25 <= scale <= 4.0:
        raise DemoDataError("--scale must be between 0.25 and 4")
    rng = np.random.default_rng(seed)
    sites = [dataclasses.replace(site, brightness=site.brightness + brightness_shift,
                                 scale=site.scale * scale, region_scale=scale)
             for site in make_sites(num_sites, rng)]
    os.makedirs(os.path.join(output, "images"), exist_ok=True)
    os.makedirs(os.path.join(output, "masks"), exist_ok=True)
    view_names = ["image"] if views == 1 else [f"image_t{v + 1}" for v in range(views)]
    manifest_path = os.path.join(output, "manifest.csv")
    with open(manifest_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *view_names, "mask", "label", "group", "site"])
        for index in range(num_examples):
            site = sites[index % num_sites]
            subject = index // (num_sites * regions_per_subject)
            positive = bool(rng.random() < 0.5)
            images, inside = synthesize_region(rng, size, views, positive, site)
            example_id = f"ex{index:06d}"
            image_paths = []
            for view, image in enumerate(images):
                relative = f"images/{example_id}_v{view + 1}.png"
                with open(os.path.join(output, relative), "wb") as out:
                    out.write(encode_png(image))
                image_paths.append(relative)
            mask_path = f"masks/{example_id}.png"
            with open(os.path.join(output, mask_path), "wb") as out:
                out.write(encode_png(inside))
            writer.writerow([example_id, *image_paths, mask_path, int(positive),
                             f"{site.name}-s{subject:04d}", site.name])
    return manifest_path


def _dilate(mask: np.ndarray, pad: int) -> np.ndarray:
    grown = mask.copy()
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            grown |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return grown


# A hard negative's shift, as a fraction of the nucleus's size, and the share of its own
# nucleus it must still cover. With shifts of 35-65% (covering 25-75%) intensity statistics
# told them apart as well as the CNNs (logistic regression 0.99 AUC); with these they do less
# well (0.95 against the default model's 0.97, bench/results/quality-stem.json).
SHIFT_FRACTION = (0.15, 0.35)
OWN_COVERAGE = (0.55, 0.9)


def _shifted_placement(rng: np.random.Generator, labels: np.ndarray, value: int,
                       shape_y: np.ndarray, shape_x: np.ndarray, top: int, left: int
                       ) -> tuple[int, int] | None:
    """An origin for the nucleus's shape, moved so that it covers OWN_COVERAGE of its own
    nucleus (and less than 75% of any other): on a nucleus, but not one."""
    height, width = labels.shape
    shape_h, shape_w = shape_y.max() + 1, shape_x.max() + 1
    for _ in range(200):
        angle = rng.uniform(0, 2 * np.pi)
        fraction = rng.uniform(*SHIFT_FRACTION)
        oy = int(round(top + np.sin(angle) * fraction * shape_h))
        ox = int(round(left + np.cos(angle) * fraction * shape_w))
        if not (0 <= oy <= height - shape_h and 0 <= ox <= width - shape_w):
            continue
        covered = labels[shape_y + oy, shape_x + ox]
        own = float(np.mean(covered == value))
        others = covered[(covered > 0) & (covered != value)]
        largest_other = np.bincount(others).max() / covered.size if others.size else 0.0
        if OWN_COVERAGE[0] <= own <= OWN_COVERAGE[1] and largest_other < 0.75:
            return oy, ox
    return None


def write_nuclei(output: str, wheel_dir: str | None = None, tile: int = 48, seed: int = 0,
                 hard: bool = False) -> str:
    """Write tiles, masks and manifest.csv from the stardist wheel; returns the manifest path.

    `hard`: two of every three negatives overlap a nucleus without being one (see the module
    docstring); the `negative` column says which kind each negative is.
    """
    import tifffile

    wheel = find_stardist_wheel(wheel_dir)
    image = read_wheel_tiff(wheel, STARDIST_IMAGE)
    labels = read_wheel_tiff(wheel, STARDIST_LABELS)
    rng = np.random.default_rng(seed)
    height, width = labels.shape
    # Keep background negatives clear of every nucleus by a small margin.
    near_nucleus = _dilate(labels > 0, 2)
    os.makedirs(os.path.join(output, "images"), exist_ok=True)
    os.makedirs(os.path.join(output, "masks"), exist_ok=True)
    manifest_path = os.path.join(output, "manifest.csv")
    with open(manifest_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "mask", "label", "group", "negative"])
        for index, value in enumerate(np.unique(labels[labels > 0])):
            ys, xs = np.nonzero(labels == value)
            shape_y, shape_x = ys - ys.min(), xs - xs.min()
            shape_h, shape_w = shape_y.max() + 1, shape_x.max() + 1
            if shape_h + 4 > tile or shape_w + 4 > tile:
                continue  # a nucleus larger than a tile would lose its context
            placements = [("pos", ys.min(), xs.min())]
            shifted = None
            if hard and index % 3 != 2:
                shifted = _shifted_placement(rng, labels, int(value), shape_y, shape_x,
                                             int(ys.min()), int(xs.min()))
            if shifted is not None:
                placements.append(("shifted", *shifted))
            else:
                for _ in range(300):
                    oy = int(rng.integers(0, height - shape_h))
                    ox = int(rng.integers(0, width - shape_w))
                    if not near_nucleus[shape_y + oy, shape_x + ox].any():
                        placements.append(("background", oy, ox))
                        break
            for kind, oy, ox in placements:
                region = np.zeros((height, width), bool)
                region[shape_y + oy, shape_x + ox] = True
                top = tile_origin(oy + shape_h / 2, tile, height)
                left = tile_origin(ox + shape_w / 2, tile, width)
                window = (slice(top, top + tile), slice(left, left + tile))
                example_id = f"nucleus{int(value):03d}-{'pos' if kind == 'pos' else 'neg'}"
                image_path = f"images/{example_id}.tif"
                mask_path = f"masks/{example_id}.png"
                tifffile.imwrite(os.path.join(output, image_path),
                                 np.ascontiguousarray(image[window]))
                with open(os.path.join(output, mask_path), "wb") as out:
                    out.write(encode_png(region[window]))
                # The nucleus's quadrant, for both its regions: a shifted negative and its
                # positive share most pixels, so they must not straddle the split.
                quadrant = (2 if ys.mean() >= height / 2 else 0) + (
                    1 if xs.mean() >= width / 2 else 0)
                writer.writerow([example_id, image_path, mask_path, int(kind == "pos"),
                                 f"quadrant{quadrant + 1}", "" if kind == "pos" else kind])
    return manifest_path


BRAIN_VOLUME = ("nibabel", "tests", "data", "anatomical.nii")


def write_brain(output: str, radius: int = 3, seed: int = 0) -> str:
    """Copy the volume, write the label map and manifest.csv; returns the manifest path."""
    import importlib
    import shutil

    import nibabel

    package = importlib.import_module(BRAIN_VOLUME[0])
    source = os.path.join(os.path.dirname(package.__file__), *BRAIN_VOLUME[1:])
    if not os.path.isfile(source):
        raise DemoDataError(f"{source}: not found; the installed {BRAIN_VOLUME[0]} package "
                            "should ship it")
    os.makedirs(output, exist_ok=True)
    shutil.copy(source, os.path.join(output, "anatomical.nii"))
    volume = nibabel.load(source)
    voxels = np.asarray(volume.dataobj, dtype=np.float32)
    bright = voxels > np.percentile(voxels, 75)
    labels = np.zeros(voxels.shape, np.int16)
    rng = np.random.default_rng(seed)
    height, width, depth = voxels.shape
    grid_y, grid_x = np.mgrid[:height, :width]
    rows = []
    value = 0
    for plane in range(depth):
        taken = np.zeros((height, width), bool)
        wanted = {1: 4, 0: 4}
        for _ in range(400):
            if not any(wanted.values()):
                break
            cy = int(rng.integers(radius, height - radius))
            cx = int(rng.integers(radius, width - radius))
            disk = (grid_y - cy) ** 2 + (grid_x - cx) ** 2 <= radius ** 2
            if (taken & _dilate(disk, 1)).any():
                continue
            share = float(bright[:, :, plane][disk].mean())
            label = 1 if share >= 0.6 else 0 if share == 0.0 else None
            if label is None or not wanted[label]:
                continue
            wanted[label] -= 1
            taken |= disk
            value += 1
            labels[:, :, plane][disk] = value
            rows.append([f"slice{plane:02d}-{value:03d}", "anatomical.nii", "labels.nii.gz",
                         f"2:{plane}", value, label, f"slices{plane // 5 * 5:02d}"])
    nibabel.save(nibabel.Nifti1Image(labels, volume.affine),
                 os.path.join(output, "labels.nii.gz"))
    manifest_path = os.path.join(output, "manifest.csv")
    with open(manifest_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "mask", "slice", "mask_label", "label", "group"])
        writer.writerows(rows)
    return manifest_path
