"""`masktfx serve`'s gRPC side: TF Serving's PredictionService and ModelService over the shared
model managers, and the checks a TensorProto gets before anything is allocated for it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from masktfx.serving.budget import (
    BYTES_PER_VALUE,
    InflightBudget,
    Reservation,
    grpc_message_cost,
    grpc_receipt_cost,
)
from masktfx.serving.metrics import ServingMetrics
from masktfx.serving.models import (
    ModelManager,
    ServingError,
    check_input_names,
    check_region_count,
)

log = logging.getLogger("masktfx.serve")

# The TensorProto fields that carry typed values, and how many of their entries make one value.
_VALUE_FIELDS = {"string_val": 1, "float_val": 1, "double_val": 1, "int_val": 1,
                 "int64_val": 1, "bool_val": 1, "half_val": 1, "uint32_val": 1,
                 "uint64_val": 1, "scomplex_val": 2, "dcomplex_val": 2}


def _dtype_size(dtype: int) -> int:
    """Bytes per value of a TensorProto's dtype; 0 for one TensorFlow does not know."""
    from tensorflow.python.framework import dtypes

    try:
        return dtypes.as_dtype(dtype).size
    except (TypeError, ValueError):
        return 0


def tensor_proto_values(proto: Any) -> int:
    """How many values a TensorProto holds, however it carries them: packed bytes
    (`tensor_content`) or a typed `*_val` field."""
    if proto.tensor_content:
        size = _dtype_size(proto.dtype)
        if not size or len(proto.tensor_content) % size:
            raise ServingError("INVALID_ARGUMENT", "tensor_content does not hold whole values "
                                                   "of the tensor's dtype")
        return len(proto.tensor_content) // size
    return sum(len(getattr(proto, field)) // per_value
               for field, per_value in _VALUE_FIELDS.items())


def check_tensor_proto(name: str, proto: Any, max_regions: int, allowed: Any = None,
                       max_bytes: int | None = None) -> int:
    """A TensorProto's declared shape, checked before numpy allocates it: against the
    signature's shape `allowed` (rank and every fixed dimension), the region limit on its first
    dimension, exactly as many values as it declares, whatever its dtype and however it
    carries them (tf.make_ndarray would otherwise fill any shape a client declares, from a few
    values or from none: a 56-byte request could make it allocate gigabytes), and, for
    fixed-size dtypes, the array's size against `max_bytes`. Returns the number of values."""
    dims = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in dims):
        raise ServingError("INVALID_ARGUMENT", f"input {name!r}: negative dimension in {dims}")
    if allowed is not None and allowed.rank is not None:
        expected = [None if size is None else int(size) for size in allowed.as_list()]
        if len(dims) != len(expected) or any(
                size is not None and size != dim for size, dim in zip(expected, dims)):
            shown = ["any" if size is None else size for size in expected]
            raise ServingError("INVALID_ARGUMENT", f"input {name!r} declares shape {dims}; "
                                                   f"the signature takes {shown}")
    if dims:
        check_region_count(dims[0], max_regions, f"input {name!r}")
    declared = int(np.prod(dims, dtype=np.int64)) if dims else 1
    given = tensor_proto_values(proto)
    if given != declared:
        raise ServingError("INVALID_ARGUMENT", f"input {name!r} declares shape {dims} "
                                               f"({declared} values) but holds {given}")
    from tensorflow.core.framework import types_pb2

    # strings' size is their bytes, already in the message; an unknown dtype (0) make_ndarray
    # refuses
    size = 0 if proto.dtype == types_pb2.DT_STRING else _dtype_size(proto.dtype)
    if max_bytes is not None and declared * size > max_bytes:
        raise ServingError("RESOURCE_EXHAUSTED",
                           f"input {name!r} of shape {dims} is {declared * size / 2**20:.1f} "
                           f"MiB as an array; the limit is {max_bytes / 2**20:g} MiB per "
                           "request (masktfx serve --max-decoded-mb)")
    return declared


def prediction_service_handler(servicer: Any) -> Any:
    """TF Serving's PredictionService as the generated code registers it, but for Predict: its
    handler reads its one message itself (see `PredictionService.Predict`), which on the wire is
    the same unary call."""
    import grpc
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        inference_pb2,
        predict_pb2,
        regression_pb2,
    )

    def method(behavior, request_type, response_type):
        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString)

    return grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
        "Classify": method(servicer.Classify, classification_pb2.ClassificationRequest,
                           classification_pb2.ClassificationResponse),
        "Regress": method(servicer.Regress, regression_pb2.RegressionRequest,
                          regression_pb2.RegressionResponse),
        "Predict": grpc.stream_unary_rpc_method_handler(
            servicer.Predict, response_serializer=predict_pb2.PredictResponse.SerializeToString),
        "MultiInference": method(servicer.MultiInference, inference_pb2.MultiInferenceRequest,
                                 inference_pb2.MultiInferenceResponse),
        "GetModelMetadata": method(servicer.GetModelMetadata,
                                   get_model_metadata_pb2.GetModelMetadataRequest,
                                   get_model_metadata_pb2.GetModelMetadataResponse),
    })


