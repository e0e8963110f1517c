"""Faults: a run killed during Transform and during the push, a disk that fills up while pushing.

Slow: real pipeline runs in subprocesses, killed with SIGKILL (no chance to clean up).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from masktfx import cli
from masktfx.components.versioned_pusher import PARTIAL_PREFIX, existing_versions, publish_version
from masktfx.config import PipelineConfig
from masktfx.demo_data import write_synthetic
from masktfx.model_config import version_folders
from masktfx.pipeline.summary import list_runs

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--image-size", "16", "--epochs", "2", "--batch-size", "16", "--min-accuracy", "0",
         "--max-auc-drop", "1",  # the gate is tested elsewhere; here every model is pushed
         "--direct-running-mode", "in_memory",
         # tested in test_serving_check.py, test_intervals.py and the e2e run
         "--no-serving-check", "--no-confidence-intervals"]


def _start_run(manifest: str, workdir: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "masktfx.cli", "run", "--data", manifest, "--workdir", workdir,
         *FLAGS], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # its own process group: the Beam workers die with it


def _kill_when(process: subprocess.Popen, ready, timeout: float = 300.0,
               delay: float = 0.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the run ended before the fault could be injected"
        assert time.monotonic() < deadline, "the run never reached the point to kill it at"
        time.sleep(0.05)
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _complete_versions(model_dir: str) -> list[int]:
    """Numbered folders, each checked to hold a whole SavedModel."""
    versions = existing_versions(model_dir)
    for version in versions:
        folder = os.path.join(model_dir, str(version))
        assert os.path.exists(os.path.join(folder, "saved_model.pb")), folder
        assert os.listdir(os.path.join(folder, "variables")), folder
    return versions


def test_runs_killed_during_transform_and_during_the_push_leave_nothing_half_done(tmp_path):
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=64, size=16)
    workdir = str(tmp_path / "work")
    config = PipelineConfig(workdir=workdir)
    model_dir = os.path.join(config.resolved_serving_dir, config.model_name)

    # 1. killed a moment into Transform
    transform_dir = os.path.join(config.pipeline_root, "Transform")
    _kill_when(_start_run(manifest, workdir), lambda: os.path.isdir(transform_dir), delay=2.0)
    killed = list_runs(PipelineConfig.for_workdir(workdir))
    assert len(killed) == 1 and killed[0].components.get("Transform") != "COMPLETE"
    assert not killed[0].pushed and not existing_versions(model_dir)

    # the next run completes: Transform runs again (nothing half-written is reused) and pushes
    assert cli.main(["run", "--data", manifest, "--workdir", workdir, *FLAGS]) == 0
    runs = list_runs(PipelineConfig.for_workdir(workdir))
    assert len(runs) == 2 and runs[1].components["Transform"] == "COMPLETE"
    assert runs[1].pushed and runs[1].pushed_new
    first = _complete_versions(model_dir)
    assert len(first) == 1

    # 2. new data, then killed as soon as the pusher starts
    manifest = write_synthetic(str(tmp_path / "data2"), num_examples=64, size=16, seed=5)
    pushed_dir = os.path.join(config.pipeline_root, "VersionedPusher", "pushed_model")
    before = set(os.listdir(pushed_dir))
    _kill_when(_start_run(manifest, workdir),
               lambda: os.path.isdir(pushed_dir) and set(os.listdir(pushed_dir)) - before)
    assert _complete_versions(model_dir)[:1] == first  # only whole versions, the old one kept
    assert set(version_folders(model_dir)) == set(existing_versions(model_dir))

    # the next run completes and pushes the new model as a newer version; MLMD holds all runs
    assert cli.main(["run", "--data", manifest, "--workdir", workdir, *FLAGS]) == 0
    runs = list_runs(PipelineConfig.for_workdir(workdir))
    assert len(runs) == 4 and runs[3].pushed
    versions = _complete_versions(model_dir)
    assert versions[0] == first[0] and int(runs[3].pushed_version) == versions[-1] > first[0]


_KILLABLE_PUSH = """
import sys
from masktfx.components.versioned_pusher import publish_version
publish_version(sys.argv[1], sys.argv[2])
"""


def _fake_model(path: str, megabytes: int) -> str:
    """A folder shaped like a SavedModel, big enough that copying it takes a while."""
    os.makedirs(os.path.join(path, "variables"))
    with open(os.path.join(path, "saved_model.pb"), "wb") as handle:
        handle.write(b"\0" * 1024)
    for index in range(megabytes):
        with open(os.path.join(path, "variables", f"shard-{index:04d}"), "wb") as handle:
            handle.write(os.urandom(2**20))
    return path


def test_a_push_killed_mid_copy_never_shows_a_partial_version(tmp_path):
    base = str(tmp_path / "serving" / "model")
    small = _fake_model(str(tmp_path / "small"), 1)
    version, _, _ = publish_version(small, base)
    big = _fake_model(str(tmp_path / "big"), 200)
    process = subprocess.Popen([sys.executable, "-c", _KILLABLE_PUSH, big, base], cwd=ROOT,
                               start_new_session=True)

    def copying() -> bool:
        partials = [n for n in os.listdir(base) if n.startswith(PARTIAL_PREFIX)
                    and os.path.isdir(os.path.join(base, n))]
        return bool(partials) and os.path.isdir(os.path.join(base, partials[0], "variables"))

    _kill_when(process, copying, timeout=60)
    assert existing_versions(base) == [version]  # the half copy is not a version
    assert any(n.startswith(PARTIAL_PREFIX) for n in os.listdir(base))
    # a later push publishes a newer version beside the leftover copy
    newer, _, published = publish_version(big, base)
    assert published and newer > version
    assert existing_versions(base) == [version, newer]


_DISK_FULL = """
import json, os, shutil, sys
from masktfx.components.versioned_pusher import existing_versions, publish_version
from masktfx.serving.models import ModelManager
small, big, base = sys.argv[1:4]
first, _, _ = publish_version(small, base)
try:
    publish_version(big, base)
    error = None
