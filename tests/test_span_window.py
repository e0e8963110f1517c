"""Training on a window of spans: each span read once, the window from MLMD, the evaluation
sliced by span, the unlabeled regions of one span learnt from (the e2e run of unlabeled
regions: split, pretrained on, pseudo-labelled, never scored); and the strategy that picks the
window, on real TFX artifacts."""

from __future__ import annotations

import json
import os
import re

import pytest
import tensorflow_data_validation as tfdv
from conftest import blank_labels
from tfx.types import standard_artifacts

from masktfx import cli, features
from masktfx.components.span_window import SPLIT_KEY_PROPERTY, window
from masktfx.config import PipelineConfig
from masktfx.demo_data import write_synthetic
from masktfx.drift import CURRENT_STATISTICS_FILE
from masktfx.pipeline.lineage import lineage
from masktfx.pipeline.summary import (
    execution_outputs,
    list_runs,
    node_id,
    open_store,
    summarize_run,
)
from masktfx.records import read_examples

FAST = ["--image-size", "16", "--epochs", "2", "--batch-size", "16", "--min-accuracy", "0",
        "--max-auc-drop", "1", "--direct-running-mode", "in_memory", "--span-window", "2",
        # tested in test_serving_check.py, test_intervals.py and the e2e run
        "--no-serving-check", "--no-confidence-intervals"]


def _examples(artifact_id: int, span: int, key: str = "k", version: int = 0):
    artifact = standard_artifacts.Examples()
    artifact.id = artifact_id
    artifact.set_int_custom_property("span", span)
    artifact.set_int_custom_property("version", version)
    artifact.set_string_custom_property(SPLIT_KEY_PROPERTY, key)
    return artifact


def test_the_window_keeps_the_newest_read_of_each_of_the_last_spans_split_this_way():
    artifacts = [_examples(1, 1), _examples(2, 2), _examples(3, 2),  # span 2 read twice
                 _examples(4, 3, key="other"),  # span 3 split another way
                 _examples(5, 4, version=1), _examples(6, 4, version=0)]
    assert [a.id for a in window(artifacts, 2, "k")] == [3, 5]
    assert [a.id for a in window(artifacts, 5, "k")] == [1, 3, 5]  # oldest span first
    assert window(artifacts, 2, "unknown") == []


def _write(tmp_path, span: int, **shift: float) -> str:
    return write_synthetic(str(tmp_path / f"raw{span}"), num_examples=40, size=16, seed=span,
                           **shift)


def _ingest(tmp_path, data_root: str, span: int, manifest: str = "", **shift: float) -> str:
    manifest = manifest or _write(tmp_path, span, **shift)
    assert cli.main(["ingest", manifest, "--output", data_root, "--span", str(span),
                     "--no-progress", "--beam-args", "--runner=DirectRunner"]) == 0
    return manifest


