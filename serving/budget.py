"""The server-wide memory budget of `masktfx serve`: what all requests in flight may hold at
once, across every connection and both APIs.

The per-request limits (body size, regions, decoded bytes) bound one request; without this,
`--max-connections` requests could each hold their whole allowance at the same time. A request
reserves what it will hold before it holds it (its body before the body is read, what parsing
makes of it, what its images decode to before the model runs) and gives it back when it is
answered. Past the budget a request waits up to `wait_s` for others to finish, then gets 503
(REST) or RESOURCE_EXHAUSTED (gRPC); both messages name the limit's flag. A gRPC message's size
is known only once it has arrived whole, so a Predict call reserves the largest message's
receipt before it reads its message, then keeps what the message comes to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from masktfx.serving.limits import return_freed_memory
from masktfx.serving.models import ServingError

# What a request can cost beyond its bytes per value it carries (counted in REST bodies by the
# JSON separators `,`, `[` and `{`): a list entry, a Python object, its numpy copy.
BYTES_PER_VALUE = 64
# A REST body's bytes held at once while it is answered, per byte of it: the body, the JSON
# text's strings, their decoded bytes and the tensor the model gets (bench/serving --budget).
REST_BYTES_PER_BODY_BYTE = 3.5
# What a model call holds per byte its images and masks decode to (their headers' count): the
# decoded pixels and their float copies on the model's grid (bench/serving --budget).
MODEL_BYTES_PER_DECODED_BYTE = 1.25


def rest_body_cost(body: bytes) -> int:
    """Bytes a REST body comes to while it is answered (itself included), before its images
    are decoded: its text and strings held in several forms and, per value, the objects a JSON
    number becomes."""
    separators = body.count(b",") + body.count(b"[") + body.count(b"{")
    return int(REST_BYTES_PER_BODY_BYTE * len(body)) + BYTES_PER_VALUE * separators


# A reservation at least this large, given back, gives malloc's free pages back to the system.
RETURN_FREED_AFTER_BYTES = 16 * 2**20


def grpc_receipt_cost(max_message_bytes: int) -> int:
    """Bytes a gRPC message may hold while it arrives, before its size is known: gRPC's buffers
    of the largest message the server takes, and their copy as Python bytes."""
    return 2 * max_message_bytes


def grpc_message_cost(byte_size: int) -> int:
    """Bytes a received gRPC message comes to while it is answered: its bytes, the parsed
    request, and its values as arrays and as the tensors the model gets."""
    return 4 * byte_size


def model_call_cost(decoded_bytes: int) -> int:
    """Bytes a model call holds for images and masks that decode to `decoded_bytes`."""
    return int(MODEL_BYTES_PER_DECODED_BYTE * decoded_bytes)


class BudgetExceeded(ServingError):
    """The budget cannot take a request now; REST answers 503, gRPC RESOURCE_EXHAUSTED."""

    def __init__(self, message: str):
        super().__init__("RESOURCE_EXHAUSTED", message)

    @property
    def http_status(self) -> int:
        return 503


class Reservation:
    """What one request holds of the budget: `grow` adds to it (waiting for room), `close`
    gives it all back (once; later calls do nothing)."""

    def __init__(self, budget: InflightBudget):
        self._budget = budget
        self.bytes = 0

    def grow(self, nbytes: int, what: str, wait: bool = True) -> None:
        """Reserve `nbytes` more; without `wait`, refuse at once when there is no room."""
        self._budget._take(nbytes, what, self._budget.wait_s if wait else 0.0)
        self.bytes += nbytes

    def resize(self, nbytes: int, what: str) -> None:
        """Hold exactly `nbytes`: give back what is over it, or reserve the rest without
        waiting (what it counts has arrived: it is refused rather than held while it waits)."""
        if nbytes > self.bytes:
            self.grow(nbytes - self.bytes, what, wait=False)
        elif nbytes < self.bytes:
            self._budget._give_back(self.bytes - nbytes)
            self.bytes = nbytes

    def close(self) -> None:
        held, self.bytes = self.bytes, 0
        if held:
            self._budget._give_back(held)
        if held >= RETURN_FREED_AFTER_BYTES:
            return_freed_memory()


class InflightBudget:
    """At most `limit_bytes` reserved by requests in flight; a reservation past it waits up to
    `wait_s` for room."""

    def __init__(self, limit_bytes: int, wait_s: float):
        self.limit_bytes = limit_bytes
        self.wait_s = wait_s
        self.held = 0
        self._room = threading.Condition()

    def _take(self, nbytes: int, what: str, wait_s: float) -> None:
        if nbytes > self.limit_bytes:
            raise BudgetExceeded(
                f"{what} would hold {nbytes / 2**20:.1f} MiB, more than the server's budget "
                f"for all requests in flight ({self.limit_bytes / 2**20:g} MiB, masktfx serve "
                "--max-inflight-mb); send fewer or smaller regions")
        deadline = time.monotonic() + wait_s
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

    def open(self) -> Reservation:
        """An empty reservation; its holder closes it when the request is answered."""
        return Reservation(self)

    @contextmanager
    def reserve(self) -> Iterator[Reservation]:
        """A reservation that starts empty and is given back whole when the block ends."""
        reservation = self.open()
        try:
            yield reservation
        finally:
            reservation.close()
