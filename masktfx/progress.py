"""Progress of Beam workers on the terminal: each worker counts what it has done into a file of
its own in a folder (workers on this machine, the DirectRunner's or a local worker pool's, see
it), and a thread sums the files into a progress bar. Used by ingest and batch scoring."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from typing import TextIO


class ProgressCounter:
    """A worker's count of what it has done, in a file of its own under `progress_dir` (when
    there is one), which `show_progress` sums for the terminal."""

    def __init__(self, progress_dir: str | None, every: int = 16):
        self._progress_dir = progress_dir
        self._every = every
        self._file: str | None = None
        self.done = 0

    def start(self) -> None:
        """In the worker (a DoFn's setup): name this worker's file."""
        if self._progress_dir and os.path.isdir(self._progress_dir):
            self._file = os.path.join(self._progress_dir, uuid.uuid4().hex)

    def add(self, count: int = 1) -> None:
        self.done += count
        if self._file and self.done % self._every == 0:
            self.write()

    def write(self) -> None:
        if self._file:
            with open(self._file, "w", encoding="ascii") as handle:
                handle.write(str(self.done))


# With no row done after this long on a runner other than the DirectRunner, the bar says why it
# may be waiting: Beam waits minutes for SDK workers that cannot start, without a word.
STALL_NOTICE_S = 30.0


def stall_notice(runner: str, seconds: float) -> str:
    return (f"no row done after {seconds:.0f} s on {runner}: waiting for its workers to start. "
            "Workers that cannot start (masktfx or Beam missing from their environment, a "
            "worker pool that cannot be reached) fail the job only after Beam's own timeout; "
            "workers on other machines report no progress here")


def show_progress(progress_dir: str, total: int | None, stop: threading.Event, stream: TextIO,
                  desc: str = "ingest", unit: str = "row", stalled: str = "",
                  stall_after_s: float = STALL_NOTICE_S) -> None:
    """A progress bar of the counts that workers write into files of `progress_dir` (one
    each), until `stop` is set; `total` None: a count and a rate. `stalled`: said once when
    nothing is counted after `stall_after_s`."""
    import time

    from tqdm import tqdm

    def counted() -> int:
        done = 0
        for name in os.listdir(progress_dir):
            try:
                with open(os.path.join(progress_dir, name), encoding="ascii") as handle:
                    done += int(handle.read() or 0)
            except (OSError, ValueError):
                continue
        return done if total is None else min(done, total)

    started = time.monotonic()
    with tqdm(total=total, unit=unit, desc=desc, file=stream) as bar:
        while not stop.wait(0.5):
            bar.n = counted()
            bar.refresh()
            if stalled and bar.n == 0 and time.monotonic() - started >= stall_after_s:
                bar.write(f"{desc}: {stalled}", file=stream)
                stalled = ""
        bar.n = counted()  # the workers' last counts, written as their bundles finished
        bar.refresh()


@contextlib.contextmanager
def progress_bar(shown: bool, total: int | None, stream: TextIO, desc: str = "ingest",
                 unit: str = "row", stalled: str = "") -> Iterator[str | None]:
    """For the block, a progress bar on `stream` (when `shown`) of what the workers'
    ProgressCounters count; yields the folder they count into (None: no bar)."""
    if not shown:
        yield None
        return
    progress_dir = tempfile.mkdtemp(prefix="masktfx-progress-")
    os.chmod(progress_dir, 0o777 & ~current_umask())  # workers of a pool may run as another user
    stop = threading.Event()
    watcher = threading.Thread(target=show_progress, daemon=True,
                               args=(progress_dir, total, stop, stream, desc, unit, stalled))
    watcher.start()
    try:
        yield progress_dir
    finally:
        stop.set()
        watcher.join()
        shutil.rmtree(progress_dir, ignore_errors=True)


def current_umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    current = os.umask(0)
    os.umask(current)
    return current
