"""Fuzzing the request decoders of `masktfx serve`: REST bodies from raw bytes to the arrays the
model would get, and gRPC TensorProtos up to `tf.make_ndarray`. Whatever arrives, a decoder
answers with a ServingError (a status code and a message) or with arrays no larger than what
the request carried; nothing else escapes, and nothing is allocated from what a request only
declares. Bounded in time for `make test` (MASKTFX_FUZZ_EXAMPLES raises the number of cases,
and MASKTFX_FUZZ_RANDOM=1 draws new ones instead of the same ones each run)."""

from __future__ import annotations

import base64
import json
import os
import tracemalloc

import numpy as np
import tensorflow as tf
from conftest import patched_jpeg, square_mask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from masktfx import features
from masktfx.images import encode_png
from masktfx.serving.grpc_service import check_tensor_proto, tensor_proto_values
from masktfx.serving.models import ServingError, check_inputs, check_signature_regions
from masktfx.serving.server import parse_json_body, parse_predict_body

FUZZ = settings(max_examples=int(os.environ.get("MASKTFX_FUZZ_EXAMPLES", "150")),
                deadline=None, database=None,
                derandomize=os.environ.get("MASKTFX_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

MAX_REGIONS = 4
MAX_PIXELS = 10**6
MAX_DECODED = 256 * 2**10
RAW_SPECS = {features.IMAGES_KEY: tf.TensorSpec([None, 1], tf.string),
             features.MASKS_KEY: tf.TensorSpec([None, 1], tf.string)}
EXAMPLES_SPECS = {features.EXAMPLES_INPUT: tf.TensorSpec([None], tf.string)}

IMAGE = encode_png(np.random.default_rng(0).integers(0, 200, (20, 20)).astype(np.uint8))
MASK = encode_png(square_mask(20, 5, 15))
# the probes of issue #34 and the earlier hostile-input issues, as seeds for the fuzzer
SEED_FILES = [IMAGE, MASK, patched_jpeg(16, 60000), encode_png(np.zeros((4000, 4000), np.uint8)),
              b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"", b"II*\x00" + b"\0" * 12]


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def decode_rest(raw: bytes, specs: dict) -> dict[str, np.ndarray]:
    """What `masktfx serve` does with a REST body before the model runs."""
    body, _ = parse_json_body(raw)
    inputs, _ = parse_predict_body(body, sorted(specs), MAX_REGIONS)
    arrays = check_inputs(inputs, specs)
    check_signature_regions(arrays, MAX_PIXELS, MAX_DECODED)
    return arrays


def _rest_holds_up(raw: bytes) -> None:
    for specs in (RAW_SPECS, EXAMPLES_SPECS):
        try:
            arrays = decode_rest(raw, specs)
        except ServingError as error:
            assert error.code and error.message
            continue
        for value in arrays.values():  # no value the body did not carry
            assert value.shape[0] <= MAX_REGIONS
            assert sum(len(item) for item in value.flat) <= len(raw)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                      st.floats(allow_nan=False), st.text(max_size=20),
                      st.sampled_from(SEED_FILES).map(_b64),
                      st.binary(max_size=200).map(_b64),
                      st.just({"b64": "not base64!"}))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=6),
    st.dictionaries(st.sampled_from(["b64", features.IMAGES_KEY, features.MASKS_KEY,
                                     features.EXAMPLES_INPUT, "x"]), inner, max_size=3)),
    max_leaves=30)
bodies = st.fixed_dictionaries({}, optional={
    "signature_name": st.one_of(st.text(max_size=12), json_value),
    "instances": json_value, "inputs": json_value})


@FUZZ
@given(bodies)
@example({"inputs": {features.IMAGES_KEY: [[_b64(IMAGE)]], features.MASKS_KEY: [[_b64(MASK)]]}})
@example({"instances": [{features.IMAGES_KEY: [_b64(IMAGE)], features.MASKS_KEY: [_b64(MASK)]}]
          * 4000})
@example({"inputs": {features.IMAGES_KEY: [[_b64(IMAGE)], [_b64(IMAGE), _b64(IMAGE)]],
                     features.MASKS_KEY: [[_b64(MASK)]]}})
@example({"inputs": {features.IMAGES_KEY: [[_b64(SEED_FILES[2])]],
                     features.MASKS_KEY: [[_b64(MASK)]]}})
@example({"inputs": {features.IMAGES_KEY: [[_b64(SEED_FILES[3])]] * 4,
                     features.MASKS_KEY: [[_b64(SEED_FILES[3])]] * 4}})
