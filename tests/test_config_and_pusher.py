"""The configuration object, the versioned pusher's publishing, the Evaluator's reuse lookup."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from masktfx.cli.flags import add_config_flags, config_from_args
from masktfx.components import versioned_pusher
from masktfx.components.versioned_pusher import existing_versions, publish_version
from masktfx.config import SECTIONS, ConfigError, PipelineConfig


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_flags(parser)
    return parser.parse_args(argv)


def test_yaml_then_flags_then_validation(tmp_path):
    path = tmp_path / "masktfx.yaml"
    path.write_text("image_size: 48\nmask_mode: zero\naugment: false\nbeam_args: [--foo=1]\n")
    config = config_from_args(_parse(["--config", str(path), "--image-size", "96"]))
    assert config.image_size == 96 and config.mask_mode == "zero" and config.augment is False
    assert config.beam_args == ["--foo=1"]
    assert config.beam_pipeline_args[:2] == ["--direct_running_mode=multi_processing",
                                             "--direct_num_workers=0"]
    assert PipelineConfig.from_dict(config.to_custom_config()) == config


def test_flags_read_like_their_peers(tmp_path, capsys):
    path = tmp_path / "masktfx.yaml"
    path.write_text("augment: false\n")
    assert config_from_args(_parse(["--config", str(path), "--augment"])).augment is True
    assert config_from_args(_parse(["--no-augment"])).augment is False
    assert config_from_args(_parse(["--config", str(path)])).augment is False
    from masktfx import __version__, cli

    help_text = cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "(default: )" not in help_text and "--augment VALUE" not in help_text
    assert "--no-augment" in help_text
    for section, title in SECTIONS.items():  # one group per config section
        assert f"{section}: {title}" in help_text
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    from importlib import metadata
    from platform import python_version

    assert exited.value.code == 0 and capsys.readouterr().out.strip() == (
        f"masktfx {__version__} (TFX {metadata.version('tfx')}, TensorFlow "
        f"{metadata.version('tensorflow')}, Python {python_version()})")


@pytest.mark.parametrize("yaml_text, message", [
    ("image_size: 0\n", "'image_size' must be between 8 and 1024, got 0"),
    ("model_preset: vgg\n", "'model_preset' must be one of seed, resnet"),
    ("decision_threshold: 1.5\n", "'decision_threshold' must be between 0 and 1"),
    ("mask_mode: blur\n", "'mask_mode' must be one of crop, zero, channel, none"),
    ("image_sise: 64\n", "unknown field(s) image_sise"),
    ("epochs: many\n", "field 'epochs' expects int, got 'many'"),
    ("- a list\n", "expected a mapping"),
])
def test_bad_values_name_the_field(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as error:
        config_from_args(_parse(["--config", str(path)]))
    assert message in str(error.value)


def _model(tmp_path, name: str, payload: str) -> str:
    model = tmp_path / name
    (model / "variables").mkdir(parents=True, exist_ok=True)
    (model / "saved_model.pb").write_text(payload)
    (model / "variables" / "variables.index").write_text(payload)
    return str(model)


def test_publish_versions_increase_and_same_model_is_not_pushed_twice(tmp_path):
    base = str(tmp_path / "serving" / "m")
    first, path, published = publish_version(_model(tmp_path, "a", "one"), base)
    assert published and open(os.path.join(path, "saved_model.pb")).read() == "one"
    again, _, published = publish_version(_model(tmp_path, "a", "one"), base)
    assert (again, published) == (first, False)
    second, _, published = publish_version(_model(tmp_path, "b", "two"), base)
    assert published and second > first
    assert existing_versions(base) == [first, second]
    assert not [n for n in os.listdir(base) if n.startswith(versioned_pusher.PARTIAL_PREFIX)]


def test_a_failed_copy_leaves_no_partial_version_and_the_old_one_intact(tmp_path, monkeypatch):
    base = str(tmp_path / "serving" / "m")
    first, _, _ = publish_version(_model(tmp_path, "a", "one"), base)

    def copy_until_full(source, target):
        os.makedirs(target)
        with open(os.path.join(target, "saved_model.pb"), "w") as handle:
            handle.write("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(versioned_pusher.shutil, "copytree", copy_until_full)
    with pytest.raises(OSError, match="No space left"):
        publish_version(_model(tmp_path, "b", "two"), base)
    assert existing_versions(base) == [first]
    assert sorted(os.listdir(base)) == sorted([str(first), versioned_pusher.SOURCES_FILE])


def test_evaluator_finds_only_an_evaluation_with_the_same_model_examples_and_config(tmp_path):
    from masktfx.components.evaluator import EVALUATION_RECORD, find_evaluation

    record = {"model": ["/root/Trainer/model/7"], "examples": ["/root/ImportExampleGen/3"],
              "example_splits": None, "eval_config": '{"metrics": "auc"}'}
    evaluations = tmp_path / "Evaluator" / "evaluation"
    for name, saved in {"10": {**record, "eval_config": '{"metrics": "accuracy"}'},
                        "11": {**record, "model": ["/root/Trainer/model/8"]},
                        "12": None,  # a record cut short
                        "13": {**record, "reused_from": "/elsewhere"}}.items():
        (evaluations / name).mkdir(parents=True)
        (evaluations / name / EVALUATION_RECORD).write_text(
            json.dumps(saved) if saved else '{"model": ["/root/Tra')
    (evaluations / "14").mkdir()  # an evaluation without a record (a baseline comparison)
    output = str(evaluations / "15")
    assert find_evaluation(output, record) == str(evaluations / "13")
    assert find_evaluation(str(evaluations / "13"), record) is None  # never itself
    assert find_evaluation(output, {**record, "examples": ["/root/ImportExampleGen/4"]}) is None


def test_ingest_fills_only_the_beam_flags_the_caller_left_out():
    from masktfx.beam_args import ingest_beam_args

    assert ingest_beam_args([]) == ["--runner=DirectRunner",
                                    "--direct_running_mode=multi_processing",
                                    "--direct_num_workers=0"]
    # both spellings of a flag count as given, as they do for Beam
    args = ingest_beam_args(["--runner", "DataflowRunner", "--direct_num_workers=3"])
    assert args == ["--runner", "DataflowRunner", "--direct_num_workers=3",
                    "--direct_running_mode=multi_processing"]


def test_metadata_locations_are_checked_before_anything_runs():
    location = PipelineConfig(metadata="mysql://ml@db.kubeflow:3306/metadb").metadata_location
    assert (location.host, location.port, location.database, location.user) == (
        "db.kubeflow", 3306, "metadb", "ml")
    assert PipelineConfig(workdir="/w").metadata_location.path == "/w/metadata.sqlite"
    assert PipelineConfig(metadata="sqlite:/var/m.sqlite").metadata_path == "/var/m.sqlite"
    for value, message in (("mysql://ml:pw@db:3306/m", "holds a password"),
                           ("mysql://db:3306/m", "must be mysql://USER@HOST"),
                           ("mysql://ml@db:port/m", "port that is not a number"),
                           ("postgres://ml@db/m", "must be sqlite:PATH or mysql://")):
        with pytest.raises(ConfigError, match=message):
            PipelineConfig(metadata=value).validate()


def test_the_metadata_password_comes_from_the_environment_or_the_file_it_names(
        tmp_path, monkeypatch):
    from masktfx.config_values import metadata_password

    monkeypatch.setenv("MASKTFX_METADATA_PASSWORD", "from-env")
    monkeypatch.delenv("MASKTFX_METADATA_PASSWORD_FILE", raising=False)
    assert metadata_password() == "from-env"
    (tmp_path / "password").write_text("from-secret\n")  # as a mounted Secret holds it
    monkeypatch.setenv("MASKTFX_METADATA_PASSWORD_FILE", str(tmp_path / "password"))
    assert metadata_password() == "from-secret"
    monkeypatch.setenv("MASKTFX_METADATA_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="MASKTFX_METADATA_PASSWORD_FILE=.*missing: cannot "
                                          "read the password"):
        metadata_password()
