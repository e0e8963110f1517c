"""The Kubernetes manifests and the Dockerfile, validated offline (no cluster or daemon here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(os.path.dirname(sys.executable), "..", "k8s-tools", "bin")


def _tool(name: str) -> str:
    path = os.path.join(TOOLS, name)
    assert os.path.exists(path), f"{name} is missing: run `make setup`"
    return path


def _render(overlay: str, tmp_path) -> tuple[str, list[dict]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the kustomize overlays"
    rendered = subprocess.run([kubectl, "kustomize", os.path.join(ROOT, "kubernetes", "overlays",
                                                                   overlay)],
                              check=True, capture_output=True, text=True).stdout
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered)
    return str(path), [doc for doc in yaml.safe_load_all(rendered) if doc]


@pytest.mark.parametrize("overlay", ["local", "production", "mysql-metadata"])
def test_overlay_renders_validates_and_passes_checkov(overlay, tmp_path):
    path, objects = _render(overlay, tmp_path)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for expected in [("Deployment", "masktfx-serving"), ("Service", "masktfx-serving"),
                     ("HorizontalPodAutoscaler", "masktfx-serving"),
                     ("PodDisruptionBudget", "masktfx-serving"),
                     ("NetworkPolicy", "masktfx-serving"),
                     ("ConfigMap", "masktfx-serving-config"), ("CronJob", "masktfx-retraining"),
                     ("ServiceAccount", "masktfx-retraining"), ("Role", "masktfx-retraining"),
                     ("RoleBinding", "masktfx-retraining")]:
        assert expected in kinds, expected
    validate = subprocess.run([_tool("kubernetes-validate"), "-k", "1.30", "--strict",
                               "--quiet", path], capture_output=True, text=True)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    checkov = subprocess.run([_tool("checkov"), "-f", path, "--framework", "kubernetes",
                              "--compact", "--quiet", "--skip-download", "-o", "json"],
                             capture_output=True, text=True, env={**os.environ,
                                                                  "BC_SKIP_MAPPING": "TRUE"})
    report = yaml.safe_load(checkov.stdout)
    summary = report["summary"]
    assert summary["failed"] == 0, [c["check_id"] for c in report["results"]["failed_checks"]]
    assert summary["passed"] > 100

    serving = next(o for o in objects if o["kind"] == "Deployment")
    pod = serving["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].startswith("tensorflow/serving:2.16.1")
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/masktfx"
    assert {p["containerPort"] for p in container["ports"]} == {8500, 8501}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # TF Serving reads its model config from the models volume, where `masktfx promote` writes
    # it, polled; the server's mount is read-only, and the init container seeds the default
    assert "--model_config_file=/models/models.config" in container["args"]
    assert any(arg.startswith("--model_config_file_poll_wait_seconds=") and
               int(arg.split("=")[1]) > 0 for arg in container["args"])
    assert {m["name"]: m.get("readOnly") for m in container["volumeMounts"]}["models"] is True
    seed = pod["initContainers"][0]
    assert seed["securityContext"]["readOnlyRootFilesystem"] is True
    _run_seed(seed, tmp_path, next(o for o in objects
                                   if o["metadata"]["name"] == "masktfx-serving-config"))
    cron = next(o for o in objects if o["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert job["containers"][0]["args"][0] == "run"
    config = next(o for o in objects if o["metadata"]["name"] == "masktfx-serving-config")
    assert "latest { num_versions: 1 }" in config["data"]["models.config"]
    # Prometheus: TF Serving's monitoring config, the scrape annotations, and a policy that
    # lets Prometheus reach the REST port
    from masktfx.serving.metrics import METRICS_PATH

    assert f'path: "{METRICS_PATH}"' in config["data"]["monitoring.config"]
    assert "enable: true" in config["data"]["monitoring.config"]
    assert "--monitoring_config_file=/config/monitoring.config" in container["args"]
    annotations = serving["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (
        "8501", METRICS_PATH)
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    scrape = [rule for rule in policy["spec"]["ingress"]
              if rule["from"][0].get("podSelector", {}).get("matchLabels") ==
              {"app.kubernetes.io/name": "prometheus"}]
    assert scrape and scrape[0]["ports"] == [{"port": 8501, "protocol": "TCP"}]


def test_the_mysql_variant_keeps_the_run_metadata_in_the_database_service(tmp_path):
    _, objects = _render("mysql-metadata", tmp_path)
    cron = next(o for o in objects if o["kind"] == "CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    metadata = [arg.split("=", 1)[1] for arg in container["args"]
                if arg.startswith("--metadata=")]
    from masktfx.config import PipelineConfig

    location = PipelineConfig(metadata=metadata[0]).validate().metadata_location
    service = next(o for o in objects if o["kind"] == "Service"
                   and o["metadata"]["name"] == location.host)
    assert location.port in [p["port"] for p in service["spec"]["ports"]]
    # the password only from the Secret, mounted as the file the environment names
    password = next(e for e in container["env"]
                    if e["name"] == "MASKTFX_METADATA_PASSWORD_FILE")["value"]
    mount = next(m for m in container["volumeMounts"]
                 if password.startswith(m["mountPath"] + "/"))
    volume = next(v for v in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "masktfx-metadata" and mount["readOnly"] is True
    assert os.path.basename(password) == "password"  # the Secret's key
    assert not any("password" in arg.lower() for arg in container["args"])


def _run_seed(container: dict, tmp_path, config_map: dict) -> None:
    """The init container's script, run here with its two mounts as local folders: it copies
    the ConfigMap's default once, and keeps a config `masktfx promote` wrote since."""
    from masktfx.model_config import read_config

    models, config = tmp_path / "models", tmp_path / "config"
    models.mkdir()
    config.mkdir()
    (config / "models.config").write_text(config_map["data"]["models.config"])
    script = container["args"][0].replace("/models/", f"{models}/").replace(
        "/config/", f"{config}/")
    assert container["command"] == ["/bin/sh", "-c"]
    for _ in range(2):
        subprocess.run(["/bin/sh", "-c", script], check=True, env={"HOSTNAME": "pod-1"})
        assert sorted(os.listdir(models)) == ["models.config"]
        served = read_config(str(models / "models.config"))
        assert served["masktfx"].base_path == "/models/masktfx"
        assert served["masktfx"].versions == ()  # the newest version, no labels
    (models / "models.config").write_text("# promoted\n")
    subprocess.run(["/bin/sh", "-c", script], check=True, env={"HOSTNAME": "pod-2"})
    assert (models / "models.config").read_text() == "# promoted\n"


def test_dockerfile_lints_clean_and_runs_as_non_root():
    result = subprocess.run([_tool("hadolint"), os.path.join(ROOT, "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8").read()
    assert "TF_USE_LEGACY_KERAS=1" in text and "USER 10001" in text
    # the maintained stack, pinned as `make setup` pins it on a machine that takes it
    assert "FROM python:3.13" in text and "-c constraints/tfx-1.21.txt ." in text
