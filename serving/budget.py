"""The server-wide memory budget of `masktfx serve`: what all requests in flight may hold at
once, across every connection and both APIs.

The per-request limits (body size, regions, decoded bytes) bound one request; without this,
`--max-connections` requests could each hold their whole allowance at the same time. A request
reserves what it will hold before it holds it (its body before the body is read, what parsing
makes of it, what its images decode to before the model runs) and gives it back when it is
answered. Past the budget a request waits up to `wait_s` for others to finish, then is refused
(RESOURCE_EXHAUSTED over gRPC, 503 over REST, with the limit's flag in the message).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from masktfx.serving.models import ServingError

# What parsing a REST body can cost beyond its own bytes, per JSON value separator (`,`, `[`,
# `{`): a list entry, a Python number or string object and its numpy copy.
JSON_BYTES_PER_VALUE = 64


def rest_body_cost(body: bytes) -> int:
    """Bytes a REST body can come to once parsed into arrays: its strings held twice (the JSON
    text and their decoded bytes) and, per value, the objects a JSON number becomes."""
    separators = body.count(b",") + body.count(b"[") + body.count(b"{")
    return 2 * len(body) + JSON_BYTES_PER_VALUE * separators


def grpc_request_cost(byte_size: int, values: int) -> int:
    """Bytes a received PredictRequest comes to once its tensors are arrays: the message and a
    copy of its values, plus the per-value objects of string tensors."""
    return 2 * byte_size + JSON_BYTES_PER_VALUE * values


class BudgetExceeded(ServingError):
    """The budget cannot take a request now; REST answers 503, gRPC RESOURCE_EXHAUSTED."""

    def __init__(self, message: str):
        super().__init__("RESOURCE_EXHAUSTED", message)

    @property
    def http_status(self) -> int:
        return 503


class Reservation:
    """What one request holds of the budget; `grow` adds to it (waiting like `hold`)."""

    def __init__(self, budget: InflightBudget):
        self._budget = budget
        self.bytes = 0

    def grow(self, nbytes: int, what: str) -> None:
        self._budget._take(nbytes, what)
        self.bytes += nbytes


class InflightBudget:
    """At most `limit_bytes` reserved by requests in flight; a reservation past it waits up to
    `wait_s` for room."""

    def __init__(self, limit_bytes: int, wait_s: float):
        self.limit_bytes = limit_bytes
        self.wait_s = wait_s
        self.held = 0
        self._room = threading.Condition()

    def _take(self, nbytes: int, what: str) -> None:
        if nbytes > self.limit_bytes:
            raise BudgetExceeded(
                f"{what} would hold {nbytes / 2**20:.1f} MiB, more than the server's budget "
                f"for all requests in flight ({self.limit_bytes / 2**20:g} MiB, masktfx serve "
                "--max-inflight-mb); send fewer or smaller regions")
        deadline = time.monotonic() + self.wait_s
        with self._room:
            while self.held + nbytes > self.limit_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BudgetExceeded(
                        f"the server's budget for requests in flight ({self.limit_bytes / 2**20:g}"
                        f" MiB, masktfx serve --max-inflight-mb) is taken by other requests; "
                        "retry shortly")
                self._room.wait(remaining)
            self.held += nbytes

    def _give_back(self, nbytes: int) -> None:
        with self._room:
            self.held -= nbytes
            self._room.notify_all()

    @contextmanager
    def reserve(self) -> Iterator[Reservation]:
        """A reservation that starts empty and is given back whole when the block ends."""
        reservation = Reservation(self)
        try:
            yield reservation
        finally:
            if reservation.bytes:
                self._give_back(reservation.bytes)
