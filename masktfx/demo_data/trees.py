"""`trees`: real aerial RGB tree crowns (NEON) from the `deepforest==2.1.0` wheel, two scenes of two
regions: `SOAP_061` (California) and `2019_YELL_2_528000_4978000_image_crop2` (Wyoming) with their
annotated crown boxes. Positive: the ellipse inscribed in a crown's box; negative: an ellipse of the
same size that overlaps no annotated crown. The group is a spatial block of the scene, so
neighbouring crowns never straddle the split; `site` names the scene's region. Only these two
scenes are read, and on request the unannotated `SOAP_031` as unlabeled imagery: the wheel's other
images are kept for independent evaluation.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from masktfx.demo_data.wheels import (
    DemoDataError,
    find_deepforest_wheel,
    read_wheel_member,
    tile_origin,
)
from masktfx.images import encode_png

# (site, scene) pairs; the only images of the wheel this project reads.
TREE_SCENES = (
    ("california", "deepforest/data/SOAP_061"),
    ("wyoming", "deepforest/data/2019_YELL_2_528000_4978000_image_crop2"),
)


# The wheel's unannotated scene, read only as unlabeled imagery (`write_trees`' unlabeled rows).
UNLABELED_TREE_SCENE = ("california", "deepforest/data/SOAP_031")


def read_crown_boxes(xml_bytes: bytes, source: str) -> list[tuple[int, int, int, int]]:
    """(xmin, ymin, xmax, ymax) of every annotated crown in a Pascal VOC file, inclusive."""
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.fromstring(xml_bytes)
    except ElementTree.ParseError as exc:
        raise DemoDataError(f"{source}: not a Pascal VOC annotation: {exc}") from None
    boxes = []
    for index, node in enumerate(root.iter("bndbox")):
        try:
            box = tuple(int(float(node.findtext(key, ""))) for key in
                        ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise DemoDataError(f"{source}: box {index + 1} has a non-numeric corner") from None
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append(box)
    if not boxes:
        raise DemoDataError(f"{source}: no crown box")
    return boxes


def _ellipse(height: int, width: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    grid_y, grid_x = np.ogrid[0:height, 0:width]
    return ((grid_y - cy) / ry) ** 2 + ((grid_x - cx) / rx) ** 2 <= 1.0


def _scene_pixels(wheel: str, scene: str) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(read_wheel_member(wheel, scene + ".png"))) as picture:
        return np.asarray(picture.convert("RGB"))


def write_trees(output: str, wheel_dir: str | None = None, context: float = 1.5,
                min_tile: int = 48, block: int = 200, seed: int = 0,
                unlabeled_regions: int = 0) -> str:
    """Write tiles, masks and manifest.csv from the deepforest wheel; returns the manifest path.

    Each tile is centred on its region; its side is (0.5 + `context`) times the region's larger
    side (at least `min_tile` pixels), so the crop has room to keep context: with the default
    1.5, twice the region. `block` is the side of the spatial blocks that become groups.
    With `unlabeled_regions`, that many rows with an empty label follow, from the wheel's
    unannotated California scene (`UNLABELED_TREE_SCENE`): ellipses the size of an annotated
    crown (of either scene, drawn at random) at random places, as candidate regions of a scene
    nobody has labelled.
    """
    wheel = find_deepforest_wheel(wheel_dir)
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(output, "images"), exist_ok=True)
    os.makedirs(os.path.join(output, "masks"), exist_ok=True)
    manifest_path = os.path.join(output, "manifest.csv")
    sizes = []  # (ry, rx) of every annotated crown
    with open(manifest_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "mask", "label", "group", "site", "scene"])

        def write_region(pixels: np.ndarray, example_id: str, y: float, x: float, ry: float,
                         rx: float, label: str, group_prefix: str, site: str,
                         scene_name: str) -> None:
            height, width = pixels.shape[:2]
            half = int(max(min_tile / 2, (1 + 2 * context) * max(ry, rx) / 2 + 1))
            top = tile_origin(y, 2 * half, height)
            left = tile_origin(x, 2 * half, width)
            window = (slice(top, top + 2 * half), slice(left, left + 2 * half))
            region = _ellipse(2 * half, 2 * half, y - top, x - left, ry, rx)
            if not region.any():
                return
            image_path = f"images/{example_id}.png"
            mask_path = f"masks/{example_id}.png"
            with open(os.path.join(output, image_path), "wb") as out:
                out.write(encode_png(np.ascontiguousarray(pixels[window])))
            with open(os.path.join(output, mask_path), "wb") as out:
                out.write(encode_png(region))
            group = f"{group_prefix}-block{int(y) // block}-{int(x) // block}"
            writer.writerow([example_id, image_path, mask_path, label, group, site, scene_name])

        for site, scene in TREE_SCENES:
            scene_name = os.path.basename(scene)
            pixels = _scene_pixels(wheel, scene)
            boxes = read_crown_boxes(read_wheel_member(wheel, scene + ".xml"), scene + ".xml")
            height, width = pixels.shape[:2]
            crowns = np.zeros((height, width), bool)
            for xmin, ymin, xmax, ymax in boxes:
                crowns[max(ymin, 0):ymax + 1, max(xmin, 0):xmax + 1] = True
            for index, (xmin, ymin, xmax, ymax) in enumerate(boxes):
                ry, rx = (ymax - ymin + 1) / 2.0, (xmax - xmin + 1) / 2.0
                sizes.append((ry, rx))
                cy, cx = (ymin + ymax) / 2.0, (xmin + xmax) / 2.0
                placements = [("pos", cy, cx)]
                for _ in range(500):
                    ny = float(rng.uniform(ry, height - ry))
                    nx = float(rng.uniform(rx, width - rx))
                    top, left = int(ny - ry), int(nx - rx)
                    if not crowns[max(top, 0):int(ny + ry) + 1,
                                  max(left, 0):int(nx + rx) + 1].any():
                        placements.append(("neg", ny, nx))
                        break
                for kind, y, x in placements:
                    write_region(pixels, f"{site}-crown{index:04d}-{kind}", y, x, ry, rx,
                                 str(int(kind == "pos")), site, site, scene_name)
        if unlabeled_regions:
            site, scene = UNLABELED_TREE_SCENE
            scene_name = os.path.basename(scene)
            pixels = _scene_pixels(wheel, scene)
            height, width = pixels.shape[:2]
            for index in range(unlabeled_regions):
                ry, rx = sizes[int(rng.integers(len(sizes)))]
                y = float(rng.uniform(ry, height - ry))
                x = float(rng.uniform(rx, width - rx))
                write_region(pixels, f"{site}-unlabeled{index:04d}", y, x, ry, rx, "",
                             f"{site}-{scene_name}", site, scene_name)
    return manifest_path
