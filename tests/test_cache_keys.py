"""What each TFX component's cache key holds: the settings and the code it depends on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from masktfx.config import CODE_FINGERPRINT_KEY, TRAINER_FIELDS, TRANSFORM_FIELDS, PipelineConfig
from masktfx.pipeline.code_fingerprint import code_fingerprint, source_files


def test_components_get_only_the_fields_they_depend_on():
    base = PipelineConfig(num_views=1, num_masks=1)
    gate_only = base.replace(min_accuracy=0.01, max_auc_drop=0.5, beam_args=["--foo=1"],
                             serving_dir="/elsewhere", direct_num_workers=2)
    for names in (TRANSFORM_FIELDS, TRAINER_FIELDS):
        assert base.component_config(names) == gate_only.component_config(names)
    bigger = base.replace(image_size=96)
    assert base.component_config(TRANSFORM_FIELDS) != bigger.component_config(TRANSFORM_FIELDS)
    longer = base.replace(epochs=3)
    assert base.component_config(TRANSFORM_FIELDS) == longer.component_config(TRANSFORM_FIELDS)
    assert base.component_config(TRAINER_FIELDS) != longer.component_config(TRAINER_FIELDS)
    # the module files read their settings back, fingerprint and all
    values = bigger.component_config(TRAINER_FIELDS, "abc")
    assert values[CODE_FINGERPRINT_KEY] == "abc"
    restored = PipelineConfig.from_component_config(values)
    assert restored.image_size == 96 and restored.component_config(TRAINER_FIELDS) == \
        bigger.component_config(TRAINER_FIELDS)


def test_fingerprint_follows_the_code_the_module_imports(tmp_path, monkeypatch):
    package = tmp_path / "fpdemo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def crop(x):\n    return x\n")
    (package / "unrelated.py").write_text("VALUE = 1\n")
    (package / "deep.py").write_text("from . import helpers\n")
    entry = package / "transform.py"
    entry.write_text("import numpy\nfrom fpdemo.deep import helpers\n\n"
                     "def preprocessing_fn(x):\n    return helpers.crop(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = code_fingerprint(["fpdemo.transform"], first_party=("fpdemo",))
    assert list(source_files(["fpdemo.transform"], ("fpdemo",))) == [
        "fpdemo", "fpdemo.deep", "fpdemo.helpers", "fpdemo.transform"]
    (package / "unrelated.py").write_text("VALUE = 2\n")
    assert code_fingerprint(["fpdemo.transform"], first_party=("fpdemo",)) == first
    (package / "helpers.py").write_text("def crop(x):\n    return x[1:]\n")
    assert code_fingerprint(["fpdemo.transform"], first_party=("fpdemo",)) != first
    sys.modules.pop("fpdemo", None)


def test_the_transform_fingerprint_covers_the_config_it_imports():
    from masktfx.pipeline.pipeline import TRAINER_MODULE, TRANSFORM_MODULE

    transform_modules = source_files([TRANSFORM_MODULE])
    assert "masktfx.config" in transform_modules
    assert "masktfx.modules.model" in source_files([TRAINER_MODULE])
    assert "masktfx.modules.model" not in transform_modules


def test_the_fingerprint_is_the_same_wherever_the_package_is_installed(tmp_path):
    """The repository maps modules/ into the package (package-dir); a wheel installs it under
    masktfx/: the same code must key the cache the same in both."""
    from masktfx.pipeline.pipeline import TRAINER_MODULE, TRANSFORM_MODULE

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source, site = tmp_path / "source", tmp_path / "site"
    # a copy: building the wheel writes build/ and egg-info into the tree it builds
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(
        ".*", "build", "demo", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                    str(site), str(source)], check=True, cwd=tmp_path, capture_output=True)
    installed = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import masktfx; "
         "from masktfx.pipeline.code_fingerprint import code_fingerprint as f; "
         "print(masktfx.__file__); print(f([sys.argv[2]]), f([sys.argv[3]]))",
         str(site), TRANSFORM_MODULE, TRAINER_MODULE],
        check=True, cwd=tmp_path, capture_output=True, text=True).stdout.split("\n")
    assert installed[0].startswith(str(site))  # the wheel's copy, not this checkout
    assert installed[1].split() == [code_fingerprint([TRANSFORM_MODULE]),
                                    code_fingerprint([TRAINER_MODULE])]


def test_transform_and_trainer_are_keyed_on_the_fingerprint_of_their_code(tmp_path):
    """TFX keys its cache on `custom_config`: a Transform or Trainer whose code changed runs
    again (a changed `custom_config` re-runs them in the e2e test)."""
    import json

    from masktfx.pipeline.pipeline import TRAINER_MODULE, TRANSFORM_MODULE, create_pipeline

    config = PipelineConfig(workdir=str(tmp_path), data_root=str(tmp_path / "data"),
                            num_views=1, num_masks=1, channels=1)
    nodes = {node.id: node for node in create_pipeline(config).components}
    for node_id, module in (("Transform", TRANSFORM_MODULE), ("Trainer", TRAINER_MODULE)):
        custom = json.loads(nodes[node_id].exec_properties["custom_config"])
        assert custom[CODE_FINGERPRINT_KEY] == code_fingerprint([module]), node_id
        assert {k: v for k, v in custom.items() if k != CODE_FINGERPRINT_KEY} == \
            config.component_config(TRANSFORM_FIELDS if node_id == "Transform"
                                    else TRAINER_FIELDS)


def test_the_scoring_steps_cache_key_follows_the_data_under_its_path(tmp_path):
    from masktfx.pipeline.pipeline import data_fingerprint

    survey = tmp_path / "survey"
    survey.mkdir()
    (survey / "manifest.csv").write_text("id,image,mask\n")
    first = data_fingerprint(str(survey))
    assert first == data_fingerprint(str(survey))
    (survey / "a.png").write_bytes(b"new region")  # new data under the same path
    second = data_fingerprint(str(survey))
    assert second != first
    (survey / "a.png").write_bytes(b"changed region")
    assert data_fingerprint(str(survey)) != second
    assert data_fingerprint(str(survey / "manifest.csv")) != ""
    assert data_fingerprint(str(tmp_path / "in-a-pod")) == ""  # not on this machine