except OSError as exc:
    error = f"{type(exc).__name__}: {exc}"
manager = ModelManager("m", base)
manager.poll_once()
served = manager.servable()[0].version
print(json.dumps({"first": first, "error": error, "versions": existing_versions(base),
                  "entries": sorted(os.listdir(base)), "served": served}))
"""


def test_a_full_disk_fails_the_push_cleanly_and_the_old_version_stays_served(tiny_model,
                                                                            tmp_path):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to mount a size-limited folder")
    model_dir, _ = tiny_model
    small = str(tmp_path / "small")
    shutil.copytree(model_dir, small)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(small) for f in fs)
    big = str(tmp_path / "big")
    shutil.copytree(model_dir, big)
    with open(os.path.join(big, "assets.bin"), "wb") as handle:
        handle.write(os.urandom(4 * size + 2**20))  # will not fit beside the first copy
    mount_point = str(tmp_path / "small-disk")
    os.makedirs(mount_point)
    limit_kb = (3 * size) // 1024 + 256
    script = textwrap.dedent(f"""
        mount -t tmpfs -o size={limit_kb}k tmpfs {mount_point} || exit 97
        exec {sys.executable} -c '{_DISK_FULL}' {small} {big} {mount_point}/model
    """)
    # a user namespace maps an unprivileged user to root for the mount; root needs none (and
    # a process in a chroot, as CI's second stack runs, may not create one)
    as_root = [] if os.geteuid() == 0 else ["--map-root-user"]
    result = subprocess.run(["unshare", "--mount", *as_root, "sh", "-c", script],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    if result.returncode == 97:
        pytest.fail(f"cannot mount a size-limited tmpfs here: {result.stderr[-500:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["error"] and "No space left on device" in outcome["error"], outcome
    assert outcome["versions"] == [outcome["first"]]  # the failed push left no version...
    assert not [e for e in outcome["entries"] if e.startswith(PARTIAL_PREFIX)]  # ...nor a copy
    assert outcome["served"] == outcome["first"]
