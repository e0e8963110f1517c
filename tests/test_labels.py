"""TF Serving's version labels: `masktfx promote` and `rollback` write models.config, and
`masktfx serve` answers `/labels/L` and gRPC `version_label` from it, switching with no failed
request."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from masktfx import cli
from masktfx.components.versioned_pusher import publish_version
from masktfx.model_config import CONFIG_FILE, ModelConfigError, promote, read_config
from masktfx.serving.client import GrpcClient, RestClient, ServingClientError
from masktfx.serving.models import ModelManager
from masktfx.serving.server import ModelServer


def _fake_versions(base, *versions: int) -> None:
    for version in versions:
        os.makedirs(base / str(version))
        (base / str(version) / "saved_model.pb").write_bytes(b"")


def test_promote_and_rollback_write_the_config_tf_serving_reads(tmp_path, capsys):
    serving = tmp_path / "serving"
    _fake_versions(serving / "m", 3, 4, 5)
    (serving / "m" / "6").mkdir()  # no saved_model.pb: not a complete version
    target = ["--serving-dir", str(serving), "--model-name", "m", "--json"]
    config_file = str(serving / CONFIG_FILE)

    def run(*argv: str) -> int:
        return cli.main([*argv, *target])

    # the first canary keeps the newest version below it as stable, beside it
    assert run("promote", "--version", "5", "--label", "canary") == 0
    parsed = model_server_config_pb2.ModelServerConfig()
    with open(config_file, encoding="utf-8") as handle:
        text_format.Parse(handle.read(), parsed)  # TF Serving's own proto
    entry = parsed.model_config_list.config[0]
    assert entry.name == "m" and entry.base_path == str(serving / "m")
    assert list(entry.model_version_policy.specific.versions) == [4, 5]
    assert dict(entry.version_labels) == {"stable": 4, "canary": 5}
    # promoting the canary retires the old stable version
    assert run("promote", "--version", "5", "--label", "stable") == 0
    assert read_config(config_file)["m"].versions == (5,)
    assert read_config(config_file)["m"].labels == {"stable": 5}
    # rollback: back to the stable version before
    capsys.readouterr()
    assert run("rollback") == 0
    assert "stable 5 -> 4" in capsys.readouterr().out
    assert read_config(config_file)["m"].labels == {"stable": 4}
    # with a canary, rollback drops it and keeps stable
    assert run("promote", "--version", "3", "--label", "canary") == 0
    assert run("rollback") == 0
    assert read_config(config_file)["m"].labels == {"stable": 4}
    assert read_config(config_file)["m"].versions == (4,)
    # nothing half-written beside the file
    assert sorted(os.listdir(serving)) == sorted([CONFIG_FILE, f"{CONFIG_FILE}.history.json", "m"])

    capsys.readouterr()
    assert run("promote", "--version", "6", "--label", "stable") == 2
    assert "version 6 is not a complete version" in capsys.readouterr().err
    assert run("promote", "--version", "7", "--label", "stable") == 2
    assert run("rollback") == 2  # stable 4 was the first stable: nothing before it
    assert "no stable version before 4" in capsys.readouterr().err
    with pytest.raises(ModelConfigError, match="label must be one of"):
        promote(config_file, "m", str(serving / "m"), 4, "beta")
    (serving / CONFIG_FILE).write_text("model_config_list { bogus: 1 }")
    with pytest.raises(ModelConfigError, match="not a TF Serving model config"):
        read_config(config_file)


def test_labels_switch_under_load_with_no_failed_request(tiny_model, tmp_path):
    model_dir, examples = tiny_model
    serving = tmp_path / "serving"
    base = str(serving / "tiny")
    first = publish_version(model_dir, base)[0]
    copy = str(tmp_path / "copy")
    shutil.copytree(model_dir, copy)
    second = publish_version(copy, base)[0]
    config_file = str(serving / CONFIG_FILE)
    target = ["--serving-dir", str(serving), "--model-name", "tiny"]
    assert cli.main(["promote", "--version", str(first), "--label", "stable", *target]) == 0

    manager = ModelManager("tiny", base, poll_seconds=0.1)
    server = ModelServer({"tiny": manager}, rest_port=0, grpc_port=0,
                         model_config_file=config_file, config_poll_seconds=0.1)
    server.start()
    rest = RestClient(f"http://127.0.0.1:{server.rest_port}", "tiny", retries=0)
    grpc_client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "tiny", retries=0)
    images = [[image] for _, image, _ in examples[:2]]
    masks = [[mask] for _, _, mask in examples[:2]]

    def wait_for(label: str, version: int) -> None:
        deadline = time.monotonic() + 60
        while manager.labels().get(label) != version:
            assert time.monotonic() < deadline, (label, version, manager.labels())
            time.sleep(0.05)

    failures: list[str] = []
    seen: dict[str, set[int]] = {"rest": set(), "grpc": set()}
    stop = threading.Event()

    def loop(name: str, client) -> None:
        while not stop.is_set():
            try:
                for prediction in client.predict_regions(images, masks, label="stable"):
                    seen[name].add(prediction.model_version)
            except Exception as exc:  # every failure is recorded and fails the test
                failures.append(f"{name}: {exc!r}")

    try:
        wait_for("stable", first)
        assert manager.status()[0].version == first  # only the stable version is loaded
        threads = [threading.Thread(target=loop, args=(name, client))
                   for name, client in (("rest", rest), ("grpc", grpc_client))]
        for thread in threads:
            thread.start()
        # as TF Serving needs it: the version added, and the label moved once it is loaded
        served = ["--server", f"http://127.0.0.1:{server.rest_port}"]
        assert cli.main(["promote", "--version", str(second), "--label", "canary", *target,
                         *served]) == 0
        wait_for("canary", second)
        # a canary is served beside stable: both answer, each under its label
        assert {p.model_version for p in rest.predict_regions(images, masks, label="canary")} \
            == {second}
        assert {p.model_version for p in grpc_client.predict_regions(
            images, masks, label="canary")} == {second}
        assert {p.model_version for p in rest.predict_regions(images, masks, label="stable")} \
            == {first}
        time.sleep(0.5)
        assert cli.main(["promote", "--version", str(second), "--label", "stable",
                         *target]) == 0
        wait_for("stable", second)
        time.sleep(0.5)
        # the old stable is unloaded once no label points at it
        deadline = time.monotonic() + 30
        while [s.version for s in manager.status() if s.state == "AVAILABLE"] != [second]:
            assert time.monotonic() < deadline, manager.status()
            time.sleep(0.05)
        with pytest.raises(ServingClientError, match="Unrecognized servable version label"):
            grpc_client.predict_regions(images, masks, label="canary")
        # rollback reloads the previous stable, and moves the label only once it is available
        assert cli.main(["rollback", *target, *served]) == 0
        wait_for("stable", first)
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        server.stop()
    assert not failures, failures[:5]
    assert seen["rest"] == seen["grpc"] == {first, second}, seen
