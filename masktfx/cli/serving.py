"""`masktfx serve` and `masktfx predict`."""

from __future__ import annotations

import argparse
import json
import os

from masktfx.cli.common import DEFAULT_MAX_PIXELS, CommandError
from masktfx.serving.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_REGIONS,
    DEFAULT_READ_TIMEOUT_S,
    DEFAULT_REST_THREADS,
)


def add_serve(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve", help="development model server with TF Serving's REST and gRPC APIs",
        description="Serve the SavedModels the Pusher writes, for development and tests. "
                    "Production uses the real TensorFlow Serving (see kubernetes/).")
    parser.add_argument("--model-base-path",
                        help="folder of numbered version folders (SERVING_DIR/MODEL_NAME)")
    parser.add_argument("--model-name")
    parser.add_argument("--model-config-file",
                        help="TF Serving's model config (SERVING_DIR/models.config, written by "
                             "`masktfx promote`): the models, their versions and labels; "
                             "without --model-name, every model it lists is served")
    parser.add_argument("--model-config-file-poll-wait-seconds", type=float, default=0.0,
                        help="how often the model config is read again (0: only at start, "
                             "as TF Serving)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default loopback; 0.0.0.0 exposes it)")
    parser.add_argument("--rest-port", type=int, default=8501)
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="0 picks a free port (default 8500, or none with "
                             "--grpc-socket-path)")
    parser.add_argument("--grpc-socket-path", default=None,
                        help="also serve gRPC on this UNIX socket (TF Serving's "
                             "--grpc_socket_path); without --grpc-port, on it alone")
    parser.add_argument("--poll-seconds", type=float, default=1.0,
                        help="how often the base path is checked for new versions")
    parser.add_argument("--body-limit-mb", type=float, default=32.0,
                        help="largest request body (413 above)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    limits = parser.add_argument_group(
        "limits", "what one client can make the server hold (over a limit: 413, or 503 for "
        "connections; RESOURCE_EXHAUSTED on gRPC)")
    limits.add_argument("--max-regions", type=int, default=DEFAULT_MAX_REGIONS,
                        help="regions per request, checked before anything is decoded")
    limits.add_argument("--max-decoded-mb", type=float, default=DEFAULT_MAX_DECODED_BYTES / 2**20,
                        help="MiB the images and masks of one request may decode to, counted "
                             "from their headers before anything is decoded")
    limits.add_argument("--max-inflight-mb", type=float,
                        default=DEFAULT_MAX_INFLIGHT_BYTES / 2**20,
                        help="MiB all requests in flight may hold together (bodies, parsed "
                             "values, decoded images); past it a request waits briefly, then "
                             "gets 503 (RESOURCE_EXHAUSTED on gRPC)")
    limits.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                        help="open REST connections, and gRPC calls in flight")
    limits.add_argument("--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT_S,
                        help="seconds a REST client may take to send its headers and body")
    limits.add_argument("--rest-api-num-threads", type=int, default=DEFAULT_REST_THREADS,
                        help="REST predict requests of over 1 MiB parsed and answered at once "
                             "(the others wait once their body is read; smaller requests and "
                             "status calls never wait)")
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

    from masktfx.serving.limits import limit_malloc_arenas

    limit_malloc_arenas()  # before TensorFlow and the server start their threads

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
    for name in ("max_regions", "max_decoded_mb", "max_inflight_mb", "max_connections",
                 "read_timeout", "rest_api_num_threads"):
        if getattr(args, name) <= 0:
            raise CommandError(f"--{name.replace('_', '-')} must be positive")
    models = _served_models(args)
    grpc_port = args.grpc_port
    if grpc_port is None and not args.grpc_socket_path:
        grpc_port = 8500
    managers = {name: ModelManager(name, base_path, args.poll_seconds,
                                   max_pixels=args.max_pixels, batching=batching,
                                   max_regions=args.max_regions,
                                   max_decoded_bytes=int(args.max_decoded_mb * 2**20))
                for name, base_path in models.items()}
    try:
        server = ModelServer(managers, host=args.host,
                             rest_port=args.rest_port, grpc_port=grpc_port,
                             grpc_socket_path=args.grpc_socket_path,
                             body_limit=int(args.body_limit_mb * 2**20),
                             max_connections=args.max_connections,
                             max_inflight_bytes=int(args.max_inflight_mb * 2**20),
                             read_timeout_s=args.read_timeout,
                             rest_threads=args.rest_api_num_threads,
                             model_config_file=args.model_config_file,
                             config_poll_seconds=args.model_config_file_poll_wait_seconds)
    except OSError as exc:
        raise CommandError(f"cannot bind {args.host}: {exc}") from None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    grpc_at = [f"{args.host}:{server.grpc_port}"] if server.grpc_port else []
    if args.grpc_socket_path:
        grpc_at.append(f"unix:{args.grpc_socket_path}")
    for manager in managers.values():
        print(f"serving {manager.name} from {manager.base_path}: REST "
              f"http://{args.host}:{server.rest_port}, gRPC {', '.join(grpc_at)}", flush=True)
    stop.wait()
    server.stop()
    return 0


