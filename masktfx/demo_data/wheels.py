"""The packages the real demo data comes from: their wheels, fetched once by `make setup`
(`pip download --no-deps`) and read as zip archives; nothing is downloaded at run time."""

from __future__ import annotations

import glob
import os
import sys
import zipfile

import numpy as np

STARDIST_REQUIREMENT = "stardist==0.9.2"
STARDIST_IMAGE = "stardist/data/images/img2d.tif"
STARDIST_LABELS = "stardist/data/images/mask2d.tif"
DEEPFOREST_REQUIREMENT = "deepforest==2.1.0"


class DemoDataError(RuntimeError):
    pass


def default_wheel_dir() -> str:
    return os.environ.get("MASKTFX_WHEEL_DIR", os.path.join(sys.prefix, "share", "masktfx"))


def find_wheel(requirement: str, wheel_dir: str | None = None) -> str:
    """The wheel of `requirement` (`name==version`) in `wheel_dir`; make setup downloads it."""
    wheel_dir = wheel_dir or default_wheel_dir()
    name, version = requirement.split("==")
    found = sorted(glob.glob(os.path.join(wheel_dir, f"{name}-{version}-*.whl")))
    if not found:
        raise DemoDataError(
            f"the {requirement} wheel is not in {wheel_dir}; fetch it once with "
            f"`pip download --no-deps {requirement} -d {wheel_dir}` (make setup does)")
    return found[-1]


def find_stardist_wheel(wheel_dir: str | None = None) -> str:
    return find_wheel(STARDIST_REQUIREMENT, wheel_dir)


def read_wheel_member(wheel: str, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DemoDataError(f"{wheel}: cannot read {member}: {exc}") from None


def read_wheel_tiff(wheel: str, member: str) -> np.ndarray:
    import io

    import tifffile

    return tifffile.imread(io.BytesIO(read_wheel_member(wheel, member)))


def tile_origin(centre: float, tile: int, limit: int) -> int:
    return int(np.clip(round(centre - tile / 2), 0, limit - tile))


def find_deepforest_wheel(wheel_dir: str | None = None) -> str:
    return find_wheel(DEEPFOREST_REQUIREMENT, wheel_dir)
