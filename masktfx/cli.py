"""The `masktfx` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

# The package sets TF_USE_LEGACY_KERAS before anything imports TensorFlow.
from masktfx.config import ConfigError, PipelineConfig

DEFAULT_MAX_PIXELS = PipelineConfig().max_pixels


class CommandError(RuntimeError):
    """A command could not do what was asked; the message says why. Exit status 2."""


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("ingest", help="manifest CSV -> gzipped TFRecord shards (Apache Beam)",
                            description="Read a manifest of images, masks and labels and write "
                                        "gzipped TFRecord shards, ingest_report.json and "
                                        "rejected.csv.")
    parser.add_argument("manifest", help="the manifest CSV; paths are relative to its folder")
    parser.add_argument("--output", required=True, help="output folder (a span goes in span-N/)")
    parser.add_argument("--span", type=int, default=None,
                        help="write into OUTPUT/span-N for ImportExampleGen's {SPAN} pattern")
    parser.add_argument("--resize-masks", action="store_true",
                        help="resize masks of another size to the image (nearest neighbour)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images with more pixels, before decoding them")
    parser.add_argument("--allow-outside-paths", action="store_true",
                        help="allow paths outside the manifest's folder")
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
    from masktfx.config import ingest_beam_args
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
                            fork_server=not args.no_fork_server)
    except (ManifestError, IngestError) as exc:
        raise CommandError(str(exc)) from None
    print(result.describe())
    if not result.published:
        print("no shards were published: "
              + ("no row was good" if result.written == 0 else "--strict and rows were rejected"),
              file=sys.stderr)
        return 1
    return 0


def _add_demo_data(sub: argparse._SubParsersAction) -> None:
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
    synthetic.set_defaults(handler=cmd_demo_synthetic)
    nuclei = kinds.add_parser("nuclei", help="real fluorescence nuclei (BBBC038) from the "
                                             "stardist==0.9.2 wheel")
    nuclei.add_argument("--output", required=True)
    nuclei.add_argument("--wheel-dir", default=None,
                        help="folder holding the stardist wheel (default: VENV/share/masktfx)")
    nuclei.add_argument("--tile", type=int, default=48, help="side of the tile around a region")
    nuclei.add_argument("--seed", type=int, default=0)
    nuclei.add_argument("--hard", action="store_true",
                        help="negatives that half-cover a nucleus (two in three), not only "
                             "shapes moved onto background")
    nuclei.set_defaults(handler=cmd_demo_nuclei)
    trees = kinds.add_parser("trees", help="real aerial RGB tree crowns of two regions "
                                           "(California, Wyoming) from the deepforest==2.1.0 "
                                           "wheel")
    trees.add_argument("--output", required=True)
    trees.add_argument("--wheel-dir", default=None,
                       help="folder holding the deepforest wheel (default: VENV/share/masktfx)")
    trees.add_argument("--context", type=float, default=1.5,
                       help="context on each side of a region, in region sizes")
    trees.add_argument("--block", type=int, default=200,
                       help="side in pixels of the spatial blocks that become groups")
    trees.add_argument("--seed", type=int, default=0)
    trees.set_defaults(handler=cmd_demo_trees)


def cmd_demo_synthetic(args: argparse.Namespace) -> int:
    from masktfx.demo_data import DemoDataError, write_synthetic

    try:
        path = write_synthetic(args.output, num_examples=args.num_examples, views=args.views,
                               size=args.size, num_sites=args.sites, seed=args.seed)
    except DemoDataError as exc:
        raise CommandError(str(exc)) from None
    print(path)
    return 0


def cmd_demo_nuclei(args: argparse.Namespace) -> int:
    from masktfx.demo_data import DemoDataError, write_nuclei

    try:
        path = write_nuclei(args.output, wheel_dir=args.wheel_dir, tile=args.tile, seed=args.seed,
                            hard=args.hard)
    except DemoDataError as exc:
        raise CommandError(str(exc)) from None
    print(path)
    return 0


def cmd_demo_trees(args: argparse.Namespace) -> int:
    from masktfx.demo_data import DemoDataError, write_trees

    try:
        path = write_trees(args.output, wheel_dir=args.wheel_dir, context=args.context,
                           block=args.block, seed=args.seed)
    except DemoDataError as exc:
        raise CommandError(str(exc)) from None
    print(path)
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    from masktfx.config import add_config_flags

    parser = sub.add_parser("run", help="run the whole TFX pipeline locally (LocalDagRunner)",
                            description="Ingest (for a manifest), validate, transform, train, "
                                        "evaluate and push, with an SQLite MLMD store and "
                                        "caching in the workdir.")
    parser.add_argument("--data", required=True,
                        help="ingested data folder, or a manifest CSV to ingest first")
    parser.add_argument("--config", default=None, help="YAML file of configuration fields")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_config_flags(parser)
    parser.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from masktfx.config import config_from_args

    config = config_from_args(args)
    return run_and_summarize(config, args.data, as_json=args.json)


def run_and_summarize(config: PipelineConfig, data: str, as_json: bool = False) -> int:
    """Prepare (errors here mean nothing ran), run, and print the summary from MLMD."""
    from masktfx.fork_server import PIPELINE_PRELOAD, fork_server_for

    # Started first, so that its imports overlap this process's own; run_pipeline and a
    # manifest's ingest take their Beam workers from it.
    with fork_server_for(config.beam_pipeline_args, PIPELINE_PRELOAD, config.beam_fork_server):
        return _prepare_run_and_summarize(config, data, as_json)


def _prepare_run_and_summarize(config: PipelineConfig, data: str, as_json: bool) -> int:
    from masktfx.ingest import IngestError
    from masktfx.manifest import ManifestError
    from masktfx.pipeline.data import DataLayoutError
    from masktfx.pipeline.local_runner import prepare, run_pipeline
    from masktfx.pipeline.summary import format_summary, summarize_run

    try:
        prepared = prepare(config, data)
    except (ManifestError, IngestError, DataLayoutError, OSError) as exc:
        raise CommandError(str(exc)) from None
    config = prepared.config
    if prepared.ingested:
        print(prepared.ingested.describe())
    failure = None
    try:
        run_pipeline(config)
    except Exception as exc:  # a component failed: say which and why, exit 1
        failure = exc
    try:
        summary = summarize_run(config)
    except LookupError:
        summary = None
    if failure is not None:
        print(f"masktfx run: the pipeline failed: {type(failure).__name__}: {failure}",
              file=sys.stderr)
        if summary:
            failed = [n for n, state in summary.components.items() if state not in
                      ("COMPLETE", "CACHED")]
            if failed:
                print(f"components not completed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if as_json:
        print_json(summary.as_dict())
    else:
        print(format_summary(summary))
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve", help="development model server with TF Serving's REST and gRPC APIs",
        description="Serve the SavedModels the Pusher writes, for development and tests. "
                    "Production uses the real TensorFlow Serving (see kubernetes/).")
    parser.add_argument("--model-base-path", required=True,
                        help="folder of numbered version folders (SERVING_DIR/MODEL_NAME)")
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default loopback; 0.0.0.0 exposes it)")
    parser.add_argument("--rest-port", type=int, default=8501)
    parser.add_argument("--grpc-port", type=int, default=8500, help="0 picks a free port")
    parser.add_argument("--poll-seconds", type=float, default=1.0,
                        help="how often the base path is checked for new versions")
    parser.add_argument("--body-limit-mb", type=float, default=32.0,
                        help="largest request body (413 above)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    batching = parser.add_argument_group(
        "server-side batching", "merge concurrent requests into one model call, as TF Serving's "
        "--enable_batching does")
    batching.add_argument("--enable-batching", action="store_true")
    batching.add_argument("--max-batch-size", type=int, default=32, help="rows per batch")
    batching.add_argument("--batch-timeout-micros", type=int, default=0,
                          help="how long a request waits for others to join its batch")
    batching.add_argument("--num-batch-threads", type=int, default=os.cpu_count() or 1,
                          help="batches run at once")
    parser.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from masktfx.serving.batching import BatchingParameters
    from masktfx.serving.models import ModelManager
    from masktfx.serving.server import ModelServer

    batching = None
    if args.enable_batching:
        batching = BatchingParameters(args.max_batch_size, args.batch_timeout_micros,
                                      args.num_batch_threads)
        try:
            batching.validate()
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    manager = ModelManager(args.model_name, args.model_base_path, args.poll_seconds,
                           max_pixels=args.max_pixels, batching=batching)
    try:
        server = ModelServer({args.model_name: manager}, host=args.host,
                             rest_port=args.rest_port, grpc_port=args.grpc_port,
                             body_limit=int(args.body_limit_mb * 2**20))
    except OSError as exc:
        raise CommandError(f"cannot bind {args.host}: {exc}") from None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    print(f"serving {args.model_name} from {manager.base_path}: REST "
          f"http://{args.host}:{server.rest_port}, gRPC {args.host}:{server.grpc_port}",
          flush=True)
    stop.wait()
    server.stop()
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("predict", help="call a served model (TF Serving or masktfx serve)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--server", help="REST base URL, e.g. http://127.0.0.1:8501")
    target.add_argument("--grpc", help="gRPC HOST:PORT, e.g. 127.0.0.1:8500")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--version", type=int, default=None, help="a specific version")
    parser.add_argument("--image", action="append", default=[],
                        help="image of one view (repeat for K views, in order)")
    parser.add_argument("--mask", action="append", default=[],
                        help="the region's mask (once, or once per view)")
    parser.add_argument("--manifest", help="a manifest CSV: predict every row")
    parser.add_argument("--batch-size", type=int, default=32, help="regions per request")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.set_defaults(handler=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from masktfx.images import (
        RegionInputError,
        canonical_mask,
        decode_mask_array,
        load_image,
        read_file,
    )
    from masktfx.manifest import ManifestError, read_manifest
    from masktfx.serving.client import GrpcClient, RestClient, ServingClientError

    if args.manifest and (args.image or args.mask):
        raise CommandError("give either --manifest or --image/--mask, not both")
    if args.manifest:
        try:
            manifest = read_manifest(args.manifest)
        except ManifestError as exc:
            raise CommandError(str(exc)) from None
        regions = [(row.example_id, row.images, row.masks) for row in manifest.rows]
        failed = [{"row": r.row, "error": r.reason} for r in manifest.rejected]
    else:
        if not args.image or not args.mask:
            raise CommandError("give --image (one per view) and --mask, or --manifest")
        regions = [(args.image[0], tuple(args.image), tuple(args.mask))]
        failed = []
    if args.batch_size < 1:
        raise CommandError("--batch-size must be >= 1")

    def encoded(images, masks):
        """Files as the model wants them: TIFF re-encoded, masks canonical PNG, checked as
        ingest checks them (an empty mask or one of another size is refused here)."""
        out_images, out_masks, size = [], [], None
        for path in images:
            try:
                info = load_image(path, args.max_pixels)
            except RegionInputError as exc:
                raise RegionInputError(f"{path}: {exc}") from None
            out_images.append(info.encoded)
            size = size or (info.width, info.height)
        for path in masks:
            try:
                region = decode_mask_array(read_file(path), args.max_pixels)
                out_masks.append(canonical_mask(region, size, resize=False)[0])
            except RegionInputError as exc:
                raise RegionInputError(f"{path}: {exc}") from None
        return out_images, out_masks

    def predict_batch(ids, images, masks):
        """One request; if the server refuses it as bad input, each region alone, so one bad
        region fails only itself."""
        try:
            return list(zip(ids, client.predict_regions(images, masks, args.version)))
        except ServingClientError as exc:
            if exc.code not in ("400", "INVALID_ARGUMENT"):
                raise CommandError(f"the server refused the request: {exc}") from None
            if len(ids) == 1:
                return [(ids[0], exc)]
        results = []
        for item in zip(ids, images, masks):
            results.extend(predict_batch([item[0]], [item[1]], [item[2]]))
        return results

    try:
        client = (RestClient(args.server, args.model, timeout=args.timeout) if args.server
                  else GrpcClient(args.grpc, args.model, timeout=args.timeout))
    except ValueError as exc:
        raise CommandError(f"--server: {exc}") from None
    for item in failed:
        print(json.dumps(item), flush=True)
    status = 1 if failed else 0
    for start in range(0, len(regions), args.batch_size):
        batch, ids, images, masks = regions[start:start + args.batch_size], [], [], []
        for example_id, image_paths, mask_paths in batch:
            try:
                views, region = encoded(image_paths, mask_paths)
            except RegionInputError as exc:
                print(json.dumps({"id": example_id, "error": str(exc)}), flush=True)
                status = 1
                continue
            ids.append(example_id)
            images.append(views)
            masks.append(region)
        if not ids:
            continue
        for example_id, prediction in predict_batch(ids, images, masks):
            if isinstance(prediction, ServingClientError):
                print(json.dumps({"id": example_id, "error": prediction.message}), flush=True)
                status = 1
                continue
            print(json.dumps({"id": example_id, "probability": prediction.probability,
                              "label": prediction.label,
                              "model_version": prediction.model_version}), flush=True)
    return status


def _add_kubeflow(sub: argparse._SubParsersAction) -> None:
    from masktfx.config import add_config_flags

    parser = sub.add_parser("compile", help="compile the pipeline for Kubeflow Pipelines (YAML)")
    parser.add_argument("--output", required=True, help="pipeline spec, ending in .yaml")
    parser.add_argument("--image", required=True, help="the pipeline image (see Dockerfile)")
    parser.add_argument("--pipeline-root", required=True,
                        help="pipeline root URI as the cluster sees it (must be writable here "
                             "too: the module files and the schema are staged there)")
    parser.add_argument("--data-sample", default=None,
                        help="local ingested data to read views/masks/metadata columns from")
    parser.add_argument("--config", default=None, help="YAML file of configuration fields")
    add_config_flags(parser)
    parser.set_defaults(handler=cmd_compile)

    for name, helptext in (("submit", "start one run of a compiled pipeline on KFP"),
                           ("schedule", "schedule recurring runs of a compiled pipeline on KFP")):
        command = sub.add_parser(name, help=helptext,
                                 description=helptext + ". The auth token is read from "
                                             "the KFP_TOKEN environment variable.")
        command.add_argument("--host", required=True, help="KFP API endpoint URL")
        command.add_argument("--package", required=True, help="compiled pipeline .yaml")
        command.add_argument("--experiment", default="masktfx")
        command.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                             help="runtime parameter, e.g. data-root=/data")
        if name == "submit":
            command.add_argument("--run-name", default=None)
            command.set_defaults(handler=cmd_submit)
        else:
            command.add_argument("--cron", required=True,
                                 help="six fields, seconds first: '0 0 3 * * *' is 03:00 daily")
            command.add_argument("--name", default="masktfx-retraining")
            command.add_argument("--max-concurrency", type=int, default=1)
            command.add_argument("--no-catchup", action="store_true",
                                 help="do not backfill runs missed while paused")
            command.set_defaults(handler=cmd_schedule)


def cmd_compile(args: argparse.Namespace) -> int:
    from masktfx.config import config_from_args
    from masktfx.pipeline.data import DataLayoutError
    from masktfx.pipeline.kubeflow_runner import compile_pipeline

    config = config_from_args(args).replace(pipeline_root_uri=args.pipeline_root)
    try:
        compile_pipeline(config, args.output, args.image, args.data_sample)
    except DataLayoutError as exc:
        raise CommandError(str(exc)) from None
    print(args.output)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from masktfx.pipeline.kfp_client import KfpError, parse_params, submit

    try:
        run_id = submit(args.host, args.package, args.experiment, parse_params(args.param),
                        args.run_name)
    except KfpError as exc:
        raise CommandError(str(exc)) from None
    print(json.dumps({"run_id": run_id}))
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from masktfx.pipeline.kfp_client import KfpError, parse_params, schedule

    try:
        recurring_id = schedule(args.host, args.package, args.cron, args.experiment,
                                parse_params(args.param), args.name, args.max_concurrency,
                                args.no_catchup)
    except KfpError as exc:
        raise CommandError(str(exc)) from None
    print(json.dumps({"recurring_run_id": recurring_id}))
    return 0


def _add_reports(sub: argparse._SubParsersAction) -> None:
    def workdir_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--workdir", required=True, help="the workdir of `masktfx run`")
        parser.add_argument("--json", action="store_true", help="JSON instead of text")

    report = sub.add_parser("report", help="one self-contained HTML page for a run",
                            description="Data, training, evaluation, the blessing decision "
                                        "and the pushed version's lineage, read from the "
                                        "workdir's MLMD store and artifacts.")
    report.add_argument("--workdir", required=True, help="the workdir of `masktfx run`")
    report.add_argument("--output", default=None, help="HTML file (default WORKDIR/report.html)")
    report.add_argument("--run", default=None, help="run ID (default: the latest; see `runs`)")
    report.set_defaults(handler=cmd_report)
    runs = sub.add_parser("runs", help="a table of past runs in a workdir")
    workdir_flags(runs)
    runs.set_defaults(handler=cmd_runs)
    lineage = sub.add_parser("lineage", help="where a pushed version came from")
    workdir_flags(lineage)
    lineage.add_argument("--version", default=None, help="pushed version (default: the newest)")
    lineage.set_defaults(handler=cmd_lineage)


def _workdir_config(workdir: str) -> PipelineConfig:
    if not os.path.isdir(workdir):
        raise CommandError(f"{workdir}: no such workdir")
    return PipelineConfig.for_workdir(workdir)


def cmd_report(args: argparse.Namespace) -> int:
    from masktfx.pipeline.report import write_report

    config = _workdir_config(args.workdir)
    try:
        path = write_report(config, args.output, args.run)
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    print(f"report: {path}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from masktfx.pipeline.summary import format_runs, list_runs

    try:
        runs = list_runs(_workdir_config(args.workdir))
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print_json([run.as_dict() for run in runs])
    else:
        print(format_runs(runs))
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from masktfx.pipeline.lineage import format_lineage, lineage

    try:
        found = lineage(_workdir_config(args.workdir), args.version)
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print_json(found.as_dict())
    else:
        print(format_lineage(found))
    return 0


REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_ingest, _add_demo_data, _add_run, _add_serve, _add_predict, _add_kubeflow,
    _add_reports]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="masktfx", description="Region-level image "
                                     "classification pipelines on TFX.")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (CommandError, ConfigError) as exc:
        print(f"masktfx {args.command}: error: {exc}", file=sys.stderr)
        return 2


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
