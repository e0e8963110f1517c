"""bench/pipeline: what a whole run costs, and how it grows with N, against the seed article's
in-memory approach measured in the same run.

For each N (1,000 and 4,000 by default; 16,000 with --full), on N synthetic 128x128 regions:
- reference: the article's loader (a Python loop: decode, resize the mask, tf.where, tf.stack)
  and its CNN trained for one epoch: wall time and peak RSS;
- ours: `masktfx ingest` then `masktfx run --model-preset seed --epochs 1`: wall time of each
  component (MLMD execution times), in total, and peak RSS of the whole process tree; then two
  re-runs with no new data (after a blessed run the first evaluates against the new baseline,
  the second is fully cached); with the DirectRunner in multi-processing mode (the default) and in
  in-memory mode; at the smallest N also multi-processing without the fork server;
- ingest with one DirectRunner worker against one per core;
- the Trainer's input pipeline: examples/s of the tf.data pipeline that feeds the model
  (transformed examples -> shuffled, augmented batches) against the same model fed from
  in-memory arrays (the ceiling).
Prints JSON; every figure comes from this run, each measured step in a fresh subprocess.

With --scale [N]: only the scale run, SCALE_SIZE (256) square regions: the reference runs at
small N (--scale-probes), its peak memory is fitted as a line in N and projected to where it
passes this machine's memory; ours runs at the smallest probe and at N, to show flat memory.
Without N, N is chosen SCALE_MARGIN past that crossing, rounded up to a thousand (about 55,000
on these 24 GiB machines), so the reference is projected to fail there.

    python bench/pipeline.py [--sizes 1000 4000] [--full] [--work DIR]
    python bench/pipeline.py --scale [N] [--scale-probes 1000 4000] [--work DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from measure import run_measured  # noqa: E402  (bench/measure.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 128
SCALE_SIZE = 256
SCALE_MARGIN = 1.15  # --scale without N: this far past where the reference needs all memory
TARGETS = {"peak_rss_ratio_1000_to_16000": "<= 1.3", "fixed_cost_s": "<= 60",
           "rerun_s": "<= 20", "input_vs_in_memory": ">= 0.8",
           "total_vs_reference_at_16000": "<= 1.5"}


# -- children -----------------------------------------------------------------------------------
def reference(manifest: str) -> dict:
    """The seed article: every region in memory, then one epoch of its CNN."""
    import tensorflow as tf

    from masktfx.manifest import read_manifest
    from masktfx.modules.model import stop_autograph_converting_keras

    # The same TF 2.16 fix as our Trainer, so that the ratio compares approaches, not tracing.
    stop_autograph_converting_keras()
    rows = read_manifest(manifest).rows
    started = time.perf_counter()
    images, labels = [], []
    for row in rows:
        image = tf.io.decode_png(tf.io.read_file(row.images[0]), channels=1)
        mask = tf.io.decode_png(tf.io.read_file(row.masks[0]), channels=1)
        mask = tf.image.resize(mask, tf.shape(image)[:2], method="nearest")
        images.append(tf.where(mask > 0, tf.cast(image, tf.float32) / 255.0, 0.0))
        labels.append(row.label)
    x = tf.stack(images)
    y = tf.constant(labels, tf.float32)
    loaded = time.perf_counter()
    model = tf.keras.Sequential([
        tf.keras.layers.Input(x.shape[1:]),
        tf.keras.layers.Conv2D(32, 3, activation="relu"), tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(64, 3, activation="relu"), tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(), tf.keras.layers.Dense(128, activation="relu"),
        tf.keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return {"load_s": round(loaded - started, 2),
            "train_s": round(time.perf_counter() - loaded, 2)}


def component_windows(workdir: str) -> dict:
    """[start, end] unix seconds of each component of the latest run, from MLMD."""
    from masktfx.config import PipelineConfig
    from masktfx.pipeline.summary import latest_run_id, node_id, open_store

    config = PipelineConfig.for_workdir(workdir)
    store = open_store(config)
    context = store.get_context_by_type_and_name(
        "pipeline_run", latest_run_id(store, config.pipeline_name))
    return {node_id(store, execution.id): [execution.create_time_since_epoch / 1000,
                                           execution.last_update_time_since_epoch / 1000]
            for execution in store.get_executions_by_context(context.id)}


def durations(windows: dict) -> dict:
    """Seconds per component, from its execution window."""
    return {node: round(end - start, 2) for node, (start, end) in windows.items()}


def peak_by_component(timeline: list, windows: dict) -> dict:
    """Peak RSS (MiB) of the process tree while each component ran; 'outside' is the rest."""
    peaks: dict[str, float] = {}
    for moment, rss in timeline:
        owner = next((node for node, (start, end) in windows.items()
                      if start <= moment <= end), "outside components")
        peaks[owner] = max(peaks.get(owner, 0.0), rss)
    return dict(sorted(peaks.items(), key=lambda item: -item[1]))


def input_throughput(workdir: str, batches: int = 60) -> dict:
    """examples/s of model.fit fed by the Trainer's tf.data pipeline vs by in-memory arrays.

    Steady state, as the Trainer runs: one repeated dataset across epochs (so the shuffle buffer
    fills once); the second of two epochs of `batches` steps is timed, for both feeds.
    """
    import glob

    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    from masktfx.config import PipelineConfig
    from masktfx.modules.model import build_model
    from masktfx.modules.trainer import make_input

    class EpochTimer(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    config = PipelineConfig.for_workdir(workdir)
    root = config.pipeline_root
    graph = max(glob.glob(os.path.join(root, "Transform", "transform_graph", "*")),
                key=os.path.getmtime)
    examples = max(glob.glob(os.path.join(root, "Transform", "transformed_examples", "*")),
                   key=os.path.getmtime)
    files = sorted(glob.glob(os.path.join(examples, "Split-train", "*")))
    dataset = make_input(files, tft.TFTransformOutput(graph), config, training=True).repeat()
    model = build_model(config)
    fed_timer = EpochTimer()
    model.fit(dataset, steps_per_epoch=batches, epochs=2, verbose=0, callbacks=[fed_timer])
    x, y = [], []
    for regions, labels in dataset.take(batches):
        x.append(regions.numpy())
        y.append(labels.numpy())
    x, y = np.concatenate(x), np.concatenate(y)
    memory_timer = EpochTimer()
    model.fit(x, y, batch_size=config.batch_size, epochs=2, verbose=0, shuffle=False,
              callbacks=[memory_timer])
    fed = len(x) / fed_timer.seconds[1]
    ceiling = len(x) / memory_timer.seconds[1]
    return {"tf_data_examples_per_s": round(fed, 1),
            "in_memory_examples_per_s": round(ceiling, 1),
            "ratio": round(fed / ceiling, 2), "first_epoch_tf_data_s": round(
                fed_timer.seconds[0], 2), "batches": batches,
            "batch_size": config.batch_size, "model_preset": config.model_preset}


# -- the driver ---------------------------------------------------------------------------------
def _child(kind: str, *args: str) -> dict:
    """A child's JSON answer, with its own seconds and peak RSS."""
    result = run_measured([sys.executable, __file__, "--child", kind, *args], ROOT)
    payload = json.loads(result.pop("stdout").strip().splitlines()[-1])
    return {**result, **payload}


