"""The real pipeline end to end on the local runner (slow: a few minutes on 2 cores)."""

from __future__ import annotations

import csv
import glob
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from conftest import load_bad_corpus, serving_folder

from masktfx import cli, features
from masktfx.components.evaluator import EVALUATION_RECORD
from masktfx.components.serving_check import CHECK_RECORD
from masktfx.config import PipelineConfig
from masktfx.demo_data import write_synthetic
from masktfx.fork_server import LOG_ENV
from masktfx.pipeline.summary import (
    execution_inputs,
    execution_outputs,
    latest_run_id,
    node_id,
    open_store,
    summarize_run,
)
from masktfx.records import make_example, read_examples

pytestmark = pytest.mark.slow

FLAGS = ["--image-size", "32", "--epochs", "40", "--early-stopping-patience", "12",
         "--batch-size", "16"]
# Median share of the attribution inside the mask needed to bless: measured on this test's data,
# the default model put 0.69 inside, one with `mask_mode: none` 0.19 (the masks' share of it).
ATTRIBUTION_GATE = "0.4"


GOOD_ROWS = 400  # the main run's regions, before the bad-input corpus is appended


def _run(manifest: str, workdir: str, *extra: str) -> int:
    return cli.main(["run", "--data", manifest, "--workdir", workdir, *FLAGS, *extra])


def _rows(manifest: str) -> list[dict[str, str]]:
    with open(manifest, encoding="utf-8", errors="surrogateescape") as handle:
        return list(csv.DictReader(handle))


def _add_bad_rows(manifest: str) -> int:
    """The bad-input corpus's refused rows appended to a good manifest; returns how many."""
    corpus = load_bad_corpus()
    folder = os.path.join(os.path.dirname(manifest), "bad")
    corpus.write_corpus(folder)
    bad = [case for case in corpus.CASES if case.expect == "reject" and case.id != "good-1"]
    with open(manifest, "a", encoding="utf-8", errors="surrogateescape") as handle:
        for case in bad:
            image = case.image if case.image.startswith("/") else f"bad/{case.image}"
            handle.write(f"bad-{case.id},{image},bad/{case.mask},{case.label},bad,site1\n")
    return len(bad)


def _evaluator_io(config: PipelineConfig) -> tuple[dict, dict]:
    """The Evaluator's input and output artifacts in the latest run, from MLMD."""
    store = open_store(config)
    context = store.get_context_by_type_and_name(
        "pipeline_run", latest_run_id(store, config.pipeline_name))
    for execution in store.get_executions_by_context(context.id):
        if node_id(store, execution.id) == "Evaluator":
            return execution_inputs(store, execution.id), execution_outputs(store, execution.id)
    raise AssertionError("no Evaluator execution in the latest run")


def _node_execution(config: PipelineConfig, node: str):
    """The latest run's execution of `node`, from MLMD."""
    store = open_store(config)
    context = store.get_context_by_type_and_name(
        "pipeline_run", latest_run_id(store, config.pipeline_name))
    for execution in store.get_executions_by_context(context.id):
        if node_id(store, execution.id) == node:
            return execution
    raise AssertionError(f"no {node} execution in the latest run")


def _node_io(config: PipelineConfig, node: str) -> dict:
    return execution_inputs(open_store(config), _node_execution(config, node).id)


