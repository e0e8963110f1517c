"""Pushes to an object store, on TensorFlow's in-memory `ram://` file system: like gs:// and
s3://, it has no atomic folder rename and no folder times, so the publish order must be what keeps
a half-written version from being loaded."""

from __future__ import annotations

import os
import uuid

import pytest
import tensorflow as tf

from masktfx.components.versioned_pusher import (
    PARTIAL_PREFIX,
    SOURCES_FILE,
    publish,
    remove_store_leftovers,
    store_versions,
)

MODEL_FILES = {"saved_model.pb": b"graph", "fingerprint.pb": b"fp",
               "variables/variables.index": b"index",
               "variables/variables.data-00000-of-00001": b"weights" * 100,
               "assets/vocabulary.txt": b"a\nb\n"}


def _model(tmp_path, name: str, salt: bytes = b"") -> str:
    for relative, payload in MODEL_FILES.items():
        path = tmp_path / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload + salt)
    return str(tmp_path / name)


def _store() -> str:
    return f"ram://bucket-{uuid.uuid4().hex[:8]}/models/masktfx"


def _files(root: str) -> dict[str, bytes]:
    found = {}
    for folder, _, names in tf.io.gfile.walk(root):
        for name in names:
            path = f"{folder.rstrip('/')}/{name}"
            with tf.io.gfile.GFile(path, "rb") as handle:
                found[path[len(root):].strip("/")] = handle.read()
    return found


def test_pushes_to_a_store_publish_whole_increasing_versions_once(tmp_path, tiny_model):
    tiny_model, _ = tiny_model
    base = _store()
    first, path, published = publish(tiny_model, base)
    assert published and store_versions(base) == [first]
    on_disk = {os.path.relpath(os.path.join(folder, name), tiny_model)
               for folder, _, names in os.walk(tiny_model) for name in names}
    assert set(_files(path)) == on_disk
    # the published copy is a SavedModel that loads and answers from the store
    loaded = tf.saved_model.load(path)
    assert "serving_default" in loaded.signatures
    assert publish(tiny_model, base) == (first, path, False)  # the same model: nothing copied
    second, _, published = publish(_model(tmp_path, "other"), base)
    assert published and second > first and store_versions(base) == [first, second]
    # files the push adds (the warmup requests) are moved in before the graph too. (A model
    # without assets/: TensorFlow's ram:// confuses sibling names that share a prefix, such as
    # assets and assets.extra; gs:// and s3:// do not.)
    plain = tmp_path / "plain"
    (plain / "variables").mkdir(parents=True)
    (plain / "saved_model.pb").write_bytes(b"graph")
    (plain / "variables" / "variables.index").write_bytes(b"index")
    third, path, _ = publish(str(plain), base, {"assets.extra/tf_serving_warmup_requests": b"w"})
    assert _files(path) == {"saved_model.pb": b"graph", "variables/variables.index": b"index",
                            "assets.extra/tf_serving_warmup_requests": b"w"}
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(base)]
    assert sorted(names) == sorted([str(first), str(second), str(third), SOURCES_FILE])


class Killed(BaseException):
    """The process died: nothing after this point reaches the store."""


STEPS = 2 * len(MODEL_FILES)  # each file is uploaded hidden, then moved into the version


@pytest.mark.parametrize("kill_at", range(STEPS))
def test_a_push_killed_at_any_step_shows_no_version_and_the_next_push_cleans_up(
        tmp_path, monkeypatch, kill_at):
    base = _store()
    first, _, _ = publish(_model(tmp_path, "old"), base)
    model = _model(tmp_path, "new", salt=b"-new")
    writes = {"count": 0, "dead": False}
    seen_while_running = []
    gfile = tf.io.gfile

    def watched(original, counts: bool):
        def call(*args, **kwargs):
            if writes["dead"]:
                raise Killed()
            if counts:
                if writes["count"] == kill_at:
                    writes["dead"] = True
                    raise Killed()
                writes["count"] += 1
            result = original(*args, **kwargs)
            if counts:  # what TF Serving would find if it polled right now
                seen_while_running.append(_loadable(base))
            return result
        return call

    def _loadable(root: str) -> dict[int, dict[str, bytes]]:
        return {v: _files(f"{root}/{v}") for v in store_versions(root)}

    originals = {name: getattr(gfile, name) for name in
                 ("copy", "rename", "makedirs", "rmtree", "remove", "GFile", "exists", "isdir",
                  "listdir", "walk")}
    for name, original in originals.items():
        monkeypatch.setattr(gfile, name, watched(original, name in ("copy", "rename")))
    with pytest.raises(Killed):
        publish(model, base)
    monkeypatch.undo()

    for seen in seen_while_running:
        # only the old version, whole, could ever have been loaded
        assert list(seen) == [first] and seen[first] == MODEL_FILES
    assert store_versions(base) == [first]
    left = {name.rstrip("/") for name in tf.io.gfile.listdir(base)}
    assert any(name.startswith(PARTIAL_PREFIX) for name in left)  # the hidden upload

    assert set(remove_store_leftovers(base, older_than_s=None)) == left - {str(first), SOURCES_FILE}
    version, path, published = publish(model, base)
    assert published and version > first and store_versions(base) == [first, version]
    assert _files(path) == {name: payload + b"-new" for name, payload in MODEL_FILES.items()}


def test_a_store_push_refuses_what_is_not_a_saved_model_and_unknown_schemes(tmp_path):
    empty = tmp_path / "empty"
    (empty / "variables").mkdir(parents=True)
    (empty / "variables" / "v").write_bytes(b"x")
    base = _store()
    with pytest.raises(ValueError, match="holds no saved_model.pb"):
        publish(str(empty), base)
    assert store_versions(base) == []
    with pytest.raises(ValueError, match="TF Serving reads gs://, s3:// or folders, not ftp://"):
        publish(_model(tmp_path, "m"), "ftp://host/models")
