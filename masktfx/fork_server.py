"""Warm Beam SDK workers for DirectRunner's multi_processing mode.

Beam starts every worker of every Beam component as a new Python process, and each one imports
TensorFlow and the TFX libraries before it does any work, for every worker of every component:
on a small machine most of a small run's time (docs/benchmarks.md). The fork server imports them
once, per run, and
forks a worker on request; the worker is Beam's own SDK harness (`sdk_worker_main.main`), with the
environment, working directory and standard streams of the process Beam started.

Beam starts `python -m masktfx.fork_server worker` (see masktfx/beam_runner.py). That process
imports nothing heavy: it hands its streams and environment to the server named by
`MASKTFX_FORK_SERVER` and waits for the forked worker's exit status. Without a server, or when the
server cannot be reached, it becomes Beam's usual worker (exec), so a run never depends on it.

The server forks from a single thread, before any gRPC channel or TensorFlow op exists, so the
children start from a clean state; Beam's workers create their own channels after the fork.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence

from masktfx.beam_args import beam_flags

SERVER_ENV = "MASKTFX_FORK_SERVER"  # path of the server's Unix socket
LOG_ENV = "MASKTFX_FORK_SERVER_LOG"  # optional: a file the server appends a line to per worker
BEAM_WORKER_MODULE = "apache_beam.runners.worker.sdk_worker_main"
RUNNER_FLAG = "--runner=masktfx.beam_runner.ForkServerDirectRunner"
# Imported by the server before it forks: what Beam's workers import when they unpickle the
# DoFns. User module files are not preloaded: TFX puts them on PYTHONPATH per component, and the
# worker imports them itself.
INGEST_PRELOAD = (BEAM_WORKER_MODULE, "masktfx.ingest")
PIPELINE_PRELOAD = (
    *INGEST_PRELOAD,
    "tensorflow",
    "tfx_bsl.public.tfxio",
    "tensorflow_data_validation",
    "tensorflow_transform.beam",
    "tensorflow_model_analysis",
)
_HEADER = struct.Struct("!Q")  # length of the JSON request that follows the streams
_STATUS = struct.Struct("!i")  # the worker's exit status, sent by the worker itself
_FORKED = b"F"  # sent by the worker first: from here on the client waits for _STATUS
_PARENT_POLL_S = 1.0
_START_TIMEOUT_S = 60.0  # to open the socket; the preload comes after, beside the caller's work


def worker_command() -> str:
    """The shell command Beam runs to start one worker through the fork server."""
    return f"{sys.executable} -m masktfx.fork_server worker"


def runs_local_multiprocessing(beam_args: Sequence[str]) -> bool:
    """Whether these Beam args run DirectRunner's multi_processing mode (Beam's defaults apply)."""
    flags = beam_flags(beam_args, {"runner": "DirectRunner",
                                   "direct_running_mode": "in_memory"})
    return (flags["runner"].lower() in ("direct", "directrunner")
            and flags["direct_running_mode"] == "multi_processing")


def fork_server_runner_args(beam_args: Sequence[str], enabled: bool = True) -> list[str]:
    """The Beam args to add so that a local multi_processing run takes its workers from the
    fork server: [RUNNER_FLAG], or [] when disabled or for any other runner or mode."""
    return [RUNNER_FLAG] if enabled and runs_local_multiprocessing(beam_args) else []


@contextlib.contextmanager
def fork_server_for(beam_args: Sequence[str], preload: Sequence[str],
                    enabled: bool = True) -> Iterator[list[str]]:
    """Yields the Beam args to run with. When they run DirectRunner's multi_processing mode, a
    server is started for the block, unless this process already runs one (`masktfx run` starts
    one early, so that its preload overlaps the run's own start, and ingest shares it)."""
    args = [*beam_args, *fork_server_runner_args(beam_args, enabled)]
    if len(args) == len(beam_args) or os.environ.get(SERVER_ENV):
        yield args
    else:
        with running_fork_server(preload):
            yield args


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the other end closed the connection")
        data += chunk
    return data


# --- the client: what Beam starts --------------------------------------------------------------

def _become_cold_worker(reason: str) -> None:
    """Start Beam's worker the usual way (it imports everything itself)."""
    if reason:
        print(f"masktfx fork server: {reason}; starting a cold Beam worker", file=sys.stderr)
    os.execv(sys.executable, [sys.executable, "-m", BEAM_WORKER_MODULE])


def request_worker(address: str, env: dict[str, str], cwd: str,
                   streams: Sequence[int] = (0, 1, 2)) -> socket.socket:
    """Ask the server at `address` for a Beam worker with this environment, working directory
    and standard streams; the open connection once it has forked one. The worker stops when the
    connection closes, and sends its exit status on it when it ends. Raises OSError when the
    server cannot be reached or starts no worker."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(address)
    except OSError as error:
        connection.close()
        raise ConnectionError(f"cannot reach {address} ({error})") from error
    try:
        request = json.dumps({"env": env, "cwd": cwd}).encode()
        socket.send_fds(connection, [_HEADER.pack(len(request))], list(streams))
        connection.sendall(request)
        forked = connection.recv(1) == _FORKED
    except OSError:
        forked = False
    if not forked:  # the server ended before it forked a worker
        connection.close()
        raise ConnectionError(f"the server at {address} did not start a worker")
    return connection


def wait_for_worker(connection: socket.socket) -> int | None:
    """The exit status of the worker on `connection`; None when it ended without one."""
    try:
        return _STATUS.unpack(_receive_exactly(connection, _STATUS.size))[0]
    except OSError:
        return None


def run_client() -> int:
    """Ask the server for a worker with this process's environment and streams; wait for it."""
    address = os.environ.get(SERVER_ENV, "")
    if not address:
        _become_cold_worker("")
    try:
        connection = request_worker(address, dict(os.environ), os.getcwd())
    except OSError as error:
        _become_cold_worker(str(error))

    def stop(signum: int, _frame: object) -> None:
        # Closing our end tells the worker to stop (see _watch_client).
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = wait_for_worker(connection)
    if status is None:
        print("masktfx fork server: the worker ended without an exit status "
              "(killed, or out of memory?)", file=sys.stderr)
        return 1
    return status


# --- the server ---------------------------------------------------------------------------------

def _receive_request(connection: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _flags, _address = socket.recv_fds(connection, _HEADER.size, 3)
    if len(fds) != 3 or len(header) != _HEADER.size:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("request without the client's three standard streams")
    (size,) = _HEADER.unpack(header)
    try:
        return json.loads(_receive_exactly(connection, size)), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _watch_client(connection: socket.socket) -> None:
    """Exit when the client goes away: Beam stopped or killed the process it started."""
    with contextlib.suppress(OSError):
        connection.recv(1)
    os._exit(143)


def _python_path_entries(env: dict) -> list[str]:
    return [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]


def _run_forked_worker(connection: socket.socket, request: dict, fds: list[int]) -> None:
    """In the child: become the worker Beam asked for, then report its exit status."""
    connection.sendall(_FORKED)
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    for signum in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # A new interpreter would put PYTHONPATH on sys.path; TFX adds user module wheels that way.
    added = [entry for entry in _python_path_entries(request["env"]) if entry not in sys.path]
    sys.path[1:1] = added
    sys.argv = [BEAM_WORKER_MODULE]
    # A new interpreter's root logger has no handler; TFMA's import adds one for stderr, which
    # would print every log line of the worker beside the copy Beam's logging service gets.
    logging.getLogger().handlers.clear()
    logging.getLogger().setLevel(logging.WARNING)
    importlib.invalidate_caches()
    import numpy

    numpy.random.seed()  # siblings must not share the server's random state
    threading.Thread(target=_watch_client, args=(connection,), daemon=True).start()
    status = 0
    try:
        importlib.import_module(BEAM_WORKER_MODULE).main(sys.argv)
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # noqa: BLE001 - the worker's failure is reported as its status
        traceback.print_exc()
        status = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    with contextlib.suppress(OSError):
        connection.sendall(_STATUS.pack(status))
    os._exit(status)


def serve(address: str, parent_pid: int, preload: Sequence[str]) -> None:
    """Preload, then fork one worker per connection until the parent process is gone."""
    # Ctrl-C reaches the whole process group; the parent decides, and ends this server.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address + ".binding")
    listener.listen(64)  # workers that ask during the preload wait in the backlog
    os.rename(address + ".binding", address)  # the address exists only once it accepts
    for module in preload:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - the clients start cold workers instead
            print(f"masktfx fork server: cannot import {module} ({error!r}); stopping, "
                  "Beam workers will start cold", file=sys.stderr)
            raise SystemExit(1) from None
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished workers
    listener.settimeout(_PARENT_POLL_S)
    while os.getppid() == parent_pid:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        connection.setblocking(True)
        try:
            request, fds = _receive_request(connection)
        except (OSError, ValueError) as error:
            print(f"masktfx fork server: bad request ({error})", file=sys.stderr)
            connection.close()
            continue
        pid = os.fork()
        if pid == 0:  # the child never returns to this loop
            try:
                listener.close()
                _run_forked_worker(connection, request, fds)
            except BaseException:  # noqa: BLE001 - before Beam's worker started
                traceback.print_exc()
            finally:
                os._exit(1)
        connection.close()
        for fd in fds:
            os.close(fd)
        _log_fork(pid)


def _log_fork(pid: int) -> None:
    """One line per forked worker in $MASKTFX_FORK_SERVER_LOG, for whoever wants to check."""
    path = os.environ.get(LOG_ENV)
    if path:
        with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as log:
            log.write(f"{time.time():.3f} forked Beam worker {pid}\n")


@contextlib.contextmanager
def running_fork_server(preload: Sequence[str]) -> Iterator[str]:
    """Run a fork server for this process's Beam pipelines; yields its address ("" when it
    could not start: the workers then start cold, as without it).

    The server starts importing at once, beside whatever this process does next, and ends with
    the block (or by itself, when this process dies).
    """
    try:
        folder = tempfile.mkdtemp(prefix="masktfx-fork-")
    except OSError as error:
        print(f"masktfx fork server: not started ({error}); Beam workers will start cold",
              file=sys.stderr)
        yield ""
        return
    address = os.path.join(folder, "server.sock")
    # stdout stays clean for the caller's output (`masktfx run --json`); messages go to stderr.
    server = subprocess.Popen(
        [sys.executable, "-m", "masktfx.fork_server", "serve", address, str(os.getpid()),
         *preload],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    previous = os.environ.get(SERVER_ENV)
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while (not os.path.exists(address) and server.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.01)
        if os.path.exists(address):
            os.environ[SERVER_ENV] = address
            yield address
        else:
            print(f"masktfx fork server: not started (status {server.poll()}); Beam workers "
                  "will start cold", file=sys.stderr)
            yield ""
    finally:
        if previous is None:
            os.environ.pop(SERVER_ENV, None)
        else:
            os.environ[SERVER_ENV] = previous
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
        if server.poll() is None:
            server.kill()
            server.wait()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    if argv[1:2] == ["worker"]:
        return run_client()
    if argv[1:2] == ["serve"] and len(argv) >= 4:
        serve(argv[2], int(argv[3]), argv[4:])
        return 0
    print("usage: python -m masktfx.fork_server worker | serve SOCKET PARENT_PID [MODULE ...]",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
