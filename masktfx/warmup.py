"""TF Serving's SavedModel warmup: requests stored with a version and replayed by the server
before it reports the version AVAILABLE, so the first real requests after a switch do not pay
for graph initialization. The file is `assets.extra/tf_serving_warmup_requests`, a TFRecord of
PredictionLog protos (TF Serving's SavedModel warmup guide); the Pusher builds it from real eval
regions, for both signatures.
"""

from __future__ import annotations

import itertools
import os

from masktfx import features

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
DEFAULT_WARMUP_REGIONS = 4


def eval_regions(examples_uri: str, count: int) -> list[bytes]:
    """The first `count` serialized raw examples of an Examples artifact's test split."""
    from masktfx.records import split_records

    return list(itertools.islice(split_records([examples_uri], [features.TEST_SPLIT]),
                                 max(count, 0)))


def warmup_requests(serialized: list[bytes], model_name: str) -> list:
    """PredictionLogs for `serving_default` (the examples as they are) and `predict_raw` (their
    images and masks as tensors), one request of all the regions each."""
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    def log(signature: str, inputs: dict[str, np.ndarray]):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        return prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request))

    if not serialized:
        return []
    parsed = [example_pb2.Example.FromString(record).features.feature for record in serialized]
    images = np.array([list(f[features.IMAGES_KEY].bytes_list.value) for f in parsed],
                      dtype=object)
    masks = np.array([list(f[features.MASKS_KEY].bytes_list.value) for f in parsed],
                     dtype=object)
    return [log(features.SERVING_SIGNATURE,
                {features.EXAMPLES_INPUT: np.array(serialized, dtype=object)}),
            log(features.RAW_SIGNATURE, {features.IMAGES_KEY: images, features.MASKS_KEY: masks})]


def warmup_requests_from(examples_uri: str, count: int, model_name: str) -> list:
    """The warmup requests of `count` eval regions of an Examples artifact (see
    warmup_requests): what the Pusher stores and the serving check sends."""
    return warmup_requests(eval_regions(examples_uri, count), model_name)


def encode_warmup(logs: list) -> bytes:
    """The warmup file's bytes: PredictionLogs as uncompressed TFRecords."""
    import io

    from masktfx.records import write_tfrecord

    buffer = io.BytesIO()
    for entry in logs:
        write_tfrecord(buffer, entry.SerializeToString())
    return buffer.getvalue()


def read_warmup(saved_model_dir: str) -> list:
    """The PredictionLogs stored with a version (none when it has no warmup file)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(saved_model_dir, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return []
    return [prediction_log_pb2.PredictionLog.FromString(bytes(record.numpy()))
            for record in tf.data.TFRecordDataset(path)]
