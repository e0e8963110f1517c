#!/usr/bin/env bash
# The import-linter contracts of pyproject.toml, checked on the package as it installs: the
# wheel maps pipeline/, components/, modules/ and serving/ into `masktfx`, which an import graph
# of the source tree alone cannot see. Also checks that the wheel's only top-level package is
# masktfx. Used by `make lint`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
root=$(pwd)
work=$(mktemp -d)
# setuptools builds in ./build; leave the checkout as it was
had_build=$([ -e build ] && echo yes || echo no)
cleanup() { rm -rf "$work"; if [ "$had_build" = no ]; then rm -rf "$root/build"; fi; }
trap cleanup EXIT
"$VENV/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheel" . 2>&1 \
  | grep -v '^WARNING: Location' >&2 || true
wheel=$(ls "$work"/wheel/masktfx-*.whl)
mkdir "$work/tree"
"$VENV/bin/python" -m zipfile -e "$wheel" "$work/tree"
top_level=$(cat "$work"/tree/masktfx-*.dist-info/top_level.txt)
if [ "$top_level" != "masktfx" ]; then
  echo "lint: the wheel installs top-level packages other than masktfx: $top_level" >&2
  exit 1
fi
cd "$work/tree"
PYTHONPATH="$work/tree" "$root/$VENV/bin/lint-imports" --no-cache --config "$root/pyproject.toml"
