"""Run metadata (MLMD) in a real MariaDB server: a run and a cached re-run recorded there, the
reports reading it back, one run of a pipeline at a time per database, and a server that goes
away mid-run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mariadb import PASSWORD, MariaDB, available

from masktfx import cli
from masktfx.config import PipelineConfig
from masktfx.config_values import METADATA_PASSWORD_ENV
from masktfx.demo_data import write_synthetic
from masktfx.pipeline.run_lock import database_lock
from masktfx.pipeline.summary import list_runs

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not available() and not os.environ.get("MASKTFX_REQUIRE_MARIADB"),
    reason="Debian's mariadb-server is not installed (.ci/run installs it)")]

# A small, quick run: what is checked here is where it is recorded, not the model.
FAST = ["--image-size", "16", "--model-preset", "seed", "--epochs", "2", "--min-accuracy", "0",
        "--max-auc-drop", "1", "--no-serving-check", "--no-confidence-intervals",
        "--attribution-regions", "0", "--drift-threshold", "0"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    found = MariaDB(str(tmp_path_factory.mktemp("mariadb"))).start()
    yield found
    found.stop()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("data")), num_examples=160, size=32)


@pytest.fixture(autouse=True)
def password(monkeypatch):
    monkeypatch.setenv(METADATA_PASSWORD_ENV, PASSWORD)


def test_a_run_and_its_cached_rerun_are_recorded_in_the_server_and_read_back(
        tmp_path, server, manifest, capsys):
    workdir = str(tmp_path / "work")
    metadata = server.uri("team_runs")
    for _ in range(2):
        assert cli.main(["run", "--data", manifest, "--workdir", workdir, "--metadata",
                         metadata, *FAST]) == 0
    assert not os.path.exists(os.path.join(workdir, "metadata.sqlite"))
    # the workdir's saved config says where its runs are; the password is in no file
    config = PipelineConfig.for_workdir(workdir)
    assert config.metadata == metadata
    with open(os.path.join(workdir, "masktfx-config.yaml"), encoding="utf-8") as handle:
        assert PASSWORD not in handle.read()
    first, second = sorted(list_runs(config), key=lambda run: run.started_ms)
    assert first.pushed_version and second.pushed_version == first.pushed_version
    assert second.components["Trainer"] == "CACHED" and second.components["Transform"] == \
        "CACHED", second.components
    capsys.readouterr()
    assert cli.main(["runs", "--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert first.run_id in out and second.run_id in out
    assert cli.main(["lineage", "--workdir", workdir]) == 0
    assert f"version {first.pushed_version}" in capsys.readouterr().out
    assert cli.main(["report", "--workdir", workdir]) == 0
    assert os.path.exists(os.path.join(workdir, "report.html"))
    # without the password the server refuses, and the command says where and why
    os.environ.pop(METADATA_PASSWORD_ENV)
    assert cli.main(["runs", "--workdir", workdir]) == 2
    assert f"cannot use the run metadata at {metadata}" in capsys.readouterr().err


def test_a_second_run_of_a_pipeline_in_one_database_is_refused_naming_the_first(
        tmp_path, server, manifest, capsys):
    metadata = server.uri("shared")
    holder = PipelineConfig(workdir=str(tmp_path / "elsewhere"), metadata=metadata)
    with database_lock(holder, "run-on-another-host"):
        assert cli.main(["run", "--data", manifest, "--workdir", str(tmp_path / "work"),
                         "--metadata", metadata, *FAST]) == 2
    err = capsys.readouterr().err
    assert "run run-on-another-host" in err and "is running pipeline 'masktfx' against " \
        f"{metadata}" in err, err
    assert not os.path.exists(tmp_path / "work" / "data")  # refused before ingest
    # another pipeline name in the same database is not held up
    with database_lock(holder, "run-on-another-host"):
        with database_lock(holder.replace(pipeline_name="other"), "mine"):
            pass


def test_a_server_that_goes_away_mid_run_fails_the_run_clearly_and_pushes_nothing(
        tmp_path, manifest):
    own = MariaDB(str(tmp_path / "db")).start()
    workdir = tmp_path / "work"
    run = subprocess.Popen(
        [sys.executable, "-m", "masktfx.cli", "run", "--data", manifest, "--workdir",
         str(workdir), "--metadata", own.uri("runs"), *FAST], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = []
    try:
        for line in run.stdout:
            lines.append(line)
            if line.strip().startswith("Trainer"):  # the Trainer started: kill the server
                own.kill()
                break
        lines.extend(run.stdout)
        assert run.wait(timeout=300) != 0
    finally:
        own.kill()
        run.kill()
    out = "".join(lines)
    assert "masktfx run: the pipeline failed" in out or "cannot use the run metadata" in out, out
    assert "MySQL" in out or "mysql" in out, out
    serving = workdir / "serving" / "masktfx"
    assert not serving.exists() or not os.listdir(serving), os.listdir(serving)
