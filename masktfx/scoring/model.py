"""The pushed version `masktfx score` runs: which folder and version, what it takes and serves
(read without loading it), and RunInference's handler for it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from apache_beam.ml.inference.base import ModelHandler

from masktfx import features
from masktfx.model_config import (
    CONFIG_FILE,
    ModelConfigError,
    read_config,
    version_folders,
)
from masktfx.tf_errors import op_message

# Regions per RunInference batch: the signature decodes every image of a batch at once.
MAX_BATCH = 128


class ScoreError(RuntimeError):
    """The job cannot run at all; nothing was written."""


class ModelRefusal(ValueError):
    """The model failed on a region; the message is TensorFlow's, as a user should read it."""


def resolve_model(model: str, version: int | None = None, label: str | None = None,
                  model_name: str = "", config_file: str = "") -> tuple[str, str, int]:
    """(model name, version folder, version) of `model`: a model's base path (numbered version
    folders) or a serving folder holding one model (or `model_name`). The newest version, unless
    `version` is given or `label` names one in the serving folder's models.config."""
    if "://" in model:
        raise ScoreError(f"{model}: give a local or mounted folder; version folders on an "
                         "object store are not listed here")
    model = os.path.abspath(model)
    if not os.path.isdir(model):
        raise ScoreError(f"{model}: no such model folder")
    base, serving_dir = model, os.path.dirname(model)
    if not version_folders(model):
        names = [name for name in sorted(os.listdir(model))
                 if version_folders(os.path.join(model, name))]
        if model_name:
            names = [name for name in names if name == model_name]
        if len(names) != 1:
            raise ScoreError(f"{model}: holds no numbered SavedModel version" if not names else
                             f"{model}: holds models {', '.join(names)}; name one (--model-name)")
        base, serving_dir = os.path.join(model, names[0]), model
    name = os.path.basename(base)
    versions = version_folders(base)
    if label:
        config_path = config_file or os.path.join(serving_dir, CONFIG_FILE)
        try:
            served = read_config(config_path).get(name)
        except ModelConfigError as exc:
            raise ScoreError(str(exc)) from None
        if served is None or label not in served.labels:
            raise ScoreError(f"{config_path}: model {name!r} has no version labelled {label!r}")
        version = served.labels[label]
    if version is None:
        version = max(versions)
    if version not in versions:
        raise ScoreError(f"{base}: no version {version} (versions: "
                         f"{', '.join(map(str, sorted(versions)))})")
    return name, versions[version], version


@dataclass(frozen=True)
class ModelInputs:
    """What a version serves and takes, read from saved_model.pb without loading the model."""

    outputs: dict[str, str]  # serving_default's outputs: name -> dtype ('float32', ...)
    views: int  # images per region
    masks: int  # masks per region (1: shared by the views)

    @classmethod
    def read(cls, saved_model_dir: str) -> ModelInputs:
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as handle:
            proto.ParseFromString(handle.read())
        signatures = proto.meta_graphs[0].signature_def
        if features.SERVING_SIGNATURE not in signatures or \
                features.RAW_SIGNATURE not in signatures:
            raise ScoreError(f"{saved_model_dir}: not a MaskTFX model (no "
                             f"{features.SERVING_SIGNATURE} and {features.RAW_SIGNATURE} "
                             "signatures)")
        raw = signatures[features.RAW_SIGNATURE].inputs
        return cls({name: tf.dtypes.as_dtype(spec.dtype).name for name, spec in
                    sorted(signatures[features.SERVING_SIGNATURE].outputs.items())},
                   raw[features.IMAGES_KEY].tensor_shape.dim[1].size,
                   raw[features.MASKS_KEY].tensor_shape.dim[1].size)

    def mismatch(self, views: int, masks: int) -> str:
        """Why regions of `views` images and `masks` masks are not this model's ('' if they
        are)."""
        if views == self.views and masks == self.masks:
            return ""
        shared = "a shared mask" if self.masks == 1 else f"{self.masks} masks"
        return (f"{views} image(s) and {masks} mask(s) per region; the model takes "
                f"{self.views} image(s) and {shared}")


class _LoadedSignature:
    """The signature with the loaded object that owns its variables (which must stay alive)."""

    def __init__(self, path: str):
        import tensorflow as tf

        self.module = tf.saved_model.load(path)
        self.signature = self.module.signatures[features.SERVING_SIGNATURE]


class SavedModelHandler(ModelHandler[bytes, dict, _LoadedSignature]):
    """RunInference's handler for a pushed version: serialized tf.Examples in, each region's
    outputs of `serving_default` (name -> value) out."""

    def __init__(self, path: str, max_batch_size: int = MAX_BATCH):
        super().__init__()
        self._path = path
        self._max_batch_size = max_batch_size

    def load_model(self) -> _LoadedSignature:
        return _LoadedSignature(self._path)

    def run_inference(self, batch: Sequence[bytes], model: _LoadedSignature,
                      inference_args: dict | None = None) -> Iterable[dict]:
        import tensorflow as tf

        try:
            outputs = model.signature(**{features.EXAMPLES_INPUT: tf.constant(list(batch))})
        except tf.errors.OpError as exc:
            raise ModelRefusal(op_message(exc)) from None
        arrays = {name: value.numpy() for name, value in outputs.items()}
        return [{name: values[index] for name, values in arrays.items()}
                for index in range(len(batch))]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": self._max_batch_size, "max_batch_size": self._max_batch_size}

    def share_model_across_processes(self) -> bool:
        return False
