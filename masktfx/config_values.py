"""Parsing of config values written as text (YAML and CLI flags): below `masktfx.config`, so
the config's own module holds only its fields and their checks."""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def parse_threshold_policy(policy: str) -> tuple[str, float | None]:
    """("fixed" | "youden", None) or ("min_sensitivity" | "min_precision", target in (0, 1])."""
    kind, _, target = policy.partition(":")
    if kind in ("fixed", "youden") and not target:
        return kind, None
    if kind in ("min_sensitivity", "min_precision"):
        try:
            value = float(target)
        except ValueError:
            value = -1.0
        if 0.0 < value <= 1.0:
            return kind, value
        raise ValueError(f"{kind} needs a target in (0, 1], as in {kind}:0.9; got {policy!r}")
    raise ValueError(f"must be fixed, youden, min_sensitivity:X or min_precision:X; "
                     f"got {policy!r}")


def coerce_field_value(spec: dataclasses.Field, value: Any, source: str) -> Any:
    """Accept YAML/CLI values of the field's type, with clear errors for the rest."""
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", "")
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "str":
            return str(value)
        if kind in ("list[int]", "list[float]"):
            items = value.replace(",", " ").split() if isinstance(value, str) else value
            if any(isinstance(item, bool) for item in items):
                raise ValueError(value)
            if kind == "list[float]":
                return [float(item) for item in items]
            if any(isinstance(item, float) and not item.is_integer() for item in items):
                raise ValueError(value)
            return [int(item) for item in items]
        if kind.startswith("list"):
            if isinstance(value, str):
                return value.split()
            return [str(item) for item in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: field {spec.name!r} expects {kind}, got {value!r}") from None
    return value
