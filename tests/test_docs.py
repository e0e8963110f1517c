"""The documentation stays true to the code: the configuration page is the fields' own help,
and the README is a short index whose links resolve."""

from __future__ import annotations

import os
import re
from dataclasses import fields

from masktfx.cli.config_doc import configuration_markdown
from masktfx.config import SECTIONS, PipelineConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(relative: str) -> str:
    with open(os.path.join(ROOT, relative), encoding="utf-8") as handle:
        return handle.read()


def test_the_configuration_page_is_generated_from_the_fields():
    page = _read("docs/configuration.md")
    assert page == configuration_markdown(), "docs/configuration.md is stale: run `make docs`"
    for spec in fields(PipelineConfig):
        assert f"| `{spec.name}` |" in page
        assert spec.metadata["section"] in SECTIONS, spec.name


def test_the_readme_is_short_and_its_links_resolve():
    readme = _read("README.md")
    assert len(readme.splitlines()) <= 220
    documents = ["README.md", *(os.path.join("docs", name) for name in
                                sorted(os.listdir(os.path.join(ROOT, "docs")))
                                if name.endswith(".md"))]
    for document in documents:
        folder = os.path.dirname(document)
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _read(document)):
            if "://" in target:
                continue
            assert os.path.exists(os.path.join(ROOT, folder, target)), (document, target)
