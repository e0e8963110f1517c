"""The config's command-line flags: one per PipelineConfig field, grouped by its section. Kept
out of masktfx.config, which the TFX module files import (and so fingerprint)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import fields
from typing import Any

from masktfx.config import SECTIONS, PipelineConfig


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (`image_size` -> `--image-size`), all defaulting to 'not given',
    in one `--help` group per config section."""
    groups = {section: parser.add_argument_group(
        f"{section}: {title}" + (" (these flags override the --config file)"
                                 if section == "pipeline" else ""))
        for section, title in SECTIONS.items()}
    for spec in fields(PipelineConfig):
        if not spec.metadata.get("cli", True):
            continue
        default = field_default(spec)
        shown = f" (default: {default})" if default not in ("", []) else ""
        kind = ({"action": argparse.BooleanOptionalAction} if spec.type in ("bool", bool)
                else {"metavar": "VALUE"})
        text = f"{spec.metadata.get('help', '')}{shown}".replace("%", "%%")  # argparse formats it
        groups[spec.metadata["section"]].add_argument(
            flag_name(spec.name), dest=f"cfg_{spec.name}", default=None, help=text, **kind)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def config_from_args(args: argparse.Namespace, base: PipelineConfig | None = None
                     ) -> PipelineConfig:
    """YAML file (if `--config`) first, then every flag the user gave, then validation."""
    config_path = getattr(args, "config", None)
    config = base or (PipelineConfig.from_yaml(config_path) if config_path else PipelineConfig())
    overrides = {
        spec.name: getattr(args, f"cfg_{spec.name}")
        for spec in fields(PipelineConfig)
        if getattr(args, f"cfg_{spec.name}", None) is not None
    }
    beam_args = getattr(args, "beam_args", None)
    if beam_args:
        overrides["beam_args"] = list(config.beam_args) + list(beam_args)
    merged = {**dataclasses.asdict(config), **overrides}
    return PipelineConfig.from_dict(merged, source="command line").validate()


def field_default(spec: dataclasses.Field) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    return spec.default_factory()  # type: ignore[misc]