def _child_answer(kind: str, *args: str) -> dict:
    """A child's JSON answer alone, for children that only read what a measured step left."""
    answer = _child(kind, *args)
    answer.pop("seconds"), answer.pop("peak_rss_mib")
    return answer


def _masktfx(*args: str, timeline: bool = False) -> dict:
    result = run_measured([sys.executable, "-m", "masktfx.cli", *args], ROOT,
                          timeline=timeline)
    result.pop("stdout")
    return result


def _run_with_profile(workdir: str, *args: str) -> tuple[dict, dict]:
    """`masktfx run`: its figures with the peak RSS per component; and the component times."""
    run = _masktfx("run", "--workdir", workdir, *args, timeline=True)
    windows = _child_answer("windows", workdir)
    run["peak_rss_mib_by_component"] = peak_by_component(run.pop("timeline"), windows)
    return run, durations(windows)


def _rerun(workdir: str, data: str, flags: list[str]) -> tuple[dict, dict]:
    """`masktfx run` again with no new data: its figures and the component times."""
    rerun = _masktfx("run", "--data", data, "--workdir", workdir, *flags)
    return rerun, durations(_child_answer("windows", workdir))


MODES = ("multi_processing", "in_memory")  # `masktfx run`'s default first


def measure_size(count: int, work: str, modes: tuple[str, ...] = MODES,
                 cold_workers: bool = False) -> dict:
    """Both modes at N; with `cold_workers`, also multi-processing without the fork server."""
    import shutil

    folder = os.path.join(work, f"n{count}")
    manifest = _synthetic(folder, count, SIZE)
    reference_run = _child("reference", manifest)
    ingested = os.path.join(folder, "ingested")
    for path in (ingested, ingested + "-1worker"):
        shutil.rmtree(path, ignore_errors=True)
    one_worker = _masktfx("ingest", manifest, "--output", ingested + "-1worker", "--no-progress",
                          "--beam-args", "--direct_num_workers=1")
    ingest = _masktfx("ingest", manifest, "--output", ingested, "--span", "1", "--no-progress")
    ours = {}
    for mode in modes:
        workdir = os.path.join(folder, f"work-{mode}")
        shutil.rmtree(workdir, ignore_errors=True)
        flags = ["--model-preset", "seed", "--epochs", "1", "--direct-running-mode", mode]
        run, components = _run_with_profile(workdir, "--data", ingested, *flags)
        rerun, rerun_components = _rerun(workdir, ingested, flags)
        # a blessed first run makes its model the baseline, so the first re-run evaluates again
        steady, steady_components = _rerun(workdir, ingested, flags)
        total = ingest["seconds"] + run["seconds"]
        ours[mode] = {"run": run, "total_s": round(total, 2),
                      "peak_rss_mib": max(ingest["peak_rss_mib"], run["peak_rss_mib"]),
                      "components_s": components,
                      "rerun_no_new_data": {**rerun, "components_s": rerun_components},
                      "second_rerun_no_new_data": {**steady, "components_s": steady_components},
                      "total_vs_reference": round(total / reference_run["seconds"], 2)}
    throughput = _child_answer("input", os.path.join(folder, f"work-{modes[0]}"))
    cold = {}
    if cold_workers:
        workdir = os.path.join(folder, "work-cold-workers")
        shutil.rmtree(workdir, ignore_errors=True)
        run, components = _run_with_profile(
            workdir, "--data", ingested, "--model-preset", "seed", "--epochs", "1",
            "--direct-running-mode", "multi_processing", "--no-beam-fork-server")
        warm = ours["multi_processing"]["run"]["seconds"]
        cold = {"multi_processing_without_fork_server": {
            "run": run, "components_s": components,
            "with_fork_server_s": warm, "speedup": round(run["seconds"] / warm, 2)}}
    return {
        "examples": count,
        "reference": reference_run,
        "ingest": ingest,
        "ours": ours,
        "ingest_one_worker_vs_all": {
            "one_worker_s": one_worker["seconds"], "all_workers_s": ingest["seconds"],
            "workers": os.cpu_count(),
            "speedup": round(one_worker["seconds"] / ingest["seconds"], 2)},
        "trainer_input": throughput,
        **cold,
    }


