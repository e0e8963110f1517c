"""The fork server: Beam's multi_processing workers forked from a process that imported once.

Real Beam pipelines on the DirectRunner's FnApiRunner, real worker processes, a real Unix socket.
The preload here is Beam's worker plus `wave`, a standard-library module nothing else imports, so
a worker can tell whether it was forked from the server (it has `wave` without importing it).
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import apache_beam as beam
import pytest

from masktfx.fork_server import (
    BEAM_WORKER_MODULE,
    RUNNER_FLAG,
    SERVER_ENV,
    fork_server_for,
    fork_server_runner_args,
    running_fork_server,
    runs_local_multiprocessing,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRELOAD = (BEAM_WORKER_MODULE, "wave")
MULTI_PROCESSING = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
PROBE = textwrap.dedent("""
    import os
    import sys


    def describe_worker(value):
        parent = open(f"/proc/{os.getppid()}/cmdline", "rb").read().replace(b"\\0", b" ")
        return (value * 2, "wave" in sys.modules, "masktfx.fork_server serve" in parent.decode(),
                os.environ.get("MASKTFX_TEST_PROBE"), os.getcwd())
""")


@pytest.fixture()
def probe_module(tmp_path, monkeypatch):
    """A module the workers can import only through PYTHONPATH, as TFX ships user modules."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "fork_server_probe.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv(SERVER_ENV, raising=False)
    sys.modules.pop("fork_server_probe", None)
    import fork_server_probe

    return fork_server_probe, str(folder)


def _run_probe_collected(probe, beam_args: list[str], tmp_path) -> list[tuple]:
    """Run the probe pipeline; the workers' answers come back through a text file."""
    out = str(tmp_path / "answers")
    with beam.Pipeline(argv=beam_args) as pipeline:
        _ = (pipeline | beam.Create(range(40)) | beam.Map(probe.describe_worker)
             | beam.Map(repr) | beam.io.WriteToText(out, shard_name_template=""))
    with open(out, encoding="utf-8") as handle:
        return [ast.literal_eval(line) for line in handle]


def test_workers_are_forked_with_the_environment_beam_gave_them(probe_module, tmp_path,
                                                               monkeypatch):
    probe, folder = probe_module
    with fork_server_for(MULTI_PROCESSING, PRELOAD) as beam_args:
        assert os.environ.get(SERVER_ENV)
        assert beam_args == [*MULTI_PROCESSING, RUNNER_FLAG]
        # Set after the server started, as TFX does per component for user module wheels.
        monkeypatch.setenv("PYTHONPATH", folder)
        monkeypatch.setenv("MASKTFX_TEST_PROBE", "from the client")
        answers = _run_probe_collected(probe, beam_args, tmp_path)
    assert sorted(a[0] for a in answers) == [2 * i for i in range(40)]
    assert all(preloaded and forked for _, preloaded, forked, _, _ in answers), answers[:3]
    assert {a[3] for a in answers} == {"from the client"}
    assert {a[4] for a in answers} == {os.getcwd()}
    assert SERVER_ENV not in os.environ  # the block ended: server gone, variable restored


def test_without_a_server_the_same_runner_starts_cold_workers(probe_module, tmp_path,
                                                             monkeypatch):
    probe, folder = probe_module
    monkeypatch.setenv("PYTHONPATH", folder)
    answers = _run_probe_collected(probe, [*MULTI_PROCESSING, RUNNER_FLAG], tmp_path)
    assert sorted(a[0] for a in answers) == [2 * i for i in range(40)]
    assert not any(preloaded or forked for _, preloaded, forked, _, _ in answers)


def test_a_server_that_cannot_preload_leaves_the_workers_to_start_cold(probe_module, tmp_path,
                                                                      monkeypatch):
    probe, folder = probe_module
    monkeypatch.setenv("PYTHONPATH", folder)
    with fork_server_for(MULTI_PROCESSING, (BEAM_WORKER_MODULE, "masktfx_no_such_module")
                         ) as beam_args:
        answers = _run_probe_collected(probe, beam_args, tmp_path)
    assert sorted(a[0] for a in answers) == [2 * i for i in range(40)]
    assert not any(forked for _, _, forked, _, _ in answers)


