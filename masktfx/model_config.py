"""TF Serving's model config file: which versions of a model are served, and under which labels.

`masktfx promote` and `masktfx rollback` write it; TensorFlow Serving reads it with
`--model_config_file` (and re-reads it every `--model_config_file_poll_wait_seconds`), and so does
`masktfx serve --model-config-file`. A model with labels is served with the `specific` version
policy: its stable version and, beside it until promoted, its canary. Without a config file, or
for a model the file does not list, the newest version is served (TF Serving's default).

The stable versions each model has had are kept beside the file (`<file>.history.json`), so
`rollback` knows where to go back to; TF Serving ignores that file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf import text_format

CONFIG_FILE = "models.config"  # in the serving dir, beside the models' folders
LABELS = ("stable", "canary")


class ModelConfigError(ValueError):
    """The config file cannot be read, or a change to it cannot be made; the message says why."""


@dataclass(frozen=True)
class ServedModel:
    """One model of the config file."""

    name: str
    base_path: str
    versions: tuple[int, ...] = ()  # the `specific` versions; () serves the newest (latest)
    labels: dict[str, int] = field(default_factory=dict)

    def label_of(self, version: int) -> list[str]:
        return sorted(label for label, labelled in self.labels.items() if labelled == version)


def version_folders(base_path: str) -> dict[int, str]:
    """Numbered folders holding a complete SavedModel (saved_model.pb present)."""
    if not os.path.isdir(base_path):
        return {}
    found = {}
    for name in os.listdir(base_path):
        path = os.path.join(base_path, name)
        if name.isdigit() and os.path.exists(os.path.join(path, "saved_model.pb")):
            found[int(name)] = path
    return found


def _proto_module():
    # tensorflow-serving-api's protos; importing them loads no TensorFlow runtime
    from tensorflow_serving.config import model_server_config_pb2

    return model_server_config_pb2


def read_config(path: str) -> dict[str, ServedModel]:
    """The models the file lists, by name; {} when there is no file."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ModelConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    config = _proto_module().ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"{path}: not a TF Serving model config: {exc}") from None
    models = {}
    for entry in config.model_config_list.config:
        policy = entry.model_version_policy
        versions = tuple(sorted(policy.specific.versions)) if policy.HasField("specific") else ()
        labels = dict(entry.version_labels)
        unserved = sorted(set(labels.values()) - set(versions)) if versions else []
        if unserved:
            raise ModelConfigError(f"{path}: model {entry.name!r} labels versions "
                                   f"{unserved} that its specific policy does not serve")
        models[entry.name] = ServedModel(entry.name, entry.base_path, versions, labels)
    return models