def _synthetic(folder: str, count: int, size: int) -> str:
    from masktfx.demo_data import write_synthetic

    manifest = os.path.join(folder, "data", "manifest.csv")
    if not os.path.exists(manifest):
        write_synthetic(os.path.join(folder, "data"), num_examples=count, size=size)
    return manifest


def _ours_default(manifest: str, folder: str) -> dict:
    """`masktfx ingest` + `masktfx run` (seed preset, one epoch, default running mode)."""
    import shutil

    ingested, workdir = os.path.join(folder, "ingested"), os.path.join(folder, "work")
    for path in (ingested, workdir):
        shutil.rmtree(path, ignore_errors=True)
    ingest = _masktfx("ingest", manifest, "--output", ingested, "--span", "1", "--no-progress")
    run, components = _run_with_profile(workdir, "--data", ingested, "--model-preset", "seed",
                                        "--epochs", "1")
    return {"examples": int(_count_rows(manifest)), "ingest": ingest, "run": run,
            "total_s": round(ingest["seconds"] + run["seconds"], 2),
            "peak_rss_mib": max(ingest["peak_rss_mib"], run["peak_rss_mib"]),
            "components_s": components}


def _count_rows(manifest: str) -> int:
    with open(manifest, encoding="utf-8") as handle:
        return sum(1 for _ in handle) - 1


