#!/usr/bin/env bash
# CI's second leg: `make lint` and `make test` on the maintained stack (TFX 1.21 on Python 3.13)
# inside a Debian 13 root filesystem made with debootstrap, for machines whose own C library is
# too old for it (as CI's Debian 12 is). The root filesystem is kept between runs in
# MASKTFX_DEBIAN13_ROOT (default ~/.cache/masktfx/debian-13), its pip cache with it; the
# repository is copied in fresh (its tracked files) each run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${MASKTFX_DEBIAN13_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/masktfx/debian-13}
MIRROR=${MASKTFX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi

if [ ! -x "$ROOT/usr/bin/python3.13" ]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
        $sudo apt-get install -y --no-install-recommends debootstrap >/dev/null 2>&1 \
            || { $sudo apt-get update >/dev/null 2>&1 \
                 && $sudo apt-get install -y --no-install-recommends debootstrap >/dev/null; }
    fi
    echo "ci-new-stack: building a Debian 13 root filesystem in $ROOT"
    $sudo rm -rf "$ROOT.partial"
    $sudo mkdir -p "$(dirname "$ROOT")"
    # g++ and python3-dev: a few of TFX 1.21's dependencies ship only sources
    $sudo debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,python3-dev,g++,make,ca-certificates \
        trixie "$ROOT.partial" "$MIRROR" >"$(dirname "$ROOT")/debootstrap.log" 2>&1 \
        || { tail -n 30 "$(dirname "$ROOT")/debootstrap.log" >&2; exit 1; }
    $sudo rm -rf "$ROOT"
    $sudo mv "$ROOT.partial" "$ROOT"
fi

# What the package registries need inside: this machine's resolver and CA bundle (a proxy's CA
# may be only there); and the tools the tests call that Debian's minimal system lacks.
$sudo cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# this machine's own name too: Beam's job service tells its SDK workers to call it back by it
$sudo cp /etc/hosts "$ROOT/etc/hosts"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    $sudo cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
fi
if command -v kubectl >/dev/null 2>&1; then
    $sudo cp "$(command -v kubectl)" "$ROOT/usr/local/bin/kubectl"
fi

cleanup() {
    $sudo umount "$ROOT/dev/shm" 2>/dev/null || true
    $sudo umount "$ROOT/proc" 2>/dev/null || true
    $sudo umount "$ROOT" 2>/dev/null || true
}
trap cleanup EXIT
# The root a mount point of its own, private: a test mounts a small disk in a mount namespace
# of its own (`unshare --mount`), which needs it.
$sudo mount --bind "$ROOT" "$ROOT"
$sudo mount --make-private "$ROOT"
$sudo mkdir -p "$ROOT/proc" "$ROOT/dev/shm"
$sudo mount -t proc proc "$ROOT/proc"
$sudo mount -t tmpfs shm "$ROOT/dev/shm"  # multiprocessing's semaphores

# The servers two kinds of tests start: Debian's headless Chromium (the report) and MariaDB (run
# metadata in a database server), as .ci/run installs them on this machine. policy-rc.d keeps
# the packages from starting their services in the root filesystem.
require=()
if $sudo chroot "$ROOT" /bin/sh -c 'command -v chromium && command -v mariadbd' >/dev/null 2>&1
then
    require=(MASKTFX_REQUIRE_CHROMIUM=1 MASKTFX_REQUIRE_MARIADB=1)
else
    echo "ci-new-stack: installing chromium and mariadb-server in the root filesystem"
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$ROOT/usr/sbin/policy-rc.d" >/dev/null
    $sudo chmod +x "$ROOT/usr/sbin/policy-rc.d"
    if $sudo chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            DEBIAN_FRONTEND=noninteractive /bin/sh -c 'apt-get update -q && apt-get install -y \
            -q --no-install-recommends chromium mariadb-server' \
            >"$(dirname "$ROOT")/apt.log" 2>&1; then
        require=(MASKTFX_REQUIRE_CHROMIUM=1 MASKTFX_REQUIRE_MARIADB=1)
    else
        tail -n 5 "$(dirname "$ROOT")/apt.log" >&2
        echo "ci-new-stack: could not install them; their tests will be skipped" >&2
    fi
fi

$sudo rm -rf "$ROOT/src"
$sudo mkdir -p "$ROOT/src"
git ls-files -z | tar --null -T - -cf - | $sudo tar -xf - -C "$ROOT/src"

echo "ci-new-stack: make lint and make test in Debian $(cat "$ROOT/etc/debian_version")"
$sudo chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root \
    LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PYTEST_ARGS="${PYTEST_ARGS:-}" "${require[@]}" \
    /bin/bash -c 'cd /src && make lint && make test'
