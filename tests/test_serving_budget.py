"""`masktfx serve`'s memory: requests in flight share one byte budget past which they wait and
are refused, large bodies wait for a slot while small requests and status calls do not, and
memory a large request freed goes back to the system. Real HTTP and gRPC calls on loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc
from test_serving_limits import IMAGE, MASK, _grpc_request, _post, _raw, _raw_http

from masktfx.serving.models import ModelManager, wait_for_version
from masktfx.serving.server import ModelServer


def test_requests_in_flight_share_one_budget_past_which_they_wait_then_get_503(tiny_model,
                                                                               tmp_path):
    """A client that declares a body of almost the whole budget and stalls holds it: other
    requests, REST or gRPC, wait and are refused with the flag to raise; a request larger than
    the whole budget is refused at once; once the stalled client is dropped, all is answered."""
    from masktfx.serving.budget import BudgetExceeded, InflightBudget

    budget_bytes = 2**20
    shutil.copytree(tiny_model[0], tmp_path / "tiny" / "1")
    manager = ModelManager("tiny", str(tmp_path / "tiny"), poll_seconds=0.2)
    served = ModelServer({"tiny": manager}, rest_port=0, grpc_port=0,
                         max_inflight_bytes=budget_bytes, read_timeout_s=5.0)
    served.start()
    try:
        wait_for_version(manager)
        assert _post(served, _raw(1))[0] == 200
        stalled = socket.create_connection(("127.0.0.1", served.rest_port), timeout=10)
        stalled.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
                        + str(budget_bytes - 256).encode() + b"\r\n\r\n{")
        stalled_at = time.monotonic()
        time.sleep(0.3)
        started = time.monotonic()
        status, payload = _post(served, _raw(1))
        assert status == 503 and "taken by other requests" in payload["error"]
        assert "--max-inflight-mb" in payload["error"]
        assert 0.9 <= time.monotonic() - started < 1.9  # waited for room, then refused
        images = tf.make_tensor_proto(np.array([[IMAGE]], dtype=object))
        masks = tf.make_tensor_proto(np.array([[MASK]], dtype=object))
        grpc_stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}"))
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as error:
            grpc_stub.Predict(_grpc_request(images, masks), timeout=30)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # it waited for room to receive its message, as REST does, before it was refused
        assert 0.9 <= time.monotonic() - started < 1.9
        assert "taken by other requests" in error.value.details()
        time.sleep(max(0.0, stalled_at + 5.5 - time.monotonic()))  # the read timeout drops
        # the stalled client and its reservation
        assert served.budget.held == 0
        assert _post(served, _raw(1))[0] == 200
        assert len(grpc_stub.Predict(_grpc_request(images, masks), timeout=30).outputs) > 0
        # a body that could never fit is refused before it is read
        status, text = _raw_http(served, b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: " + str(budget_bytes + 1).encode()
                                 + b"\r\n\r\n")
        assert status == 503 and "more than the server's budget" in text
        stalled.close()
    finally:
        served.stop()
    # the budget itself: a waiting reservation gets the room a finished one gives back
    budget = InflightBudget(100, wait_s=5.0)
    order: list[str] = []
    with budget.reserve() as first:
        first.grow(80, "first")

        def second() -> None:
            with budget.reserve() as held:
                held.grow(40, "second")
                order.append("second")

        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.2)
        order.append("first done")
    waiter.join(timeout=5)
    assert order == ["first done", "second"] and budget.held == 0
    with pytest.raises(BudgetExceeded), budget.reserve() as held:
        held.grow(101, "too much")
    assert budget.held == 0
    # resized to what a message came to: what is over is given back, more is taken only if
    # there is room now (what it counts has arrived)
    with budget.reserve() as held:
        held.grow(80, "receipt")
        held.resize(30, "message")
        assert budget.held == held.bytes == 30
        with budget.reserve() as other:
            other.grow(60, "other")
            started = time.monotonic()
            with pytest.raises(BudgetExceeded):
                held.resize(50, "message")
            assert time.monotonic() - started < 0.5 and budget.held == 90
    assert budget.held == 0


def test_large_rest_bodies_take_a_slot_while_small_requests_and_status_calls_never_wait(
        tiny_model, tmp_path):
    """With every slot taken, a body over 1 MiB waits, once read, until a slot is free; a small
    predict and the status call are answered meanwhile."""
    from masktfx.serving.limits import SMALL_BODY_BYTES

    shutil.copytree(tiny_model[0], tmp_path / "tiny" / "1")
    manager = ModelManager("tiny", str(tmp_path / "tiny"), poll_seconds=0.2)
    served = ModelServer({"tiny": manager}, rest_port=0, grpc_port=0, rest_threads=1)
    served.start()
    try:
        wait_for_version(manager)
        # one region, padded with JSON whitespace past the small-body size
        large = json.dumps(_raw(1)).encode() + b" " * SMALL_BODY_BYTES
        answered: list[int] = []

        def post_large() -> None:
            answered.append(requests.post(
                f"http://127.0.0.1:{served.rest_port}/v1/models/tiny:predict", data=large,
                headers={"Content-Type": "application/json"}, timeout=60).status_code)

        slots = served.rest.RequestHandlerClass.answering
        slots.acquire()  # the one slot, as a large request being answered holds it
        try:
            waiting = threading.Thread(target=post_large)
            waiting.start()
            assert _post(served, _raw(1))[0] == 200
            assert requests.get(f"http://127.0.0.1:{served.rest_port}/v1/models/tiny",
                                timeout=10).status_code == 200
            waiting.join(timeout=2.0)
            assert waiting.is_alive() and answered == []  # read, and waiting for the slot
        finally:
            slots.release()
        waiting.join(timeout=30)
        assert answered == [200]
    finally:
        served.stop()


def _own_rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_large_reservation_given_back_returns_what_malloc_holds_free_to_the_system():
    """Memory freed by a request stays with malloc (and in the process's RSS) until it is given
    back: closing a reservation of RETURN_FREED_AFTER_BYTES or more gives it back, a smaller
    one does not."""
    import ctypes

    from masktfx.serving.budget import RETURN_FREED_AFTER_BYTES, InflightBudget

    if not hasattr(ctypes.CDLL(None), "malloc_trim"):
        pytest.skip("malloc_trim is glibc's")
    budget = InflightBudget(2**30, wait_s=0.0)
    blocks = [bytes(60_000) for _ in range(5000)]  # on malloc's heap: under its mmap threshold
    kept = blocks[::50]  # blocks still alive between the freed ones keep the heap from shrinking
    freed = 60_000 * (len(blocks) - len(kept))
    del blocks
    before = _own_rss()
    with budget.reserve() as held:
        held.grow(RETURN_FREED_AFTER_BYTES - 1, "a small request")
    assert before - _own_rss() < freed // 10
    with budget.reserve() as held:
        held.grow(RETURN_FREED_AFTER_BYTES, "a large request")
    assert before - _own_rss() > freed // 2
    assert len(kept) == 100
