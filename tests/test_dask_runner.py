"""Beam's DaskRunner over a dask.distributed cluster of two worker processes: `masktfx ingest`
writes there the records the DirectRunner writes and rejects the same rows. (The pipeline's
TFX components do not run there: docs/pipeline.md says why.)"""

from __future__ import annotations

import csv
import logging

import pytest
from conftest import IN_PROCESS_BEAM

from masktfx import cli, features
from masktfx.demo_data import write_synthetic
from masktfx.records import read_examples

pytestmark = pytest.mark.slow

DASK_RUNNER = "--runner=apache_beam.runners.dask.dask_runner.DaskRunner"


def test_ingest_on_a_dask_cluster_writes_the_direct_runners_records(tmp_path):
    from distributed import Client, LocalCluster

    # Beam's DaskRunner keeps a client of its own, which logs its lost scheduler after the test
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=60, size=24)
    (tmp_path / "data" / "not-an-image.png").write_text("hello")
    with open(manifest, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    rows.append(["broken", "not-an-image.png", *rows[1][2:]])
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        dask_args = [DASK_RUNNER, f"--dask_client_address={cluster.scheduler_address}"]
        for name, args in (("dask", dask_args), ("direct", IN_PROCESS_BEAM)):
            assert cli.main(["ingest", manifest, "--output", str(tmp_path / name),
                             "--no-progress", "--beam-args", *args]) == 0
    found = {name: {example.features.feature[features.ID_KEY].bytes_list.value[0]: example
                    for example in read_examples(str(tmp_path / name / features.SHARD_GLOB))}
             for name in ("dask", "direct")}
    assert len(found["dask"]) == 60 and found["dask"] == found["direct"]
    for name in ("dask", "direct"):
        rejected = (tmp_path / name / features.REJECTED_CSV).read_text().splitlines()
        assert len(rejected) == 2 and "not-an-image.png" in rejected[1], rejected
    assert (tmp_path / "dask" / features.INGEST_REPORT).read_text() == \
        (tmp_path / "direct" / features.INGEST_REPORT).read_text().replace(
            str(tmp_path / "direct"), str(tmp_path / "dask"))
