"""`masktfx ingest` and `masktfx demo-data`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from masktfx.cli.common import DEFAULT_MAX_PIXELS, CommandError, add_manifest_reading_flags


def add_ingest(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("ingest", help="manifest CSV -> gzipped TFRecord shards (Apache Beam)",
                            description="Read a manifest of images, masks and labels and write "
                                        "gzipped TFRecord shards, ingest_report.json and "
                                        "rejected.csv.")
    parser.add_argument("manifest", help="the manifest CSV; paths are relative to its folder")
    parser.add_argument("--output", required=True, help="output folder (a span goes in span-N/)")
    parser.add_argument("--span", type=int, default=None,
                        help="write into OUTPUT/span-N for ImportExampleGen's {SPAN} pattern")
    add_manifest_reading_flags(parser)
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit 1) and publish no shards if any row is rejected")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the shards already in the output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-fork-server", action="store_true",
                        help="multi_processing DirectRunner: start each Beam worker cold instead "
                             "of forking it from a process that imported Beam once")
    parser.add_argument("--beam-args", nargs=argparse.REMAINDER, default=[],
                        help="the rest of the line goes to Beam, e.g. --runner=DataflowRunner")
    parser.set_defaults(handler=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    from masktfx.beam_args import ingest_beam_args
    from masktfx.fork_server import INGEST_PRELOAD, fork_server_for

    if args.span is not None and args.span < 0:
        raise CommandError("--span must be >= 0")
    beam_args = ingest_beam_args(args.beam_args)
    # Started before this process imports Beam, so that the two imports overlap.
    with fork_server_for(beam_args, INGEST_PRELOAD, not args.no_fork_server):
        return _ingest(args, beam_args)


def _ingest(args: argparse.Namespace, beam_args: list[str]) -> int:
    from masktfx.ingest import IngestError, run_ingest
    from masktfx.manifest import ManifestError

    try:
        result = run_ingest(args.manifest, args.output, span=args.span,
                            beam_args=beam_args, resize_masks=args.resize_masks,
                            max_pixels=args.max_pixels,
                            allow_outside_paths=args.allow_outside_paths, strict=args.strict,
                            overwrite=args.overwrite,
                            progress=False if args.no_progress else None,
                            fork_server=not args.no_fork_server, id_field=args.id_field)
    except (ManifestError, IngestError) as exc:
        raise CommandError(str(exc)) from None
    print(result.describe())
    if not result.published:
        print("no shards were published: "
              + ("no row was good" if result.written == 0 else "--strict and rows were rejected"),
              file=sys.stderr)
        return 1
    return 0


def add_drift(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "drift", help="is new data like the data the served model was trained on?",
        description="Describe each region of a manifest (mask area, intensity and colour inside "
                    "and around it, texture) and compare the descriptors' histograms with those "
                    "of the data the newest pushed version was trained on (TFDV's "
                    "Jensen-Shannon drift comparator); then estimate that version's AUC and "
                    "accuracy on the regions from its own calibrated probabilities, without "
                    "labels (the `label` column may be missing or empty; where every row has "
                    "one, the measured values are shown beside). Exit status 1 when a "
                    "descriptor moved beyond the threshold, the span is estimated worse than "
                    "the test split said, or a row could not be read.")
    parser.add_argument("--workdir", required=True, help="the workdir of `masktfx run`")
    parser.add_argument("--manifest", required=True, help="the new data's manifest CSV")
    parser.add_argument("--threshold", type=float, default=None,
                        help="largest divergence that is not drift (default: the workdir's "
                             "drift_threshold, else 0.4)")
    parser.add_argument("--min-estimated-auc", type=float, default=None,
                        help="call the span worse when its estimated AUC is under this "
                             "(default: the workdir's min_estimated_auc)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--json", action="store_true", help="JSON instead of text")
    parser.set_defaults(handler=cmd_drift)


def cmd_drift(args: argparse.Namespace) -> int:
    import json
    import os

    from masktfx import drift
    from masktfx.config import PipelineConfig
    from masktfx.images import RegionInputError, load_region
    from masktfx.manifest import ManifestError, read_manifest
    from masktfx.records import make_example

    if not os.path.isdir(args.workdir):
        raise CommandError(f"{args.workdir}: no such workdir")
    config = PipelineConfig.for_workdir(args.workdir)
    threshold = args.threshold if args.threshold is not None else (
        config.drift_threshold or PipelineConfig.drift_threshold)
    if not 0.0 < threshold <= 1.0:
        raise CommandError(f"--threshold must be in (0, 1], got {threshold}")
    min_estimated_auc = (args.min_estimated_auc if args.min_estimated_auc is not None
                         else config.min_estimated_auc)
    if not 0.0 <= min_estimated_auc <= 1.0:
        raise CommandError(f"--min-estimated-auc must be in [0, 1], got {min_estimated_auc}")
    try:
        manifest = read_manifest(args.manifest, labels_optional=True)
    except ManifestError as exc:
        raise CommandError(str(exc)) from None
    failed = [{"row": r.row, "error": r.reason} for r in manifest.rejected]
    columns: dict[str, list[float]] = {}
    records: list[bytes] = []
    for row in manifest.rows:
        try:
            region = load_region(row.images, row.masks, args.max_pixels, geometry=row.geometry,
                                 geometry_crs=row.geometry_crs, plane=row.plane,
                                 mask_label=row.mask_label)
        except RegionInputError as exc:
            failed.append({"row": row.row, "id": row.example_id, "error": str(exc)})
            continue
        found = drift.region_descriptors([info.encoded for info in region.images],
                                         region.masks, args.max_pixels)
        for name, value in found.items():
            columns.setdefault(name, []).append(value)
        records.append(make_example([info.encoded for info in region.images], region.masks,
                                    row.label, row.example_id, row.group).SerializeToString())
    if not columns:
        raise CommandError(f"{args.manifest}: no row could be read ({len(failed)} refused)")
    model_base_dir = os.path.join(config.resolved_serving_dir, config.model_name)
    report = drift.drift_report(columns, model_base_dir, threshold)
    if report["reference_version"] is None:
        raise CommandError(f"no version under {model_base_dir} holds the region descriptors of "
                           "its training data (pushed by `masktfx run` with drift_threshold > 0)")
    report["refused_rows"] = failed
    report["estimate"] = drift.estimate_performance(
        os.path.join(model_base_dir, str(report["reference_version"])), records,
        min_estimated_auc)
    worse = bool(report["estimate"] and report["estimate"]["worse"])
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for item in failed:
            print(f"refused: {json.dumps(item)}")
        print(f"{report['regions']} regions of {args.manifest} against the training data of "
              f"version {report['reference_version']} ({model_base_dir}), threshold "
              f"{threshold:g}:")
        print(f"  {'descriptor':<22} {'divergence':>10}  {'mean (trained -> new)':<26}")
        for entry in report["descriptors"]:
            flag = "  MOVED" if entry["moved"] else ""
            means = f"{entry['reference_mean']:.4g} -> {entry['current_mean']:.4g}"
            print(f"  {entry['name']:<22} {entry['divergence']:>10.3f}  {means:<26}{flag}")
        print(f"drift: {', '.join(report['moved'])}" if report["moved"] else "no drift")
        print(drift.describe_estimate(report["estimate"]) if report["estimate"] else
              f"no estimate: version {report['reference_version']} stored no calibration "
              "(trained before it did)")
    return 1 if report["moved"] or failed or worse else 0


def add_demo_data(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo-data", help="write built-in demo data with its manifest")
    kinds = parser.add_subparsers(dest="kind", required=True)
    synthetic = kinds.add_parser("synthetic", help="synthetic regions; the signal is inside the "
                                                   "mask, look-alikes outside it")
    synthetic.add_argument("--output", required=True)
    synthetic.add_argument("--num-examples", type=int, default=400)
    synthetic.add_argument("--views", type=int, default=1)
    synthetic.add_argument("--size", type=int, default=64)
    synthetic.add_argument("--sites", type=int, default=4, help="sites (scanner-like groups)")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--brightness-shift", type=float, default=0.0,
                           help="added to every site's brightness (the sites span -0.12..0.12)")
    synthetic.add_argument("--scale", type=float, default=1.0,
                           help="every site's regions and spots this many times larger")
    synthetic.set_defaults(handler=cmd_demo_synthetic)
    nuclei = kinds.add_parser("nuclei", help="real fluorescence nuclei (BBBC038) from the "
                                             "stardist==0.9.2 wheel")
    nuclei.add_argument("--output", required=True)
    nuclei.add_argument("--wheel-dir", default=None,
                        help="folder holding the stardist wheel (default: VENV/share/masktfx)")
    nuclei.add_argument("--tile", type=int, default=48, help="side of the tile around a region")
    nuclei.add_argument("--seed", type=int, default=0)
    nuclei.add_argument("--hard", action="store_true",
                        help="negatives that overlap a nucleus without being one (two in three), "
                             "not only shapes moved onto background")
    nuclei.set_defaults(handler=cmd_demo_nuclei)
    trees = kinds.add_parser("trees", help="real aerial RGB tree crowns of two regions "
                                           "(California, Wyoming) from the deepforest==2.1.0 "
                                           "wheel")
    trees.add_argument("--output", required=True)
    trees.add_argument("--wheel-dir", default=None,
                       help="folder holding the deepforest wheel (default: VENV/share/masktfx)")
    trees.add_argument("--context", type=float, default=1.5,
                       help="tile side = (0.5 + CONTEXT) x the region's larger side")
    trees.add_argument("--block", type=int, default=200,
                       help="side in pixels of the spatial blocks that become groups")
    trees.add_argument("--seed", type=int, default=0)
    trees.add_argument("--unlabeled-regions", type=int, default=0,
                       help="also this many unlabeled regions (empty label) of the wheel's "
                            "unannotated California scene, SOAP_031")
    trees.set_defaults(handler=cmd_demo_trees)
    brain = kinds.add_parser("brain", help="a real T1 MR volume (NIfTI, from the nibabel "
                                           "package) with a NIfTI label map of disk regions")
    brain.add_argument("--output", required=True)
    brain.add_argument("--radius", type=int, default=3, help="disk radius in voxels")
    brain.add_argument("--seed", type=int, default=0)
    brain.set_defaults(handler=cmd_demo_brain)


def _write_demo(write: Callable[..., str], *args: Any, **kwargs: Any) -> int:
    """Run one demo-data writer and print the manifest's path."""
    from masktfx.demo_data import DemoDataError

    try:
        path = write(*args, **kwargs)
    except DemoDataError as exc:
        raise CommandError(str(exc)) from None
    print(path)
    return 0


def cmd_demo_synthetic(args: argparse.Namespace) -> int:
    from masktfx.demo_data import write_synthetic

    return _write_demo(write_synthetic, args.output, num_examples=args.num_examples,
                       views=args.views, size=args.size, num_sites=args.sites, seed=args.seed,
                       brightness_shift=args.brightness_shift, scale=args.scale)


def cmd_demo_nuclei(args: argparse.Namespace) -> int:
    from masktfx.demo_data import write_nuclei

    return _write_demo(write_nuclei, args.output, wheel_dir=args.wheel_dir, tile=args.tile,
                       seed=args.seed, hard=args.hard)


def cmd_demo_trees(args: argparse.Namespace) -> int:
    from masktfx.demo_data import write_trees

    return _write_demo(write_trees, args.output, wheel_dir=args.wheel_dir, context=args.context,
                       block=args.block, seed=args.seed,
                       unlabeled_regions=args.unlabeled_regions)


def cmd_demo_brain(args: argparse.Namespace) -> int:
    from masktfx.demo_data import write_brain

    return _write_demo(write_brain, args.output, radius=args.radius, seed=args.seed)
