"""What `masktfx run` shows while it runs, and where everything else goes.

The libraries a run drives (TensorFlow's C++ runtime, absl, Beam and its worker processes, TFMA,
Keras) write hundreds of lines, some at error level
for things that are not errors. During a run they all go, complete, to WORKDIR/logs/<run id>.log:
file descriptors 1 and 2 point at the log (so C++ code and child processes such as Beam's workers
and the fork server write there too), and so do Python's sys.stdout and sys.stderr. The terminal
gets MaskTFX's own lines: one per component when it starts and when it ends, with its state and
time, the Trainer's epochs, the summary, and a failure's component, reason and log path. On a
terminal the current component is a live line (rich); on a pipe or in CI, plain lines only.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from masktfx import features

LOG_DIR = "logs"
# TFX's LocalDagRunner logs these (absl, INFO) around each node it launches.
_STARTED = "Component %s is running."
_FINISHED = "Component %s is finished."
TRAINER_LOGGER = features.TRAINER_PROGRESS_LOGGER  # modules/trainer.py logs each epoch here
FAILURE_TAIL_LINES = 12
_EXPLAINS = re.compile(r"^(ERROR|CRITICAL|Traceback|E\d{4})|Error\b|Exception\b|failed")


def new_run_id() -> str:
    """A pipeline run id in TFX's own format (the local runner's: an ISO timestamp)."""
    return datetime.datetime.now().isoformat()


def log_path(workdir: str, run_id: str) -> str:
    return os.path.join(workdir, LOG_DIR, f"{run_id}.log")


@dataclass
class Terminal:
    """Where MaskTFX's own lines go; each is copied into the log as well."""

    out: TextIO
    err: TextIO
    log: TextIO | None = None
    log_file: str | None = None

    def say(self, text: str, error: bool = False) -> None:
        stream = self.err if error else self.out
        stream.write(text + "\n")
        stream.flush()
        if self.log is not None:
            self.log.write("".join(f"[masktfx] {line}\n" for line in text.splitlines()))
            self.log.flush()

    def error_lines(self, lines: int = FAILURE_TAIL_LINES) -> list[str]:
        """The log's last lines that speak of an error (none if no line does)."""
        if not self.log_file:
            return []
        with open(self.log_file, encoding="utf-8", errors="replace") as handle:
            text = [line.rstrip("\n") for line in handle
                    if line.strip() and not line.startswith("[masktfx] ")][-400:]
        explaining = [line for line in text if _EXPLAINS.search(line)]
        return explaining[-lines:]


def _kept(stream: TextIO, fd: int) -> tuple[TextIO, bool]:
    """A stream that keeps writing where `stream` writes once fd `fd` points at the log: a new
    one on a copy of the fd when `stream` writes to it, else `stream` itself (pytest's)."""
    try:
        if stream.fileno() == fd:
            return os.fdopen(os.dup(fd), "w", buffering=1,
                             encoding=getattr(stream, "encoding", None) or "utf-8",
                             errors="replace"), True
    except (AttributeError, OSError, ValueError):
        pass
    return stream, False


@contextlib.contextmanager
def library_output_to(path: str | None) -> Iterator[Terminal]:
    """Send everything written to fds 1 and 2, sys.stdout and sys.stderr to the log at `path`
    for the duration, and give MaskTFX's own lines a Terminal. `path` None (`--verbose`): nothing
    is redirected."""
    if path is None:
        yield Terminal(sys.stdout, sys.stderr)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    out, own_out = _kept(sys.stdout, 1)
    err, own_err = _kept(sys.stderr, 2)
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    saved = os.dup(1), os.dup(2)
    streams = sys.stdout, sys.stderr
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    # absl's handler keeps the stderr it found when it was made (a test runner's, say)
    absl_handler = _absl_stream_handler()
    absl_stream = absl_handler.stream if absl_handler else None
    if absl_handler:
        absl_handler.setStream(log)
    try:
        yield Terminal(out, err, log, path)
    finally:
        if absl_handler:
            absl_handler.setStream(absl_stream)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for stream, owned in ((out, own_out), (err, own_err)):
            if owned:
                stream.close()
        log.close()


def _absl_stream_handler() -> logging.StreamHandler | None:
    from absl import logging as absl_logging

    handler = getattr(absl_logging.get_absl_handler(), "python_handler", None)
    return handler if isinstance(handler, logging.StreamHandler) else None