def _served_models(args: argparse.Namespace) -> dict[str, str]:
    """Model name -> base path: the one named on the command line, or the config file's."""
    from masktfx.model_config import ModelConfigError, read_config

    if (args.model_name is None) != (args.model_base_path is None):
        raise CommandError("--model-name and --model-base-path go together")
    if args.model_name is not None:
        return {args.model_name: args.model_base_path}
    if not args.model_config_file:
        raise CommandError("give --model-name and --model-base-path, or --model-config-file")
    try:
        listed = read_config(args.model_config_file)
    except ModelConfigError as exc:
        raise CommandError(str(exc)) from None
    if not listed:
        raise CommandError(f"{args.model_config_file}: lists no model")
    return {name: served.base_path for name, served in listed.items()}


def add_predict(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("predict", help="call a served model (TF Serving or masktfx serve)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--server", help="REST base URL, e.g. http://127.0.0.1:8501")
    target.add_argument("--grpc", help="gRPC HOST:PORT, e.g. 127.0.0.1:8500")
    parser.add_argument("--model", required=True, help="model name")
    pinned = parser.add_mutually_exclusive_group()
    pinned.add_argument("--version", type=int, default=None, help="a specific version")
    pinned.add_argument("--label", default="", help="the version a label points at (stable, "
                                                    "canary; see `masktfx promote`)")
    parser.add_argument("--image", action="append", default=[],
                        help="image of one view (repeat for K views, in order)")
    parser.add_argument("--mask", action="append", default=[],
                        help="the region's mask (once, or once per view)")
    parser.add_argument("--manifest", help="a manifest CSV: predict every row (its label "
                        "column may be missing or empty)")
    parser.add_argument("--batch-size", type=int, default=32, help="regions per request")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.set_defaults(handler=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from masktfx.images import RegionInputError, load_region
    from masktfx.manifest import ManifestError, read_manifest
    from masktfx.serving.client import GrpcClient, RestClient, ServingClientError

    if args.manifest and (args.image or args.mask):
        raise CommandError("give either --manifest or --image/--mask, not both")
    if args.manifest:
        try:
            manifest = read_manifest(args.manifest, labels_optional=True)
        except ManifestError as exc:
            raise CommandError(str(exc)) from None
        regions = [(row.example_id, row.images, row.masks,
                    {"geometry": row.geometry, "geometry_crs": row.geometry_crs,
                     "plane": row.plane, "mask_label": row.mask_label})
                   for row in manifest.rows]
        failed = [{"row": r.row, "error": r.reason} for r in manifest.rejected]
    else:
        if not args.image or not args.mask:
            raise CommandError("give --image (one per view) and --mask, or --manifest")
        regions = [(args.image[0], tuple(args.image), tuple(args.mask), {})]
        failed = []
    if args.batch_size < 1:
        raise CommandError("--batch-size must be >= 1")

    def encoded(images, masks, where):
        """Files as the model wants them (TIFF, DICOM and NIfTI as raster records, masks
        canonical PNG, polygons rasterized), checked as ingest and the server check them; the
        error names the file at fault."""
        region = load_region(images, masks, args.max_pixels, **where)
        return [info.encoded for info in region.images], region.masks

    def predict_batch(ids, images, masks):
        """One request; if the server refuses it as bad input, each region alone, so one bad
        region fails only itself."""
        try:
            return list(zip(ids, client.predict_regions(images, masks, args.version, args.label)))
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
        for example_id, image_paths, mask_paths, where in batch:
            try:
                views, region = encoded(image_paths, mask_paths, where)
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
            answer = {"id": example_id, "probability": prediction.probability,
                      "label": prediction.label, "model_version": prediction.model_version}
            if prediction.ood_score is not None:
                answer.update(ood_score=prediction.ood_score,
                              in_distribution=prediction.in_distribution)
            print(json.dumps(answer), flush=True)
    return status
