"""Parsing of config values written as text (YAML and CLI flags): below `masktfx.config`, so
the config's own module holds only its fields and their checks."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

# The names a choice field may take.
MASK_MODES = ("crop", "zero", "channel", "none")
NORMALIZATIONS = ("region", "dataset")
MODEL_PRESETS = ("seed", "resnet")
NORM_LAYERS = ("group", "layer", "batch", "none")
AUGMENTATIONS = ("flip", "intensity", "color", "noise", "blur", "scale", "random_convolution",
                 "mixstyle")
RUNNING_MODES = ("multi_processing", "multi_threading", "in_memory")
DISTRIBUTION_STRATEGIES = ("", "mirrored", "multi_worker_mirrored")
IMAGE_FORMATS = ("", "pictures", "rasters")
DRIFT_ACTIONS = ("warn", "stop")
SCORE_FORMATS = ("csv", "parquet", "geojson", "tfrecord")
UNLABELED_TRAINING = ("none", "pseudo_labels", "ranked_pseudo_labels")
TOWER_POOLINGS = ("global", "mask")
# Fields whose value is one of a few names ('': from the data, or none).
CHOICES = {"split_by": ("group", "id"), "mask_mode": MASK_MODES, "normalization": NORMALIZATIONS,
           "image_format": IMAGE_FORMATS, "model_preset": MODEL_PRESETS,
           "norm_layer": NORM_LAYERS, "distribution_strategy": DISTRIBUTION_STRATEGIES,
           "drift_action": DRIFT_ACTIONS, "score_format": SCORE_FORMATS,
           "direct_running_mode": RUNNING_MODES, "unlabeled_training": UNLABELED_TRAINING,
           "tower_pooling": TOWER_POOLINGS}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def parse_threshold_policy(policy: str) -> tuple[str, float | None]:
    """("fixed" | "youden", None) or ("min_sensitivity" | "min_precision", target in (0, 1])."""
    kind, _, target = policy.partition(":")
    if kind in ("fixed", "youden") and not target:
        return kind, None
    if kind in ("min_sensitivity", "min_precision"):
        try:
            value = float(target)
        except ValueError:
            value = -1.0
        if 0.0 < value <= 1.0:
            return kind, value
        raise ValueError(f"{kind} needs a target in (0, 1], as in {kind}:0.9; got {policy!r}")
    raise ValueError(f"must be fixed, youden, min_sensitivity:X or min_precision:X; "
                     f"got {policy!r}")


def coerce_field_value(spec: dataclasses.Field, value: Any, source: str) -> Any:
    """Accept YAML/CLI values of the field's type, with clear errors for the rest."""
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", "")
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "str":
            return str(value)
        if kind in ("list[int]", "list[float]"):
            items = value.replace(",", " ").split() if isinstance(value, str) else value
            if any(isinstance(item, bool) for item in items):
                raise ValueError(value)
            if kind == "list[float]":
                return [float(item) for item in items]
            if any(isinstance(item, float) and not item.is_integer() for item in items):
                raise ValueError(value)
            return [int(item) for item in items]
        if kind.startswith("list"):
            if isinstance(value, str):
                return value.split()
            return [str(item) for item in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: field {spec.name!r} expects {kind}, got {value!r}") from None
    return value


# The environment variable that holds the MySQL / MariaDB password of the run metadata (MLMD),
# or (the `_FILE` one) names a file holding it, such as a mounted Kubernetes Secret: never a flag
# or a field, so it is in no saved config, process list or log.
METADATA_PASSWORD_ENV = "MASKTFX_METADATA_PASSWORD"
METADATA_PASSWORD_FILE_ENV = "MASKTFX_METADATA_PASSWORD_FILE"
DEFAULT_MYSQL_PORT = 3306


def metadata_password() -> str:
    """The run metadata's database password, from the environment ('' when none is set)."""
    path = os.environ.get(METADATA_PASSWORD_FILE_ENV, "")
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{METADATA_PASSWORD_FILE_ENV}={path}: cannot read the password: "
                              f"{exc.strerror or exc}") from None
    return os.environ.get(METADATA_PASSWORD_ENV, "")


