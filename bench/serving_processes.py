"""bench/serving's servers: `masktfx serve` of a checkout in its own process, waiting for it to
serve a version, and a process's memory."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import re  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402


def start_server(model_base_path: str, flags: list[str], tree: str = ROOT
                 ) -> tuple[subprocess.Popen, str, str]:
    """`masktfx serve` of the checkout `tree` in its own process, as deployed; its REST URL and
    gRPC target.

    A server sharing the benchmark's process would share its interpreter lock with the
    clients and be charged for their work.
    """
    command = [sys.executable, "-m", "masktfx.cli", "serve", "--model-base-path",
               os.path.abspath(model_base_path), "--model-name", "bench", "--rest-port", "0",
               "--grpc-port", "0", *flags]
    environment = {**os.environ, "PYTHONPATH": tree}
    server = subprocess.Popen(command, cwd=tree, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=environment)
    line = server.stdout.readline()  # the server prints where it listens once it is bound
    found = re.search(r"REST (http://\S+), gRPC (\S+)", line)
    if not found:
        server.kill()
        sys.exit(f"`masktfx serve` did not start (exit {server.wait()}): {line!r}")
    return server, found.group(1), found.group(2)


def wait_until_served(client, version: int, server: subprocess.Popen,
                      timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"`masktfx serve` exited ({server.returncode}) before loading the model")
        try:
            if any(s["version"] == str(version) and s["state"] == "AVAILABLE"
                   for s in client.status()):
                return
        except Exception:  # noqa: BLE001  (not loaded yet: keep polling until the deadline)
            pass
        time.sleep(0.2)
    sys.exit(f"version {version} was not AVAILABLE within {timeout:.0f} s")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")