def _evaluated_models(outputs: dict) -> dict[str, str]:
    """The models TFMA evaluated (name -> location), from the eval_config.json it wrote."""
    path = os.path.join(outputs["evaluation"][0].uri, "eval_config.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)["modelLocations"]


def test_run_blesses_pushes_serves_and_caches(tmp_path, capsys, monkeypatch):
    # 400 regions: with 320 (40 in test), one run in four here trained badly enough to miss the
    # accuracy gate on its 40 test regions
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=GOOD_ROWS, size=48)
    bad_rows = _add_bad_rows(manifest)  # refused at ingest; the run goes on with the good rows
    workdir = str(tmp_path / "work")
    forks = tmp_path / "forks.log"
    monkeypatch.setenv(LOG_ENV, str(forks))
    assert _run(manifest, workdir) == 0
    # Beam's workers (ingest and the Beam components) came from the fork server.
    assert len(forks.read_text().splitlines()) >= 8
    out = capsys.readouterr().out
    assert "blessed: yes" in out and "pushed: version" in out, out
    # before the push, the candidate was served in a fresh `masktfx serve` and called
    assert "serving check: passed - masktfx serve answered predict_raw, serving_default over " \
        "REST and gRPC" in out, out
    assert f"ingested {GOOD_ROWS} of {GOOD_ROWS + bad_rows} rows" in out, out
    config = PipelineConfig(workdir=workdir)
    summary = summarize_run(config)
    assert summary.blessed and summary.pushed
    # the configured metrics only: not the model's compiled Keras ones (a second `auc`, `loss`)
    assert {"auc", "binary_accuracy", "example_count"} <= set(summary.metrics)
    assert not {"accuracy", "loss"} & set(summary.metrics), sorted(summary.metrics)
    assert summary.metrics["auc"] >= 0.9
    assert sum(summary.examples.values()) == GOOD_ROWS
    first_evaluation = _evaluator_io(config)[1]["evaluation"][0].uri
    # ImportExampleGen (our executor, no shuffle) wrote every record once, groups kept apart
    groups = {}
    for split in features.SPLITS:
        pattern = os.path.join(config.pipeline_root, "ImportExampleGen", "examples", "*",
                               f"Split-{split}", "*.gz")
        found = [ex.features.feature for ex in read_examples(pattern)]
        assert len(found) == summary.examples[split]
        groups[split] = {f[features.GROUP_KEY].bytes_list.value[0] for f in found}
    assert all(groups.values())
    assert not (groups["train"] & groups["validation"] or groups["train"] & groups["test"]
                or groups["validation"] & groups["test"])
    # on MLMD: the Trainer read Transform's output, which holds train and validation only, and
    # was told to validate on `validation`; the Evaluator read the test split alone
    trainer_inputs, evaluator_exec = _node_io(config, "Trainer"), _node_execution(
        config, "Evaluator")
    assert [json.loads(a.properties["split_names"].string_value)
            for a in trainer_inputs["examples"]] == [["train", "validation"]]
    trainer_exec = _node_execution(config, "Trainer")
    assert '"validation"' in trainer_exec.custom_properties["eval_args"].string_value
    assert json.loads(evaluator_exec.custom_properties["example_splits"].string_value) == [
        "test"]
    model_dir = os.path.join(config.resolved_serving_dir, config.model_name)
    versions = [name for name in os.listdir(model_dir) if name.isdigit()]
    assert versions == [summary.pushed_version]
    assert not [name for name in os.listdir(model_dir) if name.startswith(".partial")]

    # the pushed model loads, and both signatures give the same probabilities
    loaded = tf.saved_model.load(os.path.join(model_dir, versions[0]))
    base = os.path.dirname(manifest)
    rows = _rows(manifest)[:12]
    images, masks = [], []
    for row in rows:
        with open(os.path.join(base, row["image"]), "rb") as handle:
            images.append(handle.read())
        with open(os.path.join(base, row["mask"]), "rb") as handle:
            masks.append(handle.read())
    serialized = [make_example([i], [m]).SerializeToString() for i, m in zip(images, masks)]
    by_example = loaded.signatures[features.SERVING_SIGNATURE](examples=tf.constant(serialized))
    by_raw = loaded.signatures[features.RAW_SIGNATURE](
        images=tf.constant([[i] for i in images]), masks=tf.constant([[m] for m in masks]))
    np.testing.assert_allclose(by_example[features.PROBABILITY_OUTPUT].numpy(),
                               by_raw[features.PROBABILITY_OUTPUT].numpy(), atol=1e-6)

    # the pushed folder served by `masktfx serve`, called by `masktfx predict` over REST and gRPC
    with serving_folder(model_dir, config.model_name) as (server, manager):
        # the push stored TF Serving's warmup requests (both signatures); the server replayed them
        assert manager.status()[0].warmup_requests == 2
        expected = by_raw[features.PROBABILITY_OUTPUT].numpy()
        capsys.readouterr()
        first12 = os.path.join(base, "first12.csv")  # the same 12 regions, as a manifest
        with open(first12, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        for target in (["--server", f"http://127.0.0.1:{server.rest_port}"],
                       ["--grpc", f"127.0.0.1:{server.grpc_port}"]):
            assert cli.main(["predict", *target, "--model", config.model_name, "--manifest",
                             first12]) == 0
            lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            np.testing.assert_allclose([line["probability"] for line in lines], expected,
                                       atol=1e-5)
            # how unlike the training regions each one is, as the model says in process
            np.testing.assert_allclose([line["ood_score"] for line in lines],
                                       by_raw[features.OOD_SCORE_OUTPUT].numpy(), rtol=1e-5)
            assert [line["in_distribution"] for line in lines] == \
                by_raw[features.IN_DISTRIBUTION_OUTPUT].numpy().tolist()
            assert {line["model_version"] for line in lines} == {int(versions[0])}

    # a second run with no new data is served from the cache up to the Trainer; the Evaluator
    # gets the same model back as its baseline and, as the first run evaluated that model alone
    # on the same examples with the same config, reuses that evaluation; nothing new is pushed
    assert _run(manifest, workdir) == 0
    again = summarize_run(config)
    assert again.run_id != summary.run_id
    for node in ("ImportExampleGen", "StatisticsGen", "ExampleValidator", "Transform",
                 "Trainer"):
        assert again.components[node] == "CACHED", again.components
    assert again.pushed_version == summary.pushed_version
    assert again.blessed and again.metrics["auc"] == pytest.approx(summary.metrics["auc"])
    inputs, outputs = _evaluator_io(config)
    assert [a.id for a in inputs["baseline_model"]] == [a.id for a in inputs["model"]]
    assert list(_evaluated_models(outputs)) == [""]  # one TFMA model: not candidate + baseline
    with open(os.path.join(outputs["evaluation"][0].uri, EVALUATION_RECORD),
              encoding="utf-8") as handle:
        assert json.load(handle)["reused_from"] == first_evaluation
    assert outputs["blessing"][0].custom_properties["blessed"].int_value == 1
    assert os.path.exists(os.path.join(outputs["blessing"][0].uri, "BLESSED"))
    blessing = outputs["blessing"][0].custom_properties
    assert blessing["baseline_model_id"].int_value == inputs["model"][0].id
    assert sorted(name for name in os.listdir(model_dir) if name.isdigit()) == versions
    # the serving check of that same model is reused too, not served again
    checks = [json.loads(open(path, encoding="utf-8").read()) for path in glob.glob(
        os.path.join(config.pipeline_root, "ServingCheck", "blessing", "*", CHECK_RECORD))]
    assert sorted("reused_from" in check for check in checks) == [False, True], checks

    # a change of the gates and of Beam's worker count: Transform and Trainer are keyed on none
    # of them; the default model looks inside the region enough to pass the attribution gate.
    # After the push, the scoring step scores the 12 regions with the version pushed.
    capsys.readouterr()
    assert _run(manifest, workdir, "--min-accuracy", "0.01", "--direct-num-workers", "1",
                "--min-attribution-inside", ATTRIBUTION_GATE, "--score-data", first12) == 0
    out = capsys.readouterr().out
    assert "blessed: yes" in out and "attribution inside the mask: median" in out, out
    gate_only = summarize_run(config)
    assert gate_only.components["Transform"] == "CACHED", gate_only.components
    assert gate_only.components["Trainer"] == "CACHED", gate_only.components
    scores = execution_outputs(open_store(config), _node_execution(config, "BatchScorer").id)[
        "scores"][0]
    assert scores.custom_properties["model_version"].int_value == int(versions[0])
    assert scores.custom_properties["scored"].int_value == 12
    scored = {}
    for shard in glob.glob(os.path.join(scores.uri, "scores-*.csv")):
        with open(shard, encoding="utf-8") as handle:
            scored.update((row["id"], float(row["probability"])) for row in csv.DictReader(handle))
    np.testing.assert_allclose([scored[row["id"]] for row in rows], expected, atol=1e-6)
    assert cli.main(["lineage", "--workdir", workdir]) == 0
    assert f"scored {first12} in run {gate_only.run_id}: 12 regions, 0 rejected" in \
        capsys.readouterr().out

    # a worse model, trained with the mask ignored, against the blessed one: its AUC drops by
    # more than max_auc_drop, so it is not blessed and nothing is pushed, though accuracy is not
    # gated here; the new mask mode re-runs Transform
    assert _run(manifest, workdir, "--mask-mode", "none", "--epochs", "8", "--min-accuracy",
                "0", "--min-auc-lower-bound", "0.9",
                "--min-attribution-inside", ATTRIBUTION_GATE) == 0
    out = capsys.readouterr().out
    assert "blessed: NO - auc changed by" in out and "pushed: nothing" in out, out
    # and the gates on the bootstrap interval's lower bound and on the attribution say so too:
    # blind to the region, it spreads its attribution over the whole picture
    assert "is below min_auc_lower_bound 0.9000" in out, out
    assert f"is below min_attribution_inside {ATTRIBUTION_GATE} (the model decides from " \
        "outside the region)" in out, out
    worse = summarize_run(config)
    assert worse.components["Transform"] == "COMPLETE", worse.components
    assert worse.components["Trainer"] == "COMPLETE" and not worse.blessed
    inputs, outputs = _evaluator_io(config)  # a different baseline: both models evaluated
    assert inputs["baseline_model"][0].id != inputs["model"][0].id
    assert sorted(_evaluated_models(outputs)) == ["baseline", "candidate"]
    assert sorted(name for name in os.listdir(model_dir) if name.isdigit()) == versions
    # the summary and the run's own report page show the candidate's AUC, not the baseline's
    result = tfma.load_eval_result(outputs["evaluation"][0].uri, model_name="candidate")
    candidate_auc = float(next(m for key, m in result.slicing_metrics if not key)[""][""]
                          ["auc"]["doubleValue"])
    assert worse.metrics["auc"] == pytest.approx(candidate_auc, abs=1e-12)
    assert f"report: {worse.report_path}" in out, out
    with open(worse.report_path, encoding="utf-8") as handle:
        page = handle.read()
    assert f'<td data-metric="auc">{candidate_auc:.4f}</td>' in page
    assert 'id="blessed">not blessed<' in page and "written by the run at" in page


# Lines `masktfx run` itself prints: the ingest line, the run and its log, one per component start
# and end (indented), the summary (indented under its `run` line), and its own warnings.
OUR_LINE = re.compile(r"^(ingested \d+ of \d+ rows .*|run \S+(: the libraries' output goes to \S+)?"
                      r"|  \S.*|masktfx run: warning: .*)$")
ERROR_LEVEL = re.compile(r"^(E\d{4}|F\d{4}|E external|ERROR|CRITICAL|Traceback)|\bERROR:")


def test_label_shuffled_data_is_not_blessed_and_the_terminal_shows_only_our_lines(tmp_path):
    """Through a pipe, as in CI: our lines only (at most 40), the libraries' output in the log."""
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=240, size=32, seed=7)
    rows = _rows(manifest)
    labels = [row["label"] for row in rows]
    random.Random(0).shuffle(labels)
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row, label in zip(rows, labels):
            writer.writerow({**row, "label": label})
    workdir = str(tmp_path / "work")
    done = subprocess.run([sys.executable, "-m", "masktfx.cli", "run", "--data", manifest,
                           "--workdir", workdir, *FLAGS, "--epochs", "5",
                           # what a model learns does not matter here: the smallest one
                           "--image-size", "16", "--attribution-regions", "0"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "blessed: NO" in out and "binary_accuracy" in out
    assert "pushed: nothing" in out
    config = PipelineConfig(workdir=workdir)
    assert not os.path.exists(os.path.join(config.resolved_serving_dir, config.model_name)) or \
        not os.listdir(os.path.join(config.resolved_serving_dir, config.model_name))
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) <= 40, lines
    assert [line for line in lines if not OUR_LINE.match(line)] == []
    assert [line for line in lines if ERROR_LEVEL.search(line)] == []
    for node in ("ImportExampleGen", "Transform", "Trainer", "Evaluator", "VersionedPusher"):
        assert f"  {node} COMPLETE" in out
    # the log: named by the run, holding what the libraries wrote (absl, Keras)
    run_id = latest_run_id(open_store(config), config.pipeline_name)
    log = os.path.join(workdir, "logs", f"{run_id}.log")
    assert f"output goes to {log}" in out
    with open(log, encoding="utf-8") as handle:
        text = handle.read()
    for written_by_a_library in ("INFO:absl:Component Transform is running.", "Epoch 1/"):
        assert written_by_a_library in text
    assert "[masktfx]   blessed: NO" in text  # our lines are in it too


def test_bad_config_fails_before_any_component(tmp_path, capsys):
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=8, size=16)
    for flag, value, message in (("--model-preset", "vgg", "model_preset"),
                                 ("--image-size", "0", "image_size"),
                                 ("--decision-threshold", "1.5", "decision_threshold"),
                                 ("--mask-mode", "blur", "mask_mode")):
        assert cli.main(["run", "--data", manifest, "--workdir", str(tmp_path / "w"), flag,
                         value]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_a_span_that_breaks_the_contract_stops_before_transform(tmp_path, capsys):
    """Span 2 has records without masks: ExampleValidator flags it and the run stops."""
    # 80 regions: 20 groups, enough for three splits of both classes
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=80, size=16)
    data_root = tmp_path / "ingested"
    assert cli.main(["ingest", manifest, "--output", str(data_root), "--span", "1",
                     "--no-progress", "--beam-args", "--runner=DirectRunner"]) == 0
    records = read_examples(str(data_root / "span-1" / features.SHARD_GLOB))
    (data_root / "span-2").mkdir()
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(str(data_root / "span-2" / "data-00000-of-00001.tfrecord.gz"),
                              options=options) as writer:
        for index, example in enumerate(records):
            if index > 0:  # the first record keeps its masks, the others lose them
                del example.features.feature[features.MASKS_KEY]
            writer.write(example.SerializeToString())
    workdir = str(tmp_path / "work")
    assert cli.main(["run", "--data", str(data_root), "--workdir", workdir, *FLAGS,
                     "--direct-running-mode", "in_memory"]) == 1
    err = capsys.readouterr().err
    assert "anomalies" in err and "'masks'" in err
    # the failing component, the reason, the log's last lines and its path
    assert "the pipeline failed in AnomalyGate: DataAnomaliesError" in err
    log = re.search(r"^full log: (.+)$", err, re.MULTILINE).group(1)
    assert os.path.isfile(log) and os.path.dirname(log) == os.path.join(workdir, "logs")
    summary = summarize_run(PipelineConfig(workdir=workdir))
    assert "Transform" not in summary.components or \
        summary.components["Transform"] not in ("COMPLETE", "CACHED")
