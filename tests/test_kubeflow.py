"""Kubeflow: compile the real pipeline, and send submit/schedule to a local stand-in for the KFP
API on loopback (no KFP backend can run here)."""

from __future__ import annotations

import importlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from masktfx import cli
from masktfx.pipeline.kfp_client import KfpError, check_cron

EXPECTED_TASKS = {"ImportExampleGen", "ImportSchemaGen", "StatisticsGen", "ExampleValidator",
                  "AnomalyGate", "Transform", "Trainer", "Evaluator", "ServingCheck",
                  "VersionedPusher", "RunReport"}


MAPPED_FOLDERS = ("components", "modules", "pipeline", "serving")


def _documents(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return list(yaml.safe_load_all(handle))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kfp")
    output = str(tmp / "pipeline.yaml")
    assert cli.main(["compile", "--output", output, "--image", "registry.example/masktfx:0.1.0",
                     "--pipeline-root", str(tmp / "root"), "--data-root", "/data/ingested",
                     "--num-views", "2", "--num-masks", "1"]) == 0
    return output


def test_compiled_spec_has_every_component_our_image_and_runtime_parameters(compiled):
    spec = _documents(compiled)[0]
    tasks = set(spec["root"]["dag"]["tasks"])
    assert EXPECTED_TASKS <= tasks
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert {"data-root", "train-args"} <= set(parameters)
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()
              if "container" in e}
    assert images == {"registry.example/masktfx:0.1.0"}
    import kfp.components

    component = kfp.components.load_component_from_file(compiled)
    assert component.name


def test_the_report_step_is_an_html_artifact_for_the_kfp_ui(compiled):
    spec = _documents(compiled)[0]
    task = spec["root"]["dag"]["tasks"]["RunReport"]
    assert "VersionedPusher" in task["dependentTasks"]
    outputs = spec["components"][task["componentRef"]["name"]]["outputDefinitions"]["artifacts"]
    schema = yaml.safe_load(outputs["report"]["artifactType"]["instanceSchema"])
    assert schema["title"] == "system.HTML"  # the type KFP's UI renders as a page


def test_every_executor_in_the_spec_can_be_loaded_from_our_image(compiled):
    # Our executors (the streaming ImportExampleGen, the Evaluator, AnomalyGate, VersionedPusher)
    # run in the container from their class paths: each must import, and come from a package the
    # image copies.
    spec = _documents(compiled)[0]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "Dockerfile"), encoding="utf-8") as handle:
        copied = set(re.findall(r"^COPY (\w+) \./\1$", handle.read(), re.MULTILINE))
    paths = {}
    for name, executor in spec["deploymentSpec"]["executors"].items():
        args = executor.get("container", {}).get("args", [])
        if "--executor_class_path" in args:
            paths[name] = args[args.index("--executor_class_path") + 1]
    assert paths["ImportExampleGen_executor"] == "masktfx.components.streaming_example_gen.Executor"
    assert paths["Evaluator_executor"] == "masktfx.components.evaluator.Executor"
    assert paths["ServingCheck_executor"] == "masktfx.components.serving_check.Executor"
    # the Pusher takes the serving check's InfraBlessing
    pusher = spec["root"]["dag"]["tasks"]["VersionedPusher"]["inputs"]["artifacts"]
    assert pusher["infra_blessing"]["taskOutputArtifact"]["producerTask"] == "ServingCheck"
    for path in paths.values():
        module, _, attribute = path.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), attribute), type), path
        parts = module.split(".")
        # masktfx.components is the components/ folder (package-dir in pyproject.toml)
        folder = parts[1] if parts[0] == "masktfx" and parts[1] in MAPPED_FOLDERS else parts[0]
        assert parts[0] == "tfx" or folder in copied, f"{path}: {folder}/ is not in the image"


def _push_destination(spec: dict) -> str:
    parameters = spec["root"]["dag"]["tasks"]["VersionedPusher"]["inputs"]["parameters"]
    destination = json.loads(parameters["push_destination"]["runtimeValue"]["constant"])
    return destination["filesystem"]["base_directory"]