def grpc_services(models: dict[str, ModelManager], metrics: ServingMetrics,
                  budget: InflightBudget, max_message_bytes: int):
    import grpc
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    codes = {"INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
             "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
             "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
             "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
             "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
             "UNIMPLEMENTED": grpc.StatusCode.UNIMPLEMENTED,
             "INTERNAL": grpc.StatusCode.INTERNAL}

    def lookup(spec, context) -> tuple[ModelManager, int | None]:
        manager = models.get(spec.name)
        if manager is None:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({spec.name})")
        version = spec.version.value if spec.HasField("version") else None
        return manager, version

    def guarded(method):
        def wrapper(self, request, context):
            try:
                return method(self, request, context)
            except ServingError as error:
                context.abort(codes.get(error.code, grpc.StatusCode.UNKNOWN), error.message)
        return wrapper

    receipt = min(grpc_receipt_cost(max_message_bytes), budget.limit_bytes)

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, messages: Iterator[bytes], context):  # noqa: N802 (gRPC naming)
            """The request's message is read here, not by gRPC before the handler runs: until
            it is read, gRPC holds no more of it than its flow-control window, so the largest
            message's receipt is reserved first (waiting for room, as REST does), then what
            this one comes to is kept."""
            with metrics.observe("grpc") as labels, budget.reserve() as held:
                try:
                    held.grow(receipt, "a request message as it arrives")
                    message = next(messages, None)
                    if message is None:
                        raise ServingError("INVALID_ARGUMENT", "Predict takes one request")
                    held.resize(grpc_message_cost(len(message)), "the request")
                    try:
                        request = predict_pb2.PredictRequest.FromString(message)
                    except DecodeError:
                        raise ServingError("INVALID_ARGUMENT",
                                           "the message is not a PredictRequest") from None
                    del message  # what is held past here is the parsed request
                    response = self._predict(request, context, labels, held)
                    del request
                    return response
                except ServingError as error:
                    labels["code"] = error.code
                    context.abort(codes.get(error.code, grpc.StatusCode.UNKNOWN), error.message)
                except grpc.RpcError:  # the client left while its message arrived
                    labels["code"] = "CANCELLED"
                    log.info("gRPC client %s disconnected before its answer", context.peer())
                    return None
                except Exception:
                    labels["code"] = "UNKNOWN"  # gRPC answers UNKNOWN
                    raise

        def _predict(self, request, context, labels, held: Reservation):
            manager, version = lookup(request.model_spec, context)
            labels["model"] = manager.name
            resolved = manager.signature(request.model_spec.signature_name, version,
                                         request.model_spec.version_label)
            labels.update(version=str(resolved[0].version), signature=resolved[1])
            specs = resolved[2].structured_input_signature[1]
            check_input_names(request.inputs, specs)
            values = sum(check_tensor_proto(name, proto, manager.max_regions, specs[name].shape,
                                            manager.max_decoded_bytes)
                         for name, proto in request.inputs.items())
            held.grow(BYTES_PER_VALUE * values, "the request's values")
            inputs = {}
            for name, proto in request.inputs.items():
                try:
                    inputs[name] = tf.make_ndarray(proto)
                except Exception as exc:
                    raise ServingError("INVALID_ARGUMENT", f"input {name!r}: {exc}") from None
            served, signature, outputs = manager.call(resolved, inputs, held)
            metrics.count_regions(labels, outputs)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = manager.name
            response.model_spec.version.value = served
            response.model_spec.signature_name = signature
            for name, value in outputs.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response

        @guarded
        def GetModelMetadata(self, request, context):  # noqa: N802
            manager, version = lookup(request.model_spec, context)
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError("INVALID_ARGUMENT",
                                   "metadata_field must be [\"signature_def\"]")
            servable, _ = manager.servable(version, request.model_spec.version_label)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, proto in servable.signature_defs.items():
                if isinstance(proto, meta_graph_pb2.SignatureDef):
                    signature_map.signature_def[name].CopyFrom(proto)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = manager.name
            response.model_spec.version.value = servable.version
            response.metadata["signature_def"].Pack(signature_map)
            return response

        def Classify(self, request, context):  # noqa: N802
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Classify is not supported; use Predict")

        def Regress(self, request, context):  # noqa: N802
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported; use Predict")

        def MultiInference(self, request, context):  # noqa: N802
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported")

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        @guarded
        def GetModelStatus(self, request, context):  # noqa: N802
            manager, version = lookup(request.model_spec, context)
            if request.model_spec.version_label:
                version = manager.servable(label=request.model_spec.version_label)[0].version
            response = get_model_status_pb2.GetModelStatusResponse()
            states = get_model_status_pb2.ModelVersionStatus.State
            for servable in manager.status(version):
                entry = response.model_version_status.add()
                entry.version = servable.version
                entry.state = states.Value(servable.state)
                entry.status.error_message = servable.error
            return response

        def HandleReloadConfigRequest(self, request, context):  # noqa: N802
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "model config reload is not supported")

    return prediction_service_handler(PredictionService()), ModelService(), \
        model_service_pb2_grpc
