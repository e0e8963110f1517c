"""`masktfx score`: a whole survey or archive scored by a pushed version, as a Beam job."""

from __future__ import annotations

import argparse

from masktfx.cli.common import CommandError, add_manifest_reading_flags, print_json
from masktfx.config_values import SCORE_FORMATS


def add_score(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "score", help="score every region of a manifest or of TFRecords with a pushed model "
                      "(Apache Beam, no model server)",
        description="Read regions (a manifest CSV, checked as ingest checks it, or ingested "
                    "TFRecords), run the pushed SavedModel's serving_default on them through "
                    "Beam's RunInference, and write one row per region: id, group, metadata, "
                    "every output the model serves and its version. Rows that cannot be read "
                    "go to rejected.csv. The output folder appears only when the job is done, "
                    "and replaces an earlier one whole.")
    parser.add_argument("--model", required=True,
                        help="a model's base path (numbered versions) or a serving folder "
                             "(WORKDIR/serving) holding one model")
    parser.add_argument("--model-name", default="",
                        help="the model to score with, when the serving folder holds several")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--version", type=int, default=None,
                        help="the version to score with (default: the newest)")
    chosen.add_argument("--label", default=None,
                        help="the version a label names in the serving folder's models.config "
                             "(e.g. stable)")
    parser.add_argument("--config-file", default="",
                        help="the models.config that --label reads (default: in the serving "
                             "folder)")
    parser.add_argument("--data", required=True,
                        help="a manifest CSV (its label column may be missing or empty), or "
                             "ingested TFRecords: a folder, a file or a glob pattern")
    parser.add_argument("--output", required=True, help="the output folder")
    parser.add_argument("--format", default="csv", choices=SCORE_FORMATS,
                        help="csv | parquet | geojson (polygon regions as their polygons, in "
                             "their CRS) | tfrecord (tf.Example per region)")
    add_manifest_reading_flags(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--beam-args", nargs=argparse.REMAINDER, default=[],
                        help="the rest of the line goes to Beam, e.g. --runner=DataflowRunner")
    parser.set_defaults(handler=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    from masktfx.manifest import ManifestError
    from masktfx.scoring.job import ScoreError, score

    try:
        result = score(args.data, args.model, args.output, args.format, version=args.version,
                       label=args.label, model_name=args.model_name,
                       config_file=args.config_file, beam_args=args.beam_args,
                       max_pixels=args.max_pixels, resize_masks=args.resize_masks,
                       allow_outside_paths=args.allow_outside_paths, id_field=args.id_field,
                       progress=False if args.no_progress else None)
    except (ManifestError, ScoreError) as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print_json(result.summary)
    else:
        print(result.describe())
    return 0