def _executor(spec: dict, task: str) -> str:
    return spec["components"][spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]][
        "executorLabel"]


def test_the_pusher_pod_mounts_the_claim_tf_serving_reads(compiled):
    spec, platform = _documents(compiled)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # only the pods of the Pusher and of the DriftCheck (which reads the pushed versions'
    # descriptors) get the volume
    assert sorted(executors) == sorted([_executor(spec, "VersionedPusher"),
                                        _executor(spec, "DriftCheck")])
    for mount in executors.values():
        assert mount == {"pvcMount": [{"constant": "masktfx-models", "mountPath": "/models"}]}
    drift_parameters = spec["root"]["dag"]["tasks"]["DriftCheck"]["inputs"]["parameters"]
    assert drift_parameters["model_base_dir"]["runtimeValue"]["constant"] == "/models/masktfx"
    # the defaults are the claim and mount path of kubernetes/ (TF Serving reads /models/NAME)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    deployment = _documents(os.path.join(root, "kubernetes", "base",
                                         "serving-deployment.yaml"))[0]
    pod = deployment["spec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"]: claims.get(m["name"]) for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/models"] == "masktfx-models"
    assert _push_destination(spec) == "/models/masktfx"


def test_serving_dirs_on_an_object_store_or_another_claim_compile(tmp_path, capsys):
    common = ["--image", "x", "--pipeline-root", str(tmp_path / "root"), "--num-views", "1",
              "--num-masks", "1"]
    output = str(tmp_path / "gs.yaml")
    assert cli.main(["compile", "--output", output, "--serving-dir", "gs://bucket/models",
                     *common]) == 0
    documents = _documents(output)
    assert len(documents) == 1  # no volume: the Pusher writes to the bucket
    assert _push_destination(documents[0]) == "gs://bucket/models/masktfx"

    output = str(tmp_path / "claim.yaml")
    assert cli.main(["compile", "--output", output, "--serving-dir", "/srv/tf/prod",
                     "--serving-claim", "team-models", "--serving-claim-mount", "/srv/tf",
                     *common]) == 0
    spec, platform = _documents(output)
    mount = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert list(mount.values()) == [{"pvcMount": [{"constant": "team-models",
                                                   "mountPath": "/srv/tf"}]}] * 2
    assert _push_destination(spec) == "/srv/tf/prod/masktfx"

    for flags, message in (
            (["--serving-dir", "/elsewhere"], "'/elsewhere' is not on the serving volume"),
            (["--serving-dir", "workdir/serving"], "is not on the serving volume"),
            (["--serving-dir", "ftp://host/models"], "must be a folder or a gs:// or s3://")):
        assert cli.main(["compile", "--output", str(tmp_path / "bad.yaml"), *flags,
                         *common]) == 2
        assert message in capsys.readouterr().err
        assert not os.path.exists(tmp_path / "bad.yaml")


def test_the_scoring_step_compiles_after_the_pusher_with_the_serving_volume(tmp_path):
    output = str(tmp_path / "scoring.yaml")
    assert cli.main(["compile", "--output", output, "--image", "registry.example/masktfx:0.1.0",
                     "--pipeline-root", str(tmp_path / "root"), "--num-views", "1",
                     "--num-masks", "1", "--score-data", "/data/survey/manifest.csv",
                     "--score-format", "geojson"]) == 0
    spec, platform = _documents(output)
    task = spec["root"]["dag"]["tasks"]["BatchScorer"]
    pushed = task["inputs"]["artifacts"]["pushed_model"]["taskOutputArtifact"]
    assert pushed == {"producerTask": "VersionedPusher", "outputArtifactKey": "pushed_model"}
    parameters = {name: value["runtimeValue"]["constant"]
                  for name, value in task["inputs"]["parameters"].items()}
    assert parameters["score_data"] == "/data/survey/manifest.csv"
    assert parameters["output_format"] == "geojson"
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert _executor(spec, "BatchScorer") in mounts


