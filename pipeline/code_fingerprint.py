"""The fingerprint of the code a TFX component runs: its entry modules and every first-party module
they import, followed transitively.

Transform and the Trainer name their entry points by module path (pipeline/pipeline.py), which
TFX's cache key holds as a string only: an edit of the module files, or of code they import
(`masktfx.config`, say), would leave them served from a stale cache. The fingerprint goes into
their `custom_config`, which TFX keys its cache on.

Each file is named in it by its dotted module name (`masktfx.modules.transform`), never by where
it lies: the repository maps `modules/` into the package (pyproject's package-dir) while the
image installs it under `masktfx/`, and the same code must have one fingerprint in both.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
from collections.abc import Iterable, Sequence

FIRST_PARTY = ("masktfx",)


def _imported_names(source: str, filename: str, package: str, first_party: Sequence[str]
                    ) -> set[str]:
    """Dotted module names an import statement in `source` may refer to (first-party only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in first_party}


def _origin(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None  # `from package import function`: the name is no module
    return spec.origin if spec and spec.origin and spec.origin.endswith(".py") else None


def source_files(modules: Iterable[str], first_party: Sequence[str] = FIRST_PARTY
                 ) -> dict[str, str]:
    """Dotted name -> file of the entry modules and every first-party module they import,
    transitively (sorted by name)."""
    seen: dict[str, str] = {}
    entries = list(modules)
    pending = list(entries)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = _origin(name)
        if path is None:
            if name in entries:
                raise ValueError(f"code_fingerprint: no Python module {name!r}")
            continue
        seen[name] = path
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
        package = name if os.path.basename(path) == "__init__.py" else name.rpartition(".")[0]
        pending.extend(sorted(_imported_names(source, path, package, first_party) - set(seen)))
    return dict(sorted(seen.items()))


def code_fingerprint(modules: Iterable[str], data_files: Iterable[str] = (),
                     first_party: Sequence[str] = FIRST_PARTY) -> str:
    """sha256 over the sources of the entry modules and what they import, each under its module
    name, and over `data_files` (a template, say) under their file names."""
    named = [*source_files(list(modules), first_party).items(),
             *((os.path.basename(path), path) for path in sorted(data_files))]
    digest = hashlib.sha256()
    for name, path in named:
        digest.update(f"{name}\0".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read())
        digest.update(b"\0")
    return digest.hexdigest()
