"""Security promises: loopback by default, no file named by a request is opened, no credentials
in the repository. (Body limit: tests/test_serving.py; checkov and non-root image:
tests/test_kubernetes.py; the KFP token from the environment: tests/test_kubeflow.py.)"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import threading

import pytest
import requests

from masktfx import cli
from masktfx.serving.client import GrpcClient, ServingClientError
from masktfx.serving.models import ModelManager, wait_for_version
from masktfx.serving.server import ModelServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_server_binds_loopback_unless_told_otherwise(tmp_path):
    args = cli.build_parser().parse_args(["serve", "--model-base-path", str(tmp_path),
                                          "--model-name", "m"])
    assert args.host == "127.0.0.1"
    server = ModelServer({}, rest_port=0, grpc_port=0)
    try:
        assert server.rest.server_address[0] == "127.0.0.1"
    finally:
        server.rest.server_close()


# Every `open` Python makes while the requests below are served; paths are recorded only while
# `_watching` is set (an audit hook cannot be removed, so it stays cheap and idle otherwise).
_opened: list[str] = []
_watching = threading.Event()


def _audit(event: str, args: tuple) -> None:
    if _watching.is_set() and event in ("open", "os.open") and args:
        _opened.append(os.fsdecode(args[0]) if isinstance(args[0], (str, bytes)) else
                       repr(args[0]))


sys.addaudithook(_audit)


def test_no_request_makes_the_server_open_a_file_it_names(tiny_model, tmp_path):
    model_dir, examples = tiny_model
    base = tmp_path / "models" / "tiny"
    shutil.copytree(model_dir, base / "1")
    secret = tmp_path / "secret.png"
    secret.write_bytes(examples[0][1])  # a real image: opening it would work
    manager = ModelManager("tiny", str(base))
    server = ModelServer({"tiny": manager}, rest_port=0, grpc_port=0)
    server.start()
    try:
        wait_for_version(manager)
        url = f"http://127.0.0.1:{server.rest_port}/v1/models"
        names = [str(secret), "../../etc/passwd", "/etc/passwd", f"file://{secret}"]
        _watching.set()
        with open(tmp_path / "hook-check", "w"):  # the hook does see opens
            pass
        assert _opened and _opened.pop().endswith("hook-check")
        for name in names:
            as_b64 = {"b64": base64.b64encode(name.encode()).decode()}
            bodies = [
                {"signature_name": "predict_raw", "instances": [
                    {"images": [as_b64], "masks": [as_b64]}]},
                {"signature_name": "predict_raw", "instances": [
                    {"images": [name], "masks": [name]}]},
                {"signature_name": name, "instances": [{"images": [name]}]},
                {"instances": [name]},
            ]
            for body in bodies:
                assert requests.post(f"{url}/tiny:predict", json=body, timeout=30).status_code \
                    == 400
            for path in (f"/{name}:predict", f"/tiny/versions/{name}:predict",
                         "/tiny/metadata?path=" + name):
                response = requests.post(url + path, json=bodies[0], timeout=30)
                assert response.status_code in (400, 404), (path, response.status_code)
            with pytest.raises(ServingClientError):
                GrpcClient(f"127.0.0.1:{server.grpc_port}", "tiny", retries=0) \
                    .predict_regions([[name.encode()]], [[name.encode()]])
        _watching.clear()
    finally:
        _watching.clear()
        server.stop()
    touched = [path for path in _opened if "passwd" in path or "secret" in path]
    assert not touched, touched


_SECRET_PATTERNS = [
    (re.compile(rb"AKIA[0-9A-Z]{16}"), "AWS access key id"),
    (re.compile(rb"-----BEGIN (RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"), "private key"),
    (re.compile(rb"gh[pousr]_[A-Za-z0-9]{36}"), "GitHub token"),
    (re.compile(rb"xox[baprs]-[A-Za-z0-9-]{10,}"), "Slack token"),
    (re.compile(rb"AIza[0-9A-Za-z_-]{35}"), "Google API key"),
    (re.compile(rb"(?i)(password|passwd|secret|token|api_key)\s*[:=]\s*['\"][^'\"\s]{8,}['\"]"),
     "hard-coded credential"),
]
# Test fixtures that are placeholders, not credentials (a fake token for the fake KFP API).
_ALLOWED = {b"secret-from-env"}


def test_no_credentials_in_the_repository():
    if shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    found = []
    for name in filter(None, files):
        path = os.path.join(ROOT, os.fsdecode(name))
        if not os.path.isfile(path) or os.path.getsize(path) > 5 * 2**20:
            continue
        with open(path, "rb") as handle:
            data = handle.read()
        for pattern, kind in _SECRET_PATTERNS:
            for match in pattern.finditer(data):
                if not any(allowed in match.group(0) for allowed in _ALLOWED):
                    found.append(f"{os.fsdecode(name)}: {kind}: {match.group(0)[:40]!r}")
    assert not found, found
