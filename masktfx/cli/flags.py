"""The config's command-line flags: one per PipelineConfig field, grouped by the component that
reads it. Kept out of masktfx.config, which the TFX module files import (and so fingerprint)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import fields
from typing import Any

from masktfx.config import TRAINER_FIELDS, TRANSFORM_FIELDS, PipelineConfig


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (`image_size` -> `--image-size`), all defaulting to 'not given'."""
    titles = {"pipeline": "pipeline (these flags override the --config file)",
              "transform": "Transform", "trainer": "Trainer",
              "evaluator": "Evaluator (the blessing gate and the served threshold)",
              "serving check": "ServingCheck (before the push)", "beam": "Beam"}
    groups = {key: parser.add_argument_group(title) for key, title in titles.items()}
    for spec in fields(PipelineConfig):
        if not spec.metadata.get("cli", True):
            continue
        group = groups[_component_of(spec.name)]
        flag = "--" + spec.name.replace("_", "-")
        default = _default(spec)
        shown = f" (default: {default})" if default not in ("", []) else ""
        kind = ({"action": argparse.BooleanOptionalAction} if spec.type in ("bool", bool)
                else {"metavar": "VALUE"})
        text = f"{spec.metadata.get('help', '')}{shown}".replace("%", "%%")  # argparse formats it
        group.add_argument(flag, dest=f"cfg_{spec.name}", default=None, help=text, **kind)


def _component_of(name: str) -> str:
    """Which `--help` group a field's flag is shown in."""
    if name in TRANSFORM_FIELDS or name == "max_pixels":
        return "transform"
    if name in ("decision_threshold", "threshold_policy", "min_accuracy", "max_auc_drop",
                "confidence_intervals", "min_slice_auc", "min_slice_examples",
                "min_auc_lower_bound"):
        return "evaluator"
    if name in TRAINER_FIELDS or name == "train_steps":
        return "trainer"
    if name.startswith("serving_check"):
        return "serving check"
    if name.startswith(("direct_", "beam_")):
        return "beam"
    return "pipeline"


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


def _default(spec: dataclasses.Field) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    return spec.default_factory()  # type: ignore[misc]
