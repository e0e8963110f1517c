"""Beam's job service and a worker pool of separate SDK worker processes, on free loopback ports,
as Flink or Spark on Kubernetes run our Beam pipelines (the image's environment:
TF_USE_LEGACY_KERAS=1); for the tests and bench/ingest_portable.py."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator


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
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.2)


@contextlib.contextmanager
def portable_services(log_dir: str, workers: int = 1, pool: str = "beam",
                      preload: str = "pipeline") -> Iterator[list[str]]:
    """For the block, a job service and a worker pool; yields the Beam args that send work to
    them (`workers` SDK workers per job). `pool`: "beam" is Beam's own pool, which starts each
    worker as a new process; "masktfx" is `masktfx beam-worker-pool`, which forks them warm
    (`preload` as its flag; each fork is a line in LOG_DIR/forks.log)."""
    os.makedirs(log_dir, exist_ok=True)
    job_port, pool_port = _free_port(), _free_port()
    # The pool starts each worker as `python -c ...` from PATH: this environment's Python first
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1",
           "MASKTFX_FORK_SERVER_LOG": os.path.join(log_dir, "forks.log"),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    pools = {"beam": ["apache_beam.runners.worker.worker_pool_main",
                      f"--service_port={pool_port}"],
             "masktfx": ["masktfx.cli", "beam-worker-pool", f"--port={pool_port}",
                         f"--preload={preload}"]}
    commands = {"jobs": ["apache_beam.runners.portability.local_job_service_main",
                         f"--port={job_port}"],
                "workers": pools[pool]}
    processes = {}
    try:
        for name, command in commands.items():
            with open(os.path.join(log_dir, f"{name}.log"), "wb") as log:
                processes[name] = subprocess.Popen([sys.executable, "-m", *command], env=env,
                                                   stdout=log, stderr=subprocess.STDOUT)
        _wait_for(job_port, processes["jobs"], "the job service")
        _wait_for(pool_port, processes["workers"], "the worker pool")
        yield ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
               "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}",
               f"--sdk_worker_parallelism={workers}"]
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
