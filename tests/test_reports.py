"""`masktfx report`, `runs` and `lineage` on a small real run (slow: two pipeline runs)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import tensorflow_model_analysis as tfma
from PIL import Image

from masktfx import attribution, cli, features
from masktfx.config import PipelineConfig
from masktfx.demo_data import write_synthetic
from masktfx.pipeline.lineage import lineage
from masktfx.pipeline.metadata_connection import open_store
from masktfx.pipeline.summary import format_attribution, summarize_run
from masktfx.records import read_examples

pytestmark = pytest.mark.slow

FLAGS = ["--image-size", "16", "--epochs", "4", "--batch-size", "16", "--min-accuracy", "0",
         "--direct-running-mode", "in_memory", "--threshold-policy", "youden"]


class _Cells(HTMLParser):
    """Text of every element carrying a data-* attribute, plus the embedded images."""

    def __init__(self):
        super().__init__()
        self.cells: dict[tuple, str] = {}
        self.images: list[str] = []
        self.headings: list[str] = []
        self._open: tuple | None = None
        self._heading = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        key = tuple(sorted((k, v) for k, v in attrs.items() if k.startswith("data-")))
        if key:
            self._open = key
        self._heading = tag == "h2"

    def handle_data(self, data):
        if self._open is not None:
            self.cells[self._open] = data.strip()
            self._open = None
        if self._heading:
            self.headings.append(data.strip())
            self._heading = False


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    # 40 groups: the test split gets 5, enough for a cluster-bootstrap interval
    manifest = write_synthetic(str(root / "data"), num_examples=160, size=24)
    workdir = str(root / "work")
    assert cli.main(["run", "--data", manifest, "--workdir", workdir, *FLAGS]) == 0
    first = summarize_run(PipelineConfig.for_workdir(workdir))
    first_report = str(root / "first.html")
    assert cli.main(["report", "--workdir", workdir, "--output", first_report]) == 0
    assert cli.main(["run", "--data", manifest, "--workdir", workdir, *FLAGS]) == 0
    return workdir, first, first_report


def _parse(path: str) -> _Cells:
    cells = _Cells()
    with open(path, encoding="utf-8") as handle:
        cells.feed(handle.read())
    return cells


def test_the_report_holds_the_runs_own_numbers(two_runs):
    workdir, first, path = two_runs
    config = PipelineConfig.for_workdir(workdir)
    page = _parse(path)
    assert page.headings == ["Decision", "Data", "Training", "Evaluation", "Lineage"]

    # evaluation: every metric on the page is TFMA's, to the digits shown
    uri = lineage(config, first.pushed_version).evaluation_uri
    result = tfma.load_eval_result(uri)
    overall = next(m for key, m in result.slicing_metrics if not key)[""][""]
    shown = {dict(key)["data-metric"]: text for key, text in page.cells.items()
             if "data-metric" in dict(key)}
    assert {"auc", "binary_accuracy", "precision", "recall", "example_count"} <= set(shown)
    for name, text in shown.items():
        value = float(overall[name]["doubleValue"])  # TFMA writes an undefined one as "NaN"
        expected = str(int(value)) if name == "example_count" else f"{value:.4f}"
        assert text == expected, (name, text, value)
    matrix = overall["confusion_matrix_at_thresholds"]["confusionMatrixAtThresholds"][
        "matrices"][0]
    # the Evaluator counted labels at the threshold the model serves with (youden's, chosen
    # by the Trainer on the validation split), which the page and the lineage show
    point = first.operating_point
    assert point["policy"] == "youden" and point["threshold"] != config.decision_threshold
    # TFMA reports its thresholds rounded to 6 decimals
    assert matrix["threshold"] == pytest.approx(point["threshold"], abs=5e-7)
    assert f"youden -&gt; threshold {point['threshold']:.4f}" in open(path, encoding="utf-8").read()
    assert lineage(config, first.pushed_version).operating_point == point
    for cell, key in (("tp", "truePositives"), ("fp", "falsePositives"),
                      ("tn", "trueNegatives"), ("fn", "falseNegatives")):
        assert page.cells[(("data-cell", cell),)] == str(int(matrix.get(key, 0)))

    # data: counts and label balance per split equal the records ImportExampleGen wrote
    examples_uri = lineage(config, first.pushed_version).examples_uri
    for split in features.SPLITS:
        records = read_examples(os.path.join(examples_uri, f"Split-{split}", "*"))
        labels = [r.features.feature[features.LABEL_KEY].int64_list.value[0] for r in records]
        assert page.cells[(("data-field", "examples"), ("data-split", split))] == str(len(labels))
        assert page.cells[(("data-field", "positives"), ("data-split", split))] == \
            str(sum(labels))
    eval_count = first.examples[features.TEST_SPLIT]
    assert sum(int(page.cells[(("data-cell", c),)]) for c in ("tp", "fp", "tn", "fn")) == \
        eval_count

    # where the model looked: the Evaluator's attribution of every test region (fewer than
    # attribution_regions here), as the summary line says it
    with open(os.path.join(uri, attribution.ATTRIBUTION_FILE), encoding="utf-8") as handle:
        found = json.load(handle)
    assert found["regions"] == eval_count == len(found["shares"])
    assert found["overall"]["median"] == pytest.approx(float(np.median(found["shares"])),
                                                       abs=1e-4)
    assert format_attribution(found) in open(path, encoding="utf-8").read()

    # every figure is an embedded PNG that decodes (histogram, grid, training, curves, calib.,
    # risk-coverage, attribution)
    assert len(page.images) == 7
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).verify()

    text = open(path, encoding="utf-8").read()
    assert f'id="pushed-version">{first.pushed_version}<' in text
    assert "No baseline" in text  # the first blessed model had none
    assert '<span class="yes" id="serving-check">passed</span>, masktfx serve answered' in text


def test_every_run_writes_its_own_report_page(two_runs):
    workdir, first, path = two_runs
    config = PipelineConfig.for_workdir(workdir)
    # the RunReport step's page holds the numbers `masktfx report` reads back from MLMD later
    assert first.report_path.startswith(os.path.join(config.pipeline_root, "RunReport"))
    own, later = _parse(first.report_path), _parse(path)
    assert own.cells and own.cells == later.cells
    assert own.headings == later.headings and len(own.images) == len(later.images) == 7
    text = open(first.report_path, encoding="utf-8").read()
    assert f"version {first.pushed_version} at {first.pushed_path}" in text
    assert f"MaskTFX run {first.run_id}" in text
    # MLMD records each run's page as the type Kubeflow's UI shows as a page (the re-run
    # evaluates against the first model, so it writes a page of its own)
    again = summarize_run(config)
    pages = open_store(config).get_artifacts_by_type("system.HTML")
    assert [page.uri for page in pages] == [first.report_path, again.report_path]
    assert f"MaskTFX run {again.run_id}" in open(again.report_path, encoding="utf-8").read()


def test_runs_and_lineage_follow_the_cache(two_runs, capsys):
    workdir, first, _ = two_runs
    capsys.readouterr()
    assert cli.main(["runs", "--workdir", workdir, "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert len(runs) == 2 and runs[0]["run_id"] == first.run_id
    assert [r["spans"] for r in runs] == [[1], [1]]
    assert runs[1]["pushed_version"] == first.pushed_version, runs  # nothing new pushed
    assert cli.main(["runs", "--workdir", workdir]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["run", "started", "(UTC)"] and len(table) == 3
    assert first.pushed_version in table[1]

    assert cli.main(["lineage", "--workdir", workdir, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["version"] == first.pushed_version
    assert found["trained_in_run"] == first.run_id and found["pushed_by_run"] == first.run_id
    assert found["spans"] == [1] and found["evaluated_spans"] == [1]
    assert found["train_examples"] == first.examples["train"]
    assert found["validation_examples"] == first.examples["validation"]
    assert found["test_examples"] == first.examples["test"]
    assert cli.main(["lineage", "--workdir", workdir, "--version", "123"]) == 2
    assert "pushed versions: " + first.pushed_version in capsys.readouterr().err
    # the labels models.config gives the version
    assert found["labels"] == []
    assert cli.main(["promote", "--workdir", workdir, "--version", first.pushed_version,
                     "--label", "stable"]) == 0
    capsys.readouterr()
    assert cli.main(["lineage", "--workdir", workdir, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == ["stable"]
    assert cli.main(["lineage", "--workdir", workdir]) == 0
    heading = capsys.readouterr().out.splitlines()[0]
    assert heading.startswith(f"version {first.pushed_version} at ")
    assert heading.endswith("(labels: stable)"), heading

    # the second run's report compares against the first model as its baseline
    out = os.path.join(workdir, "second.html")
    assert cli.main(["report", "--workdir", workdir, "--output", out]) == 0
    text = open(out, encoding="utf-8").read()
    assert "Baseline (last blessed model)" in text and "Nothing pushed by this run" in text
    second = summarize_run(PipelineConfig.for_workdir(workdir))
    auc = f"{second.metrics['auc']:.4f}"
    assert f"<td>auc</td><td>{auc}</td><td>{auc}</td><td>+0.0000</td>" in text  # same model
    assert cli.main(["report", "--workdir", workdir, "--run", "no-such-run"]) == 2


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("MASKTFX_REQUIRE_CHROMIUM"):
        pytest.fail("chromium is required here (MASKTFX_REQUIRE_CHROMIUM) but not installed")
    return found


def test_the_report_loads_in_headless_chromium_without_console_errors(two_runs, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    _, _, path = two_runs
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", f"file://{path}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if re.search(r":CONSOLE", line)]
    assert not console, console
    assert "<h2>Evaluation</h2>" in result.stdout and "Lineage" in result.stdout


def test_the_reports_intervals_are_a_bootstrap_of_the_test_predictions(two_runs):
    """The page's overall AUC interval, against a direct cluster bootstrap of the pushed model's
    test predictions: sklearn's AUC over the same resamples of the test split's groups."""
    import glob

    import numpy as np
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    from masktfx.intervals import resample_indices

    workdir, first, path = two_runs
    config = PipelineConfig.for_workdir(workdir)
    found = lineage(config, first.pushed_version)
    files = sorted(glob.glob(os.path.join(found.examples_uri, f"Split-{features.TEST_SPLIT}",
                                          "*")))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    parsed = [tf.train.Example.FromString(r).features.feature for r in records]
    labels = np.array([f[features.LABEL_KEY].int64_list.value[0] for f in parsed])
    groups = np.array([f[features.GROUP_KEY].bytes_list.value[0].decode() for f in parsed])
    serve = tf.saved_model.load(found.path).signatures[features.SERVING_SIGNATURE]
    scores = serve(examples=tf.constant(records))[features.PROBABILITY_OUTPUT].numpy()
    names = sorted(set(groups))
    assert len(names) >= 5  # enough groups for an interval
    members = [np.flatnonzero(groups == name) for name in names]
    draws = [np.concatenate([members[g] for g in row])
             for row in resample_indices(len(names), 200, config.seed)]
    aucs = [roc_auc_score(labels[draw], scores[draw]) for draw in draws
            if len(set(labels[draw])) == 2]
    expected = [roc_auc_score(labels, scores), np.percentile(aucs, 2.5),
                np.percentile(aucs, 97.5)]
    page = _parse(path)
    shown = page.cells[(("data-interval", "auc"), ("data-interval-slice", "overall"))]
    assert re.fullmatch(r"\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\]", shown), shown
    # the page rounds to 4 decimals; an AUC of a few dozen regions can sit on a rounding edge
    # (0.65625), where the two sums round apart
    assert [float(value) for value in re.findall(r"\d\.\d{4}", shown)] == pytest.approx(
        expected, abs=6e-5)
    assert any(dict(key).get("data-interval-slice", "").startswith("site=")
               for key in page.cells)  # and a row per slice
