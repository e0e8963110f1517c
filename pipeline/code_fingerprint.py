"""The fingerprint of the code a TFX module file runs: its own source and every first-party module
it imports, followed transitively.

Transform and the Trainer name their entry points by module path (pipeline/pipeline.py), which
TFX's cache key holds as a string only: an edit of the module files, or of code they import
(`masktfx.config`, say), would leave them served from a stale cache. The fingerprint goes into
their `custom_config`, which TFX keys its cache on.
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
            if node.level:  # relative: resolve against the importing file's package
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


def source_files(entry_files: Iterable[str], first_party: Sequence[str] = FIRST_PARTY
                 ) -> list[str]:
    """The entry files and every first-party source file they import, transitively (an entry
    file that is not Python, a template say, is taken as it is)."""
    seen: dict[str, None] = {}
    pending = [os.path.abspath(path) for path in entry_files]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen[path] = None
        if not path.endswith(".py"):
            continue
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
        package = _package_of(path)
        for name in sorted(_imported_names(source, path, package, first_party)):
            origin = _origin(name)
            if origin and os.path.abspath(origin) not in seen:
                pending.append(os.path.abspath(origin))
    return sorted(seen)


def _package_of(path: str) -> str:
    """The dotted package a first-party file belongs to (for relative imports)."""
    parts = []
    folder = os.path.dirname(path)
    while os.path.exists(os.path.join(folder, "__init__.py")):
        parts.append(os.path.basename(folder))
        folder = os.path.dirname(folder)
    return ".".join(reversed(parts))


def code_fingerprint(entry_files: Iterable[str], first_party: Sequence[str] = FIRST_PARTY
                     ) -> str:
    """sha256 over the sources (named by their path below their package root) of the entry files
    and what they import."""
    digest = hashlib.sha256()
    for path in source_files(entry_files, first_party):
        package = _package_of(path)
        digest.update(f"{package}/{os.path.basename(path)}\0".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read())
        digest.update(b"\0")
    return digest.hexdigest()
