"""docs/configuration.md, generated from PipelineConfig's fields: their section, help and default.

`make docs` writes it; tests/test_docs.py fails when the file and the fields disagree, so the
page cannot drift from the code. Run as `python -m masktfx.cli.config_doc [OUTPUT]`.
"""

from __future__ import annotations

import sys
from dataclasses import fields

from masktfx.cli.flags import field_default, flag_name
from masktfx.config import SECTIONS, PipelineConfig

HEADER = """# Configuration

<!-- Generated from masktfx/config.py by `make docs`; tests/test_docs.py checks it. Edit the
fields' help there, not this page. -->

One `PipelineConfig` flows from a YAML file (`masktfx run --config FILE`, whose keys are the
field names below) and the flags (every field has one; a flag overrides the file) to
`create_pipeline`, and from there each component gets the fields of its section: Transform the
`transform` section, the Trainer `transform` and `trainer` (TFX keys their caches on exactly
those). What the main settings do, at more length: [settings.md](settings.md).
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _shown(value: object) -> str:
    if value in ("", []):
        return "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def configuration_markdown() -> str:
    """The whole page, one table per section, fields in their order in the class."""
    parts = [HEADER]
    for section, title in SECTIONS.items():
        rows = [spec for spec in fields(PipelineConfig) if spec.metadata["section"] == section]
        parts.append(f"\n## {section}: {title}\n\n| field | flag | default | meaning |\n"
                     "|---|---|---|---|\n")
        for spec in rows:
            flag = f"`{flag_name(spec.name)}`" if spec.metadata.get("cli", True) else "(YAML only)"
            parts.append(f"| `{spec.name}` | {flag} | `{_cell(_shown(field_default(spec)))}` | "
                         f"{_cell(spec.metadata.get('help', ''))} |\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    page = configuration_markdown()
    if argv:
        with open(argv[0], "w", encoding="utf-8") as handle:
            handle.write(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
