"""bench/formats: what reading rasters costs the 1-3 band data every user has.

The Transform graph decodes raster records or pictures, chosen when the graph is built
(modules/transform.py, decode_view). Measured in one run, on the same N 1- and 3-channel PNG
regions, through `transform_regions` (decode, checks, crop, normalize; a tf.function, one batch
of 32 at a time as Beam feeds Transform): ours, and the reference, the same graph with
decode_view replaced by the plain `tf.io.decode_image` it was before rasters. Then, for
information, the cost per region of 4- and 13-band uint16 raster records of the same size.
Medians of --repeats timed passes, after one warm-up pass; prints JSON.

    python bench/formats.py [--regions 256] [--size 128] [--repeats 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

TARGET = {"ours_vs_reference_per_region": "<= 1.2"}


def _regions(count: int, size: int, channels: int) -> tuple[list[bytes], list[bytes]]:
    from masktfx.images import encode_png, encode_raster

    rng = np.random.default_rng(0)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4:size * 3 // 4, size // 4:size * 3 // 4] = 255
    images = []
    for _ in range(count):
        shape = (size, size) if channels == 1 else (size, size, channels)
        if channels in (1, 3):
            images.append(encode_png(rng.integers(0, 255, shape).astype(np.uint8)))
        else:
            images.append(encode_raster(rng.integers(0, 4000, shape).astype(np.uint16)))
    return images, [encode_png(mask)] * count


def _seconds_per_region(images: list[bytes], masks: list[bytes], channels: int,
                        repeats: int, batch: int = 32) -> float:
    import tensorflow as tf

    from masktfx.config import PipelineConfig
    from masktfx.modules.transform import transform_regions

    config = PipelineConfig(num_views=1, num_masks=1, channels=channels, image_size=64)
    run = tf.function(lambda i, m: transform_regions(i, m, config))
    batches = [(tf.constant([[x] for x in images[start:start + batch]]),
                tf.constant([[x] for x in masks[start:start + batch]]))
               for start in range(0, len(images), batch)]
    for encoded, mask in batches:  # warm-up: tracing
        run(encoded, mask).numpy()
    timed = []
    for _ in range(repeats):
        started = time.perf_counter()
        for encoded, mask in batches:
            run(encoded, mask).numpy()
        timed.append((time.perf_counter() - started) / len(images))
    return statistics.median(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=256)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import tensorflow as tf

    from masktfx.modules import transform

    results: dict = {"benchmark": "formats", "regions": args.regions, "size": args.size,
                     "repeats": args.repeats, "targets": TARGET, "pictures": {}, "rasters": {}}
    ours_view = transform.decode_view

    def reference_view(encoded, channels, bands, row, index, rasters):
        return tf.ensure_shape(tf.io.decode_image(encoded, channels=channels, dtype=tf.float32,
                                                  expand_animations=False),
                               [None, None, channels])

    for channels in (1, 3):
        images, masks = _regions(args.regions, args.size, channels)
        timings = {}
        for name, view in (("reference", reference_view), ("ours", ours_view)):
            transform.decode_view = view
            timings[name] = _seconds_per_region(images, masks, channels, args.repeats)
        transform.decode_view = ours_view
        results["pictures"][f"{channels}-channel"] = {
            "reference_ms_per_region": round(timings["reference"] * 1000, 3),
            "ours_ms_per_region": round(timings["ours"] * 1000, 3),
            "ours_vs_reference_per_region": round(timings["ours"] / timings["reference"], 3)}
    for bands in (4, 13):
        images, masks = _regions(args.regions, args.size, bands)
        results["rasters"][f"{bands}-band uint16"] = {"ms_per_region": round(
            _seconds_per_region(images, masks, bands, args.repeats) * 1000, 3)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
