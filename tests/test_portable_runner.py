"""Beam's portability framework, as Flink or Spark on Kubernetes run our Beam pipelines: work sent
to a job service, run by SDK workers that are separate processes of a worker pool, every function
pickled across that boundary. `masktfx ingest` and a whole `masktfx run` on it."""

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
def portable_args(tmp_path_factory):
    with portable_services(str(tmp_path_factory.mktemp("portable"))) as args:
        yield args


def test_ingest_and_a_whole_run_on_the_portable_runner(tmp_path, portable_args, capsys):
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=160, size=32)
    # ingest: the same records as the DirectRunner writes
    for name, args in (("portable", portable_args), ("direct", IN_PROCESS_BEAM)):
        assert cli.main(["ingest", manifest, "--output", str(tmp_path / name), "--no-progress",
                         "--beam-args", *args]) == 0
    found = {name: {example.features.feature[features.ID_KEY].bytes_list.value[0]: example
                    for example in read_examples(str(tmp_path / name / features.SHARD_GLOB))}
             for name in ("portable", "direct")}
    assert len(found["portable"]) == 160 and found["portable"] == found["direct"]
    # the whole pipeline, each Beam component's work done by the pool's workers
    config = tmp_path / "portable.yaml"
    config.write_text(yaml.safe_dump({"beam_args": portable_args}))
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
