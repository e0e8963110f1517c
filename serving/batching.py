"""Server-side batching, as TF Serving's `--enable_batching` does it.

Many small concurrent requests cost the model one call each; merged, they cost one call per batch.
A request waits at most `batch_timeout_micros` for others to join it, and a batch never exceeds
`max_batch_size` rows. Requests join a batch only when they call the same version and signature
and their inputs agree in every dimension but the first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class BatchingParameters:
    """The subset of TF Serving's batching_parameters that applies to one process."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 0
    num_batch_threads: int = 2
    max_enqueued_batches: int = 64

    def validate(self) -> None:
        for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"batching: {name} must be at least 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError("batching: batch_timeout_micros must not be negative, got "
                             f"{self.batch_timeout_micros}")


@dataclass
class _Task:
    key: tuple
    run: Callable[[dict[str, np.ndarray]], Outputs]
    inputs: dict[str, np.ndarray]
    rows: int
    future: Future = field(default_factory=Future)


class QueueFullError(Exception):
    """More rows waiting than `max_batch_size * max_enqueued_batches`: shed load (UNAVAILABLE)."""


class Batcher:
    """Merges concurrent calls of the same function into batched calls on a few threads."""

    def __init__(self, parameters: BatchingParameters):
        parameters.validate()
        self.parameters = parameters
        self._queue: deque[_Task] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        # One thread forms a batch at a time; the others run theirs meanwhile.
        self._collecting = threading.Lock()
        self._closed = False
        self.batches_run = 0
        self.rows_run = 0
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"batch-{i}")
                         for i in range(parameters.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, key: Any, run: Callable[[dict[str, np.ndarray]], Outputs],
               inputs: dict[str, np.ndarray]) -> Outputs:
        """Run `run(inputs)` as part of a batch; blocks until this request's rows are back.

        `key` names what may be merged (model version, signature); `run` takes and returns
        arrays whose first dimension is the batch.
        """
        rows = len(next(iter(inputs.values())))
        if rows > self.parameters.max_batch_size:  # too big to merge: run it alone
            return run(inputs)
        shapes = tuple((name, value.shape[1:], value.dtype.str)
                       for name, value in sorted(inputs.items()))
        task = _Task((key, shapes), run, inputs, rows)
        limit = self.parameters.max_batch_size * self.parameters.max_enqueued_batches
        with self._cond:
            if self._closed:
                raise QueueFullError("the batcher is shut down")
            if self._queued_rows + rows > limit:
                raise QueueFullError(f"the batching queue is full ({self._queued_rows} rows "
                                     "waiting); retry later")
            self._queue.append(task)
            self._queued_rows += rows
            self._cond.notify_all()
        return task.future.result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    # -- the batch threads ---------------------------------------------------------------------
    def _take_batch(self) -> list[_Task] | None:
        """The oldest task plus compatible tasks that arrive before its deadline."""
        timeout = self.parameters.batch_timeout_micros / 1e6
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            first = self._queue.popleft()
            batch, rows = [first], first.rows
            deadline = time.monotonic() + timeout
            while rows < self.parameters.max_batch_size:
                for task in list(self._queue):
                    if task.key == first.key and rows + task.rows <= \
                            self.parameters.max_batch_size:
                        self._queue.remove(task)
                        batch.append(task)
                        rows += task.rows
                remaining = deadline - time.monotonic()
                if rows >= self.parameters.max_batch_size or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            self._queued_rows -= rows
            return batch

    def _work(self) -> None:
        while True:
            with self._collecting:
                batch = self._take_batch()
            if batch is None:
                return
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Task]) -> None:
        if len(batch) == 1:
            self._finish(batch[0])
            return
        names = list(batch[0].inputs)
        merged = {name: np.concatenate([task.inputs[name] for task in batch]) for name in names}
        try:
            outputs = batch[0].run(merged)
        except Exception:
            # One request's input can fail the whole batch: run each alone so only it fails.
            for task in batch:
                self._finish(task)
            return
        self.batches_run += 1
        self.rows_run += sum(task.rows for task in batch)
        start = 0
        for task in batch:
            end = start + task.rows
            task.future.set_result({name: value[start:end] for name, value in outputs.items()})
            start = end

    def _finish(self, task: _Task) -> None:
        try:
            task.future.set_result(task.run(task.inputs))
            self.batches_run += 1
            self.rows_run += task.rows
        except BaseException as exc:  # handed to the waiting request
            task.future.set_exception(exc)