@pytest.mark.slow
def test_a_window_of_two_spans_reads_each_span_once_and_slices_the_evaluation(tmp_path,
                                                                               capsys):
    import tensorflow_model_analysis as tfma

    data_root, workdir = str(tmp_path / "data"), str(tmp_path / "work")
    _ingest(tmp_path, data_root, 1)
    # span 2 holds the regions of a site nobody has labelled yet
    manifest = _write(tmp_path, 2)
    blanked = blank_labels(manifest, "site4")
    _ingest(tmp_path, data_root, 2, manifest)
    assert cli.main(["run", "--data", data_root, "--workdir", workdir, *FAST,
                     "--pretraining-epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "trained and evaluated on spans 1, 2 (read in this run: 2" in out
    assert f"{blanked} of them unlabeled (empty label)" in out, out
    config = PipelineConfig.for_workdir(workdir)
    first = lineage(config)
    assert first.spans == [1, 2] and first.evaluated_spans == [1, 2]
    uris = first.examples_uri.split(", ")
    assert len(uris) == 2 and first.train_examples is not None
    # span 1 was read (and checked against the contract) once, before the run that read span 2
    runs = list_runs(config)
    assert [run.spans for run in runs] == [[1], [2]]
    assert runs[0].components["AnomalyGate"] == "COMPLETE" and not runs[0].pushed
    # every record carries its span; the evaluation has a slice per span
    for uri, span in zip(uris, (1, 2)):
        spans = {ex.features.feature[features.SPAN_KEY].int64_list.value[0]
                 for ex in read_examples(os.path.join(uri, "Split-*", "*.gz"))}
        assert spans == {span}
    # both spans were read with an unlabeled split, span 1's empty, span 2's holding every
    # unlabeled region, and no labelled split any
    labels = {split: [[ex.features.feature[features.LABEL_KEY].int64_list.value[0]
                       for ex in read_examples(os.path.join(uri, f"Split-{split}", "*.gz"))]
                      for uri in uris] for split in (*features.SPLITS, features.UNLABELED_SPLIT)}
    assert all(os.path.isdir(os.path.join(uri, f"Split-{features.UNLABELED_SPLIT}"))
               for uri in uris)
    assert labels[features.UNLABELED_SPLIT] == [[], [features.UNLABELED] * blanked]
    assert all(set(found) <= {0, 1} for split in features.SPLITS for found in labels[split])
    # the Trainer read the unlabeled split beside train, pretrained on both (its batches are
    # twice the training batch; a last batch of one region is left out) and pseudo-labelled the
    # unlabeled regions; the Evaluator counted only the test split's labelled regions
    summary = summarize_run(config)
    trained_on = sum(map(len, labels["train"])) + blanked
    if trained_on % 32 == 1:
        trained_on -= 1
    assert summary.pretraining["regions"] == trained_on and len(summary.pretraining["loss"]) == 2
    assert f"pretraining: the tower learnt from {trained_on} training regions" in out, out
    store = open_store(config)
    trainer = next(e for e in store.get_executions() if node_id(store, e.id) == "Trainer")
    assert json.loads(trainer.custom_properties["train_args"].string_value)["splits"] == [
        "train", features.UNLABELED_SPLIT]
    assert summary.metrics["example_count"] == sum(map(len, labels["test"]))
    assert summary.unlabeled["unlabeled_seen"] == blanked
    used = summary.unlabeled["pseudo_labelled_0"] + summary.unlabeled["pseudo_labelled_1"]
    assert 0 < used <= blanked
    assert f"unlabeled regions: the Trainer used {used} of {blanked} as pseudo-labels" in out
    # the DriftCheck described every region of the span it read, the unlabeled ones too
    drift = execution_outputs(store, next(e for e in store.get_executions()
                                          if node_id(store, e.id) == "DriftCheck").id)
    described = tfdv.load_stats_binary(os.path.join(drift["drift_report"][0].uri,
                                                    CURRENT_STATISTICS_FILE))
    assert described.datasets[0].num_examples == 40
    slices = {key for key, _ in tfma.load_eval_result(first.evaluation_uri).slicing_metrics}
    assert {((features.SPAN_KEY, 1),), ((features.SPAN_KEY, 2),)} <= slices

    # A third span from a site unlike the first two (brighter, regions and spots larger than any
    # site of theirs): `masktfx drift` sees it before it is ingested, against what version 1
    # was trained on, and does not flag new data of the old sites.
    capsys.readouterr()
    drifted = _ingest(tmp_path, data_root, 3, brightness_shift=0.3, scale=1.8)
    assert cli.main(["drift", "--workdir", workdir, "--manifest", drifted]) == 1
    out = capsys.readouterr().out
    assert "against the training data of version 1" in out and "drift: " in out
    moved = next(line for line in out.splitlines() if line.startswith("drift: "))
    assert {"inside_mean", "mask_area"} <= {
        name.strip() for name in moved[len("drift: "):].split(", ")}
    # and the version's estimated AUC on it, without using its labels, beside the measured one
    assert "estimated AUC on this span" in out and "measured AUC" in out
    alike = write_synthetic(str(tmp_path / "alike"), num_examples=40, size=16, seed=4)
    code = cli.main(["drift", "--workdir", workdir, "--manifest", alike, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["moved"] == [] and code == (1 if report["estimate"]["worse"] else 0)
    # with drift_action stop, the run stops before Transform, naming the descriptors
    assert cli.main(["run", "--data", data_root, "--workdir", workdir, *FAST,
                     "--drift-action", "stop"]) == 1
    captured = capsys.readouterr()
    assert "DriftCheck" in captured.out + captured.err
    assert "inside_mean (divergence" in captured.out + captured.err
    runs = list_runs(config)
    assert runs[-1].spans == [3] and "Transform" not in runs[-1].components
    # with drift_action warn (the default) it trains and pushes, and says the span drifted;
    # only the span (3) is read again, span 2 comes from MLMD, as it was
    assert cli.main(["run", "--data", data_root, "--workdir", workdir, *FAST]) == 0
    assert "DRIFT: " in capsys.readouterr().out
    runs = list_runs(config)
    assert [run.spans for run in runs] == [[1], [2], [3], [3]]
    assert runs[-1].trained_spans == [2, 3] and runs[-1].pushed
    assert "mask_area" in runs[-1].drift
    # the report shows which descriptors moved, against which version
    page = str(tmp_path / "report.html")
    assert cli.main(["report", "--workdir", workdir, "--output", page]) == 0
    with open(page, encoding="utf-8") as handle:
        html = handle.read()
    assert "against the training data of version 1" in html
    assert re.search(r'data-descriptor="mask_area">mask_area</td>.*?data-moved="true"', html)
    second = lineage(config)
    assert second.spans == [2, 3] and second.examples_uri.split(", ")[0] == uris[1]


def test_compile_refuses_a_window_and_says_why(tmp_path, capsys):
    assert cli.main(["compile", "--output", str(tmp_path / "p.yaml"), "--image", "x",
                     "--pipeline-root", str(tmp_path / "root"), "--num-views", "1",
                     "--num-masks", "1", "--span-window", "3"]) == 2
    err = capsys.readouterr().err
    assert "'span_window' is 3" in err and "KubeflowV2DagRunner" in err
    assert not os.path.exists(tmp_path / "p.yaml")