def measure_scale(count: int | None, probes: list[int], work: str) -> dict:
    """SCALE_SIZE regions at `count`: where the article's approach runs out of memory, ours not.

    The reference runs at the small `probes` only; its peak memory is fitted as a line in N and
    projected to `count` and to the N where it passes this machine's memory (running it there
    would take the machine down with it). Ours runs at the smallest probe and at `count`; with
    no `count`, SCALE_MARGIN past that crossing.
    """
    import math

    import psutil

    machine_mib = psutil.virtual_memory().total / 2**20
    reference_runs = {}
    for probe in probes:
        manifest = _synthetic(os.path.join(work, f"scale{SCALE_SIZE}-n{probe}"), probe,
                              SCALE_SIZE)
        reference_runs[str(probe)] = _child("reference", manifest)
    small, large = min(probes), max(probes)
    slope = ((reference_runs[str(large)]["peak_rss_mib"]
              - reference_runs[str(small)]["peak_rss_mib"]) / (large - small))
    intercept = reference_runs[str(small)]["peak_rss_mib"] - slope * small
    crossing = int((machine_mib - intercept) / slope) if slope > 0 else None
    if count is None:
        if crossing is None:
            raise SystemExit("the reference's memory did not grow between the probes; "
                             "give --scale N")
        count = math.ceil(crossing * SCALE_MARGIN / 1000) * 1000
    projected = intercept + slope * count
    ours_small = _ours_default(
        os.path.join(work, f"scale{SCALE_SIZE}-n{small}", "data", "manifest.csv"),
        os.path.join(work, f"scale{SCALE_SIZE}-n{small}"))
    folder = os.path.join(work, f"scale{SCALE_SIZE}-n{count}")
    ours_large = _ours_default(_synthetic(folder, count, SCALE_SIZE), folder)
    return {
        "image_size": SCALE_SIZE, "examples": count, "machine_memory_mib": round(machine_mib),
        "reference": {
            "measured": reference_runs,
            "peak_rss_mib_per_1000_examples": round(slope * 1000, 1),
            "projected_peak_rss_mib": round(projected),
            "projected_vs_machine_memory": round(projected / machine_mib, 2),
            "examples_where_it_exceeds_machine_memory": crossing},
        "ours": {str(small): ours_small, str(count): ours_large,
                 "peak_rss_ratio": round(ours_large["peak_rss_mib"]
                                         / ours_small["peak_rss_mib"], 2),
                 "peak_rss_vs_machine_memory": round(ours_large["peak_rss_mib"]
                                                     / machine_mib, 2)},
    }


def growth(small: dict, large: dict) -> dict:
    """How each figure grows from the smallest to the largest N; fixed cost at N = 0."""
    count_small, count_large = small["examples"], large["examples"]
    result = {"examples_ratio": count_large / count_small,
              "reference_peak_rss_ratio": round(large["reference"]["peak_rss_mib"]
                                                / small["reference"]["peak_rss_mib"], 2),
              "reference_time_ratio": round(large["reference"]["seconds"]
                                            / small["reference"]["seconds"], 2)}
    for mode in small["ours"]:
        ours_small, ours_large = small["ours"][mode], large["ours"][mode]
        per_example = (ours_large["total_s"] - ours_small["total_s"]) / (count_large
                                                                        - count_small)
        result[mode] = {
            "peak_rss_ratio": round(ours_large["peak_rss_mib"] / ours_small["peak_rss_mib"], 2),
            "time_ratio": round(ours_large["total_s"] / ours_small["total_s"], 2),
            "seconds_per_1000_examples": round(per_example * 1000, 2),
            "fixed_cost_s": round(ours_small["total_s"] - per_example * count_small, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--full", action="store_true", help="add N = 16,000")
    parser.add_argument("--work", default=None, help="folder for data and workdirs (kept)")
    parser.add_argument("--scale", type=int, nargs="?", const=0, default=None,
                        metavar="N", help=f"only the scale run: {SCALE_SIZE}x{SCALE_SIZE} "
                        "regions at N (default: past where the reference needs more memory "
                        "than this machine has)")
    parser.add_argument("--scale-probes", type=int, nargs="+", default=[1000, 4000],
                        help="the N the reference and our small run are measured at")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    if args.child:
        kind, rest = args.child[0], args.child[1:]
        handler = {"reference": reference, "windows": component_windows,
                   "input": input_throughput}[kind]
        print(json.dumps(handler(*rest)))
        return
    import tempfile

    work = args.work or tempfile.mkdtemp(prefix="bench-pipeline-")
    if args.scale is not None:
        print(json.dumps({"benchmark": "pipeline-scale", "cpu_count": os.cpu_count(),
                          "scale": measure_scale(args.scale or None, args.scale_probes, work)},
                         indent=2))
        return
    sizes = sorted(set(args.sizes + ([16000] if args.full else [])))
    runs = {}
    for count in sizes:
        runs[str(count)] = measure_size(count, work, cold_workers=count == sizes[0])
        print(json.dumps({str(count): runs[str(count)]}), file=sys.stderr, flush=True)
    result = {"benchmark": "pipeline", "cpu_count": os.cpu_count(), "image_size": SIZE,
              "runs": runs, "targets": TARGETS}
    if len(sizes) >= 2:
        result["growth"] = growth(runs[str(sizes[0])], runs[str(sizes[-1])])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