@dataclass
class _Running:
    node: str
    started: float
    epochs: list[dict[str, float]] = field(default_factory=list)


class ComponentProgress(logging.Handler):
    """One line per component start and end, from the local runner's own log records; the
    Trainer's epochs from modules/trainer.py. `state_of(node)` tells COMPLETE from CACHED."""

    def __init__(self, terminal: Terminal, state_of: Callable[[str], str], live: bool = False):
        super().__init__(level=logging.INFO)
        self.terminal = terminal
        self.state_of = state_of
        self.running: _Running | None = None
        self.finished: list[tuple[str, str, float]] = []
        self._live = None
        if live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(_LiveLine(self), console=Console(file=terminal.out),
                              refresh_per_second=4, transient=True, redirect_stdout=False,
                              redirect_stderr=False)

    def __enter__(self) -> ComponentProgress:
        from absl import logging as absl_logging

        # Through absl's own setting, which also holds when something parses absl's flags
        # later on (a plain setLevel was undone during the Trainer).
        self._absl_verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.INFO)
        logging.getLogger(TRAINER_LOGGER).setLevel(logging.INFO)
        for name in ("absl", TRAINER_LOGGER):
            logging.getLogger(name).addHandler(self)
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc_info) -> None:
        from absl import logging as absl_logging

        for name in ("absl", TRAINER_LOGGER):
            logging.getLogger(name).removeHandler(self)
        absl_logging.set_verbosity(self._absl_verbosity)
        if self._live is not None:
            self._live.stop()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.msg == _STARTED and record.args:
                self._start(str(record.args[0]))
            elif record.msg == _FINISHED and record.args:
                self._finish(str(record.args[0]), None)
            elif record.name == TRAINER_LOGGER and isinstance(record.args, dict):
                if self.running is not None:
                    self.running.epochs.append(dict(record.args))
                    self._refresh()
        except Exception:  # noqa: BLE001 - a display problem must never fail the run
            self.handleError(record)

    def failed(self) -> str | None:
        """Marks the running component FAILED (the run raised); returns its name."""
        if self.running is None:
            return None
        node = self.running.node
        self._finish(node, "FAILED")
        return node

    def _line(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, highlight=False, markup=False)
            if self.terminal.log is not None:
                self.terminal.log.write(f"[masktfx] {text}\n")
        else:
            self.terminal.say(text)

    def _start(self, node: str) -> None:
        self.running = _Running(node, time.monotonic())
        if self._live is None:
            self._line(f"  {node} ...")
        self._refresh()

    def _finish(self, node: str, state: str | None) -> None:
        running = self.running if self.running and self.running.node == node else None
        seconds = time.monotonic() - running.started if running else 0.0
        state = state or self.state_of(node)
        detail = _epochs_detail(running.epochs) if running and running.epochs else ""
        self.finished.append((node, state, seconds))
        self.running = None
        self._line(f"  {node} {state} {seconds:.1f} s{detail}")
        self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def status_text(self) -> str:
        """The live line: the running component, its time, the Trainer's last epoch."""
        running = self.running
        if running is None:
            return ""
        text = f"{running.node} ({time.monotonic() - running.started:.0f} s)"
        if running.epochs:
            last = running.epochs[-1]
            text += f"  epoch {int(last['epoch'])}/{int(last['epochs'])}" + "".join(
                f"  {label} {last[name]:.4f}" for name, label in
                (("loss", "loss"), ("val_auc", "validation AUC")) if name in last)
        return text


class _LiveLine:
    """Rendered by rich on every refresh, so the running time moves on its own."""

    def __init__(self, progress: ComponentProgress):
        from rich.spinner import Spinner

        self.progress = progress
        self.spinner = Spinner("dots")

    def __rich__(self):  # noqa: ANN204 - rich's protocol
        text = self.progress.status_text()
        if not text:
            return ""
        self.spinner.update(text=text)
        return self.spinner


def _epochs_detail(epochs: list[dict[str, float]]) -> str:
    scored = [e for e in epochs if "val_auc" in e]
    text = f" ({len(epochs)} epochs"
    if scored:
        best = max(scored, key=lambda e: e["val_auc"])
        text += f", best validation AUC {best['val_auc']:.4f} at epoch {int(best['epoch'])}"
    return text + ")"