@dataclasses.dataclass(frozen=True)
class MetadataLocation:
    """Where the run metadata (MLMD) lives: an SQLite file, or a MySQL / MariaDB database."""

    kind: str  # "sqlite" | "mysql"
    path: str = ""  # sqlite
    host: str = ""
    port: int = DEFAULT_MYSQL_PORT
    database: str = ""
    user: str = ""

    def describe(self) -> str:
        """The location as a user writes it (no password)."""
        if self.kind == "sqlite":
            return self.path
        return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}"


def parse_metadata(text: str, default_path: str) -> MetadataLocation:
    """`sqlite:PATH`, `mysql://USER@HOST[:PORT]/DATABASE`, or "" (SQLite at `default_path`)."""
    from urllib.parse import urlsplit

    text = text.strip()
    if not text:
        return MetadataLocation("sqlite", path=default_path)
    if text.startswith("sqlite:"):
        path = text[len("sqlite:"):]
        if path.startswith("//"):  # sqlite:///abs/path, as SQLAlchemy writes it
            path = path[2:]
        if not path:
            raise ValueError("sqlite: needs a file path, as in sqlite:/var/masktfx/metadata.sqlite")
        return MetadataLocation("sqlite", path=path)
    if not text.startswith("mysql://"):
        raise ValueError(f"must be sqlite:PATH or mysql://USER@HOST:PORT/DATABASE, got {text!r}")
    parts = urlsplit(text)
    if parts.password is not None:
        raise ValueError(f"holds a password; give it in the environment variable "
                         f"{METADATA_PASSWORD_ENV} instead, never in the URI")
    database = parts.path.strip("/")
    try:
        port = parts.port or DEFAULT_MYSQL_PORT
    except ValueError:
        raise ValueError(f"has a port that is not a number: {text!r}") from None
    if not parts.hostname or not parts.username or not database or "/" in database:
        raise ValueError(f"must be mysql://USER@HOST:PORT/DATABASE, got {text!r}")
    return MetadataLocation("mysql", host=parts.hostname, port=port, database=database,
                            user=parts.username)


# Fields a config of an earlier release may still hold, and what to write instead.
REPLACED_FIELDS = {"eval_buckets": "the data is split three ways now; set validation_buckets "
                                   "and test_buckets (train_buckets stays)"}


def coerce_fields(specs: Sequence[dataclasses.Field], values: Mapping[str, Any],
                  source: str) -> dict[str, Any]:
    """`values` of the fields `specs`, each coerced to its field's type; a replaced or unknown
    field is refused, naming `source`."""
    known = {spec.name: spec for spec in specs}
    for name, replacement in REPLACED_FIELDS.items():
        if name in values:
            raise ConfigError(f"{source}: field {name!r} was replaced: {replacement}")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; "
                          f"known fields: {', '.join(sorted(known))}")
    return {name: coerce_field_value(known[name], value, source)
            for name, value in values.items()}


def read_config_file(path: str, saved_run: bool = False) -> dict[str, Any]:
    """The field: value mapping of a YAML config file; with `saved_run` fields since replaced
    are dropped rather than refused."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value at the top level")
    if saved_run:
        values = {k: v for k, v in values.items() if k not in REPLACED_FIELDS}
    return values


def write_config_file(path: str, values: Mapping[str, Any]) -> None:
    """`values` as YAML at `path`, written whole or not at all."""
    import yaml

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        yaml.safe_dump(dict(values), handle, sort_keys=True)
    os.replace(partial, path)


# Object stores TF Serving reads model base paths from (tensorflow_serving's file systems).
OBJECT_STORE_SCHEMES = ("gs", "s3")


def uri_scheme(path: str) -> str:
    """'gs' for gs://bucket/models, '' for a local or mounted path."""
    scheme, separator, _ = path.partition("://")
    return scheme.lower() if separator else ""


def model_channels(stored_channels: int) -> int:
    """The `channels` that 0 stands for, given the channels images are stored with: gray (and
    gray with alpha) stays 1, colour (RGB, RGBA with alpha dropped, palette) is 3."""
    return 1 if stored_channels <= 2 else 3