def _write_atomically(path: str, text: str) -> None:
    """Readers (TF Serving polls the file) see the old file or the new one, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_config(path: str, models: dict[str, ServedModel]) -> None:
    module = _proto_module()
    config = module.ModelServerConfig()
    for model in sorted(models.values(), key=lambda m: m.name):
        entry = config.model_config_list.config.add()
        entry.name = model.name
        entry.base_path = model.base_path
        entry.model_platform = "tensorflow"
        if model.versions:
            entry.model_version_policy.specific.versions.extend(model.versions)
        else:
            entry.model_version_policy.latest.num_versions = 1
        for label, version in sorted(model.labels.items()):
            entry.version_labels[label] = version
    _write_atomically(path, text_format.MessageToString(config))


def _history_path(path: str) -> str:
    return f"{path}.history.json"


def _read_history(path: str) -> dict[str, list[int]]:
    try:
        with open(_history_path(path), encoding="utf-8") as handle:
            history = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelConfigError(f"{_history_path(path)}: cannot read: {exc}") from None
    return {name: [int(v) for v in versions] for name, versions in history.items()}


def _write_history(path: str, history: dict[str, list[int]]) -> None:
    _write_atomically(_history_path(path), json.dumps(history, indent=1, sort_keys=True))


def _load_before_labelling(path: str, models: dict[str, ServedModel], current: ServedModel,
                           version: int, wait_until_loaded: Callable[[int], None]) -> None:
    """The first of the two writes: `version` served beside what is served now, the labels as
    they are; then the wait for the server to load it."""
    first_step = dict(models)
    first_step[current.name] = ServedModel(
        current.name, current.base_path,
        tuple(sorted({version, *current.versions, *current.labels.values()})),
        dict(current.labels))
    write_config(path, first_step)
    wait_until_loaded(version)


def promote(path: str, name: str, base_path: str, version: int, label: str,
            wait_until_loaded: Callable[[int], None] | None = None) -> ServedModel:
    """Serve `version` as `label`. A canary is served beside stable; promoting it to stable
    retires the old stable (and the canary label). The first canary of a model served without
    labels keeps the newest version below it as stable.

    TF Serving moves a label only to a version it has loaded. With `wait_until_loaded`, the file
    is written twice: first with the version added and the labels as they were, then, once
    `wait_until_loaded(version)` returns, with the labels moved."""
    if label not in LABELS:
        raise ModelConfigError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    on_disk = version_folders(base_path)
    if version not in on_disk:
        raise ModelConfigError(f"version {version} is not a complete version in {base_path}; "
                               f"there: {', '.join(map(str, sorted(on_disk))) or 'none'}")
    models = read_config(path)
    current = models.get(name)
    labels = dict(current.labels) if current else {}
    history = _read_history(path)
    if label == "canary":
        if "stable" not in labels:
            older = [v for v in on_disk if v < version]
            if older:
                labels["stable"] = max(older)
        labels["canary"] = version
        if labels.get("stable") == version:
            raise ModelConfigError(f"version {version} is already stable")
    else:
        labels["stable"] = version
        if labels.get("canary") == version:
            del labels["canary"]
    if "stable" in labels:
        stable_history = history.setdefault(name, [])
        if not stable_history or stable_history[-1] != labels["stable"]:
            stable_history.append(labels["stable"])
    served = ServedModel(name, os.path.abspath(base_path), tuple(sorted(set(labels.values()))),
                         labels)
    if wait_until_loaded is not None:
        _load_before_labelling(path, models, current or ServedModel(name, served.base_path),
                               version, wait_until_loaded)
    models[name] = served
    _write_history(path, history)
    write_config(path, models)
    return served


def rollback(path: str, name: str, wait_until_loaded: Callable[[int], None] | None = None
             ) -> tuple[ServedModel, str]:
    """Drop the canary if there is one; else serve the stable version before this one (with
    `wait_until_loaded`, as in `promote`, loaded before the label moves to it). Returns the new
    entry and what was done, in words."""
    models = read_config(path)
    current = models.get(name)
    if current is None or not current.labels:
        raise ModelConfigError(f"{path}: model {name!r} has no labels to roll back")
    labels = dict(current.labels)
    history = _read_history(path)
    if "canary" in labels:
        dropped = labels.pop("canary")
        done = f"canary {dropped} dropped; stable stays {labels.get('stable', 'unset')}"
    else:
        stable_history = history.get(name, [])
        while stable_history and stable_history[-1] == labels["stable"]:
            stable_history.pop()
        if not stable_history:
            raise ModelConfigError(f"model {name!r} has no stable version before "
                                   f"{labels['stable']} to roll back to")
        previous = stable_history[-1]
        if previous not in version_folders(current.base_path):
            raise ModelConfigError(f"version {previous} is no longer in {current.base_path}")
        done = f"stable {labels['stable']} -> {previous}"
        if wait_until_loaded is not None:
            _load_before_labelling(path, models, current, previous, wait_until_loaded)
        labels["stable"] = previous
    served = ServedModel(name, current.base_path, tuple(sorted(set(labels.values()))), labels)
    models[name] = served
    _write_history(path, history)
    write_config(path, models)
    return served, done
