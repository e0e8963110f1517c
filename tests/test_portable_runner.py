"""Beam's portability framework, as Flink or Spark on Kubernetes run our Beam pipelines: work sent
to a job service, run by SDK workers that are separate processes of a worker pool, every function
pickled across that boundary. `masktfx ingest` and a whole `masktfx run` on it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import yaml
from conftest import IN_PROCESS_BEAM

from masktfx import cli, features
from masktfx.demo_data import write_synthetic
from masktfx.records import read_examples

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert process.poll() is None and time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def portable_args(tmp_path_factory):
    """A job service and a worker pool of separate processes (the image's environment:
    TF_USE_LEGACY_KERAS=1), and the Beam args that send work to them."""
    job_port, pool_port = _free_port(), _free_port()
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    logs = tmp_path_factory.mktemp("portable")
    processes = [
        subprocess.Popen([sys.executable, "-m",
                          "apache_beam.runners.portability.local_job_service_main",
                          f"--port={job_port}"], env=env,
                         stdout=open(logs / "jobs.log", "wb"), stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                          f"--service_port={pool_port}"], env=env,
                         stdout=open(logs / "workers.log", "wb"), stderr=subprocess.STDOUT)]
    try:
        _wait_for(job_port, processes[0], "the job service")
        _wait_for(pool_port, processes[1], "the worker pool")
        yield ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
               "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"]
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_ingest_and_a_whole_run_on_the_portable_runner(tmp_path, portable_args, capsys):
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=160, size=32)
    # ingest: the same records as the DirectRunner writes
    for name, args in (("portable", portable_args), ("direct", IN_PROCESS_BEAM)):
        assert cli.main(["ingest", manifest, "--output", str(tmp_path / name), "--no-progress",
                         "--beam-args", *args]) == 0
    found = {name: {example.features.feature[features.ID_KEY].bytes_list.value[0]: example
                    for example in read_examples(str(tmp_path / name / features.SHARD_GLOB))}
             for name in ("portable", "direct")}
    assert len(found["portable"]) == 160 and found["portable"] == found["direct"]
    # the whole pipeline, each Beam component's work done by the pool's workers
    config = tmp_path / "portable.yaml"
    config.write_text(yaml.safe_dump({"beam_args": portable_args}))
    capsys.readouterr()
    assert cli.main(["run", "--config", str(config), "--data", manifest, "--workdir",
                     str(tmp_path / "work"), "--image-size", "16", "--model-preset", "seed",
                     "--epochs", "2", "--min-accuracy", "0", "--max-auc-drop", "1",
                     "--no-serving-check", "--no-confidence-intervals",
                     "--attribution-regions", "0", "--drift-threshold", "0"]) == 0
    out = capsys.readouterr().out
    for node in ("ImportExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator"):
        assert f"  {node} COMPLETE" in out, out
    assert "pushed: version" in out, out