def test_no_place_for_the_socket_means_cold_workers_not_a_failed_run(probe_module, tmp_path,
                                                                     monkeypatch):
    probe, folder = probe_module
    monkeypatch.setenv("PYTHONPATH", folder)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no" / "such" / "folder"))
    with running_fork_server(PRELOAD) as address:
        monkeypatch.setattr(tempfile, "tempdir", None)  # Beam needs one too
        assert address == "" and SERVER_ENV not in os.environ
        answers = _run_probe_collected(probe, [*MULTI_PROCESSING, RUNNER_FLAG], tmp_path)
    assert sorted(a[0] for a in answers) == [2 * i for i in range(40)]
    assert not any(forked for _, _, forked, _, _ in answers)


def test_a_failing_worker_fails_the_pipeline(probe_module):
    def fail(value):
        raise ValueError(f"bad value {value}")

    with fork_server_for(MULTI_PROCESSING, PRELOAD) as beam_args:
        with pytest.raises(Exception, match="bad value"):
            with beam.Pipeline(argv=beam_args) as pipeline:
                _ = pipeline | beam.Create([1]) | beam.Map(fail)


def _client(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "masktfx.fork_server", "worker"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def _env_without_beam() -> dict:
    env = {k: v for k, v in os.environ.items() if k != SERVER_ENV}
    env.pop("CONTROL_API_SERVICE_DESCRIPTOR", None)
    return env


def test_client_passes_on_the_workers_streams_and_exit_status():
    # Without Beam's control address the worker fails at once; its traceback must reach the
    # client's stderr and its status the client's exit code, as if Beam had started it.
    with running_fork_server(PRELOAD) as address:
        result = _client({**_env_without_beam(), SERVER_ENV: address})
    assert result.returncode == 1
    assert "CONTROL_API_SERVICE_DESCRIPTOR" in result.stderr
    assert "cold Beam worker" not in result.stderr


def test_unreachable_server_falls_back_to_a_cold_worker(tmp_path):
    result = _client({**_env_without_beam(), SERVER_ENV: str(tmp_path / "gone.sock")})
    assert "cannot reach" in result.stderr and "starting a cold Beam worker" in result.stderr
    assert "CONTROL_API_SERVICE_DESCRIPTOR" in result.stderr  # the cold worker ran, and failed
    assert result.returncode == 1


def _server_pids(address: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if address.encode() in handle.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def test_server_ends_when_the_process_that_started_it_dies(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from masktfx.fork_server import running_fork_server
        with running_fork_server({PRELOAD!r}) as address:
            print(address, flush=True)
            time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    address = parent.stdout.readline().strip()
    deadline = time.monotonic() + 30
    while not _server_pids(address) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _server_pids(address), "the server did not start"
    parent.send_signal(signal.SIGKILL)  # no clean-up runs in the parent
    parent.wait()
    deadline = time.monotonic() + 30
    while _server_pids(address) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _server_pids(address)


@pytest.mark.parametrize("args, expected", [
    (["--direct_running_mode=multi_processing"], True),
    (["--runner=DirectRunner", "--direct_running_mode", "multi_processing"], True),
    (["--direct_running_mode=in_memory"], False),
    ([], False),  # Beam's default mode is in_memory
    (["--runner=FlinkRunner", "--direct_running_mode=multi_processing"], False),
    (["--direct_running_mode=multi_processing", "--runner=DataflowRunner"], False),
])
def test_only_local_multiprocessing_runs_use_the_server(args, expected):
    assert runs_local_multiprocessing(args) is expected
    assert fork_server_runner_args(args) == ([RUNNER_FLAG] if expected else [])
    assert fork_server_runner_args(args, enabled=False) == []
