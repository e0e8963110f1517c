"""Polygon masks (GeoJSON; masktfx/manifest.py reads them from WKT too), rasterized onto view 1's
grid: in the image's CRS through its geotransform (a GeoTIFF's), or in pixel coordinates."""

from __future__ import annotations

import numpy as np

from masktfx.images.base import RegionInputError, read_header, reader_named
from masktfx.images.masks import MASK_EMPTY
from masktfx.images.png import encode_png


def rasterize_geometry(geometry: dict, image: bytes, max_pixels: int, crs: str = "") -> bytes:
    """The canonical mask PNG of `geometry` on `image`'s grid: in the image's CRS through its
    geotransform (reprojected from `crs` when that names another), or, for an image without one,
    in pixel coordinates (x to the right, y down, from the top-left corner)."""
    import rasterio.features
    import rasterio.warp
    import shapely.geometry
    from affine import Affine
    from rasterio.transform import array_bounds

    header = read_header(image, max_pixels)
    transform, image_crs = reader_named(header.format).grid(image) or (Affine.identity(), None)
    if crs:
        if image_crs is None:
            raise RegionInputError(f"the polygon is in {crs} but the image has no CRS; give "
                                   "its coordinates in pixels")
        try:
            geometry = rasterio.warp.transform_geom(crs, image_crs, geometry)
        except Exception as exc:  # noqa: BLE001 - rasterio's CRSError and GDAL's errors
            raise RegionInputError(f"cannot reproject the polygon from {crs}: {exc}") from None
    shape = (header.height, header.width)
    mask = rasterio.features.rasterize([(geometry, 1)], out_shape=shape, transform=transform,
                                       fill=0, dtype="uint8")
    if not mask.any():
        footprint = shapely.geometry.box(*array_bounds(*shape, transform))
        polygon = shapely.geometry.shape(geometry)
        where = "in pixels" if image_crs is None else f"in {image_crs}"
        if not polygon.intersects(footprint):
            raise RegionInputError(
                f"polygon lies outside the image: its bounds {_bounds(polygon.bounds)}, the "
                f"image's {_bounds(footprint.bounds)} ({where})")
        raise RegionInputError(MASK_EMPTY + " (the polygon covers no pixel centre)")
    return encode_png(mask * np.uint8(255))


def _bounds(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{value:.6g}" for value in bounds) + ")"
