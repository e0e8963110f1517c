"""One `masktfx run` at a time per workdir.

Two runs on one workdir would ingest into the same span at once and share one MLMD store: the
first would end with the second's run id, components it never ran, and a summary that is not
its own. A run holds an exclusive lock (flock) on WORKDIR/run.lock from before it ingests until
its summary is read; the file says who holds it, so a second run is refused with a message that
names the first. The kernel drops the lock when its process ends, however it ends, so a killed
run leaves no stale lock behind. (flock is per host: workdirs on a network filesystem shared
by several hosts are not covered.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """Another run holds the workdir; the message names it."""


def _holder(handle) -> str:
    handle.seek(0)
    try:
        found = json.loads(handle.read() or "{}")
    except ValueError:
        found = {}
    if not found:
        return "another masktfx run"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(found.get("started", 0)))
    return (f"run {found.get('run_id', '?')} (pid {found.get('pid', '?')} on "
            f"{found.get('host', '?')}, started {started})")


@contextmanager
def workdir_lock(workdir: str, run_id: str) -> Iterator[None]:
    """Hold WORKDIR's run lock for the block, or raise RunLockedError at once."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    # opened without truncating: the holder's record stays readable until the lock is ours
    with open(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{_holder(handle)} is running in {workdir}; wait for it to finish, or run in "
                "another --workdir") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"run_id": run_id, "pid": os.getpid(),
                                     "host": socket.gethostname(), "started": time.time()}))
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