def test_rest_bodies_are_decoded_or_refused_with_a_status(body):
    _rest_holds_up(json.dumps(body).encode())


@FUZZ
@given(st.binary(max_size=400))
@example(b"[" * 100_000)
@example(b"{\"inputs\": " + b"[" * 5000 + b"]" * 5000 + b"}")
@example(b"{\"inputs\": " + b"[" * 40 + b"]" * 40 + b"}")  # parsed by every json, then refused
@example(b"\xff\xfe{}")
def test_rest_bytes_that_are_not_json_are_refused_with_a_status(raw):
    _rest_holds_up(raw)


DTYPES = [types_pb2.DT_STRING, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT32,
          types_pb2.DT_INT64, types_pb2.DT_UINT8, types_pb2.DT_BOOL, types_pb2.DT_HALF,
          types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128, types_pb2.DT_UINT64,
          types_pb2.DT_VARIANT, types_pb2.DT_RESOURCE, 0, 999]


def _proto(dtype: int, dims: list[int], fields: dict) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in dims]))
    for name, values in fields.items():
        if name == "tensor_content":
            proto.tensor_content = values
        else:
            getattr(proto, name).extend(values)
    return proto


value_fields = st.dictionaries(st.sampled_from([
    "tensor_content", "string_val", "float_val", "double_val", "int_val", "int64_val",
    "bool_val", "half_val", "uint64_val", "scomplex_val", "dcomplex_val"]), st.integers(0, 12),
    max_size=2)


@st.composite
def tensor_protos(draw) -> tensor_pb2.TensorProto:
    dtype = draw(st.sampled_from(DTYPES))
    dims = draw(st.lists(st.one_of(st.integers(-2, 6), st.integers(0, 2**40)), max_size=4))
    fields = {}
    for name, count in draw(value_fields).items():
        if name == "tensor_content":
            fields[name] = draw(st.binary(max_size=count * 8))
        elif name == "string_val":
            fields[name] = draw(st.lists(st.sampled_from(SEED_FILES), max_size=count))
        elif name in ("float_val", "double_val", "scomplex_val", "dcomplex_val"):
            fields[name] = draw(st.lists(st.floats(width=32), max_size=count))
        elif name == "bool_val":
            fields[name] = draw(st.lists(st.booleans(), max_size=count))
        elif name in ("uint64_val",):
            fields[name] = draw(st.lists(st.integers(0, 2**64 - 1), max_size=count))
        elif name == "int64_val":
            fields[name] = draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=count))
        else:
            fields[name] = draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=count))
    return _proto(dtype, dims, fields)


@FUZZ
@given(tensor_protos(), st.sampled_from([None, tf.TensorShape([None, 1]),
                                         tf.TensorShape([None])]))
# the 56-byte probe, and the same lie in each way of carrying values
@example(_proto(types_pb2.DT_STRING, [1, 50_000_000], {}), None)
@example(_proto(types_pb2.DT_STRING, [1, 50_000_000], {}), tf.TensorShape([None, 1]))
@example(_proto(types_pb2.DT_FLOAT, [4, 50_000_000], {"tensor_content": b"\0" * 8}), None)
@example(_proto(types_pb2.DT_INT64, [3, 2**33], {"int64_val": [1]}), None)
@example(_proto(types_pb2.DT_HALF, [2, 2**30], {"half_val": [1, 2]}), None)
@example(_proto(types_pb2.DT_COMPLEX128, [1, 2**31], {"dcomplex_val": [1.0, 2.0]}), None)
@example(_proto(types_pb2.DT_BOOL, [4, 1], {"bool_val": [True]}), None)
def test_tensor_protos_are_checked_before_anything_is_allocated(proto, allowed):
    """A TensorProto that passes the check becomes an array of exactly the values it carries,
    and making it allocates no more than a small multiple of the message; one that fails gets
    a status. make_ndarray may still refuse a dtype numpy has no type for: the server answers
    that INVALID_ARGUMENT too."""
    try:
        declared = check_tensor_proto("x", proto, MAX_REGIONS, allowed, MAX_DECODED)
    except ServingError as error:
        assert error.code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED") and error.message
        return
    carried = tensor_proto_values(proto)
    tracemalloc.start()
    try:
        array = tf.make_ndarray(proto)
    except Exception:  # noqa: BLE001 (any error here becomes INVALID_ARGUMENT in the server)
        array = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # what the message carries, not what it declares, bounds what making the array allocates
    assert peak <= 16 * proto.ByteSize() + 64 * carried + 2**16, (peak, proto.ByteSize())
    assert array is None or array.size == declared == carried
