"""The serving check before the push: the candidate served in a fresh `masktfx serve`, called over
REST and gRPC, blesses only a model that answers as it does in process; the Pusher pushes nothing
without that blessing. The components' executors on real artifacts, as TFX's own tests run them."""

from __future__ import annotations

import json
import os
import shutil

import tensorflow as tf
from tfx.types import standard_artifacts

from masktfx import features
from masktfx.components import serving_check, versioned_pusher
from masktfx.records import make_example


def _artifacts(tmp_path, model_dir: str, examples: list) -> dict:
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    shutil.copytree(model_dir, os.path.join(model.uri, "Format-Serving"))
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "model_blessing")
    blessing.set_int_custom_property("blessed", 1)
    split = tmp_path / "examples" / f"Split-{features.TEST_SPLIT}"
    split.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split / "data.gz"), options="GZIP") as writer:
        for _, image, mask in examples[:4]:
            writer.write(make_example([image], [mask]).SerializeToString())
    data = standard_artifacts.Examples()
    data.uri = str(tmp_path / "examples")
    data.split_names = '["train", "validation", "test"]'
    return {"model": [model], "model_blessing": [blessing], "examples": [data]}


def _check(tmp_path, inputs: dict, budget_ms: float = 5000.0, execution: str = "1"):
    infra = standard_artifacts.InfraBlessing()
    infra.uri = str(tmp_path / "infra_blessing" / execution)  # as TFX lays out executions
    os.makedirs(infra.uri)
    serving_check.Executor().Do(inputs, {"blessing": [infra]},
                                {"model_name": "tiny", "latency_budget_ms": budget_ms,
                                 "regions": 4})
    return infra


def _push(tmp_path, inputs: dict, infra) -> str:
    from tfx.proto import pusher_pb2
    from tfx.utils import proto_utils

    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    os.makedirs(pushed.uri)
    base = str(tmp_path / "serving" / "tiny")
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base))
    versioned_pusher.Executor().Do(
        {**inputs, "infra_blessing": [infra]}, {"pushed_model": [pushed]},
        {"push_destination": proto_utils.proto_to_json(destination), "warmup_regions": 4})
    return base


def test_a_model_that_serves_is_blessed_and_pushed(tiny_model, tmp_path):
    model_dir, examples = tiny_model
    inputs = _artifacts(tmp_path, model_dir, examples)
    infra = _check(tmp_path, inputs)
    reason = infra.get_string_custom_property(serving_check.REASON_PROPERTY)
    assert infra.get_int_custom_property("blessed") == 1, reason
    assert os.path.exists(os.path.join(infra.uri, serving_check.INFRA_BLESSED))
    assert "masktfx serve answered predict_raw, serving_default over REST and gRPC" in reason
    base = _push(tmp_path, inputs, infra)
    assert len([name for name in os.listdir(base) if name.isdigit()]) == 1

    # a re-run with no new data: the same model, requests and settings; the check is reused
    again = _check(tmp_path, inputs, execution="2")
    assert again.get_int_custom_property("blessed") == 1
    record = json.loads((tmp_path / "infra_blessing" / "2" / serving_check.CHECK_RECORD)
                        .read_text())
    assert record["reused_from"] == infra.uri and record["reason"] == reason
    # another latency budget is another check: served again, and over this one it fails
    strict = _check(tmp_path, inputs, budget_ms=0.001, execution="3")
    assert strict.get_int_custom_property("blessed") == 0
    assert "over the budget of 0.001 ms" in strict.get_string_custom_property(
        serving_check.REASON_PROPERTY)
    # and a failed check is never reused: the strict budget is checked again
    assert "reused_from" not in json.loads(
        (tmp_path / "infra_blessing" / "3" / serving_check.CHECK_RECORD).read_text())


def test_a_model_that_cannot_serve_is_stopped_with_a_message_and_nothing_is_pushed(
        tiny_model, tmp_path):
    model_dir, examples = tiny_model
    # the same model without its predict_raw signature
    loaded = tf.saved_model.load(model_dir)
    broken = str(tmp_path / "broken")
    tf.saved_model.save(loaded, broken, signatures={
        features.SERVING_SIGNATURE: loaded.signatures[features.SERVING_SIGNATURE]})
    inputs = _artifacts(tmp_path, broken, examples)
    infra = _check(tmp_path, inputs)
    assert infra.get_int_custom_property("blessed") == 0
    assert os.path.exists(os.path.join(infra.uri, serving_check.INFRA_NOT_BLESSED))
    assert "no signature 'predict_raw'" in infra.get_string_custom_property(
        serving_check.REASON_PROPERTY)
    base = _push(tmp_path, inputs, infra)
    assert not os.path.isdir(base) or not [n for n in os.listdir(base) if n.isdigit()]




def test_tensorflow_serving_is_started_with_nothing_reachable_from_other_machines(
        tiny_model, tmp_path, monkeypatch):
    """With `tensorflow_model_server` on PATH, the check starts it with its TCP ports off (TF
    Serving binds them on every interface) and calls gRPC over a UNIX socket. The binary here
    is a stand-in that records its flags and serves them with `masktfx serve` (REST on a free
    loopback port, which the check must not use: TF Serving's is off)."""
    import sys

    model_dir, examples = tiny_model
    flags_file = tmp_path / "flags.json"
    stand_in = tmp_path / "bin" / serving_check.TF_SERVING_BINARY
    stand_in.parent.mkdir()
    stand_in.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"json.dump(sys.argv[1:], open({str(flags_file)!r}, 'w'))\n"
        "flags = dict(arg[2:].split('=', 1) for arg in sys.argv[1:])\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'masktfx.cli', 'serve',\n"
        "         '--model-base-path', flags['model_base_path'],\n"
        "         '--model-name', flags['model_name'], '--rest-port', '0',\n"
        "         '--grpc-socket-path', flags['grpc_socket_path']])\n")
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}")
    infra = _check(tmp_path, _artifacts(tmp_path, model_dir, examples))
    reason = infra.get_string_custom_property(serving_check.REASON_PROPERTY)
    assert infra.get_int_custom_property("blessed") == 1, reason
    assert ("tensorflow_model_server answered predict_raw, serving_default over gRPC as the "
            "model does in process") in reason
    flags = json.loads(flags_file.read_text())
    assert "--port=0" in flags and "--rest_api_port=0" in flags
    socket_flag = [flag for flag in flags if flag.startswith("--grpc_socket_path=")]
    assert len(socket_flag) == 1 and socket_flag[0].endswith("grpc.sock")
