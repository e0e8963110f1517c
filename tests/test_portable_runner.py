"""Beam's portability framework, as Flink or Spark on Kubernetes run our Beam pipelines: work sent
to a job service, run by SDK workers that are separate processes of a worker pool, every function
pickled across that boundary. `masktfx ingest` on Beam's own worker pool and on ours, and a whole
`masktfx run` on ours (`masktfx beam-worker-pool`, whose workers are forked warm)."""

from __future__ import annotations

import pytest
import yaml
from beam_services import portable_services
from conftest import IN_PROCESS_BEAM

from masktfx import cli, features
from masktfx.demo_data import write_synthetic
from masktfx.records import read_examples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def beam_pool_args(tmp_path_factory):
    with portable_services(str(tmp_path_factory.mktemp("beam-pool"))) as args:
        yield args


@pytest.fixture(scope="module")
def warm_pool(tmp_path_factory):
    logs = tmp_path_factory.mktemp("masktfx-pool")
    with portable_services(str(logs), pool="masktfx") as args:
        yield args, logs / "forks.log"


def _ingested(folder) -> dict:
    return {example.features.feature[features.ID_KEY].bytes_list.value[0]: example
            for example in read_examples(str(folder / features.SHARD_GLOB))}


def test_ingest_and_a_whole_run_on_the_portable_runner(tmp_path, beam_pool_args, warm_pool,
                                                       capsys):
    warm_args, forks = warm_pool
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=160, size=32)
    # ingest: the same records as the DirectRunner writes, on either pool
    for name, args in (("beam-pool", beam_pool_args), ("warm-pool", warm_args),
                       ("direct", IN_PROCESS_BEAM)):
        assert cli.main(["ingest", manifest, "--output", str(tmp_path / name), "--no-progress",
                         "--beam-args", *args]) == 0
    direct = _ingested(tmp_path / "direct")
    assert len(direct) == 160
    assert _ingested(tmp_path / "beam-pool") == direct
    assert _ingested(tmp_path / "warm-pool") == direct
    forked_for_ingest = forks.read_text().count("forked Beam worker")
    assert forked_for_ingest >= 1  # the warm pool's workers came from its fork server
    # the whole pipeline, each Beam component's work done by the warm pool's workers
    config = tmp_path / "portable.yaml"
    config.write_text(yaml.safe_dump({"beam_args": warm_args}))
    capsys.readouterr()
    assert cli.main(["run", "--config", str(config), "--data", manifest, "--workdir",
                     str(tmp_path / "work"), "--image-size", "16", "--model-preset", "seed",
                     "--epochs", "2", "--min-accuracy", "0", "--max-auc-drop", "1",
                     "--no-serving-check", "--no-confidence-intervals",
                     "--attribution-regions", "0", "--drift-threshold", "0"]) == 0
    out = capsys.readouterr().out
    for node in ("ImportExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator"):
        assert f"  {node} COMPLETE" in out, out
    assert "pushed: version" in out, out
    # a worker per job of ingest, StatisticsGen, Transform and the Evaluator at least
    assert forks.read_text().count("forked Beam worker") >= forked_for_ingest + 3


def test_a_portable_job_may_run_longer_than_the_job_server_timeout(tmp_path, warm_pool):
    # Beam's PortableRunner gives the job's state stream the deadline --job_server_timeout:
    # this ingest runs past 1 s, which fails with DEADLINE_EXCEEDED on Beam's runner alone
    warm_args, _ = warm_pool
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=1000, size=32)
    assert cli.main(["ingest", manifest, "--output", str(tmp_path / "out"), "--no-progress",
                     "--beam-args", *warm_args, "--job_server_timeout=1"]) == 0
    assert len(_ingested(tmp_path / "out")) == 1000