def test_compile_refuses_what_kfp_cannot_take(tmp_path, capsys):
    assert cli.main(["compile", "--output", str(tmp_path / "p.json"), "--image", "x",
                     "--pipeline-root", str(tmp_path), "--num-views", "1",
                     "--num-masks", "1"]) == 2
    assert "must end in .yaml" in capsys.readouterr().err
    assert cli.main(["compile", "--output", str(tmp_path / "p.yaml"), "--image", "x",
                     "--pipeline-root", str(tmp_path)]) == 2
    assert "num_views, num_masks and channels must be known" in capsys.readouterr().err


@pytest.mark.parametrize("expression, message", [
    ("0 3 * * *", "use '0 0 3 * * *'"),
    ("0 0 3 * *  * *", "has 7 fields"),
    ("0 0 3 * * $", "day-of-week field '$'"),
])
def test_bad_cron_expressions_are_refused(expression, message):
    with pytest.raises(KfpError, match=message.replace("*", r"\*").replace("$", r"\$")):
        check_cron(expression)
    assert check_cron(" 0  0 3 * * * ") == "0 0 3 * * *"


class FakeKfpApi(BaseHTTPRequestHandler):
    """Answers the few KFP v2beta1 API calls kfp.Client makes, and records them."""

    requests: list[dict] = []

    def log_message(self, *args):
        pass

    def _answer(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, body: dict | None) -> None:
        self.requests.append({"method": self.command, "path": self.path, "body": body,
                              "authorization": self.headers.get("Authorization")})

    def do_GET(self):  # noqa: N802
        self._record(None)
        if "/healthz" in self.path:
            self._answer({"multi_user": False})
        else:
            self._answer({"experiments": [], "total_size": 0})

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        self._record(body)
        if self.path.endswith("/experiments"):
            self._answer({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        elif self.path.endswith("/recurringruns"):
            self._answer({"recurring_run_id": "rr-1", "display_name": body.get("display_name")})
        elif self.path.endswith("/runs"):
            self._answer({"run_id": "run-1", "display_name": body.get("display_name")})
        else:
            self.send_error(404)


@pytest.fixture
def kfp_api():
    FakeKfpApi.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", FakeKfpApi.requests
    server.shutdown()


def test_submit_and_schedule_send_the_right_requests(compiled, kfp_api, monkeypatch, capsys):
    host, requests = kfp_api
    monkeypatch.setenv("KFP_TOKEN", "secret-from-env")
    assert cli.main(["submit", "--host", host, "--package", compiled, "--experiment", "nightly",
                     "--param", "data-root=/data/span-7", "--run-name", "manual"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"run_id": "run-1"}
    run = [r for r in requests if r["method"] == "POST" and r["path"].endswith("/runs")][0]
    assert run["body"]["display_name"] == "manual"
    assert run["body"]["experiment_id"] == "exp-1"
    assert run["body"]["runtime_config"]["parameters"] == {"data-root": "/data/span-7"}
    assert "Transform" in json.dumps(run["body"]["pipeline_spec"])
    # the Pusher's volume reaches KFP with the run
    platform = run["body"]["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
    assert "masktfx-models" in json.dumps(platform["deploymentSpec"])
    assert run["authorization"] == "Bearer secret-from-env"
    experiment = [r for r in requests if r["path"].endswith("/experiments")][0]
    assert experiment["body"]["display_name"] == "nightly"

    requests.clear()
    assert cli.main(["schedule", "--host", host, "--package", compiled, "--cron", "0 0 3 * * *",
                     "--max-concurrency", "1", "--no-catchup", "--name", "nightly"]) == 0
    recurring = [r for r in requests if r["path"].endswith("/recurringruns")][0]["body"]
    assert recurring["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert recurring["max_concurrency"] in (1, "1") and recurring["no_catchup"] is True
    assert recurring["display_name"] == "nightly" and recurring["mode"] == "ENABLE"

    requests.clear()
    assert cli.main(["schedule", "--host", host, "--package", compiled, "--cron",
                     "0 3 * * *"]) == 2
    assert "use '0 0 3 * * *'" in capsys.readouterr().err
    assert requests == []  # refused before anything was sent
