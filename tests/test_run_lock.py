"""One `masktfx run` per workdir: a second run is refused before it ingests anything, with a
message naming the run that holds the workdir, and a run killed outright leaves no lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
from conftest import square_mask, write_manifest, write_png

from masktfx.pipeline.run_lock import RunLockedError, workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ("import sys, time\n"
        "from masktfx.pipeline.run_lock import workdir_lock\n"
        "with workdir_lock(sys.argv[1], 'the-first-run'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n")


def test_a_second_run_on_a_workdir_is_refused_naming_the_first(tmp_path):
    rows = []
    for index in range(8):
        image = write_png(str(tmp_path / "images" / f"{index}.png"),
                          np.full((16, 16), 40 * (index % 2) + 30, np.uint8))
        mask = write_png(str(tmp_path / "masks" / f"{index}.png"),
                         square_mask(16, 4, 12).astype(np.uint8) * 255)
        rows.append([f"r{index}", image, mask, index % 2, f"g{index}"])
    manifest = write_manifest(str(tmp_path / "manifest.csv"),
                              ["id", "image", "mask", "label", "group"], rows)
    workdir = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run([sys.executable, "-m", "masktfx.cli", "run", "--data", manifest,
                                 "--workdir", str(workdir)], cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        assert second.returncode != 0
        assert f"run the-first-run (pid {holder.pid} on " in second.stderr, second.stderr[-2000:]
        assert "wait for it to finish, or run in another --workdir" in second.stderr
        # nothing ingested, nothing run: only the lock and the refused run's log
        assert set(os.listdir(workdir)) <= {"run.lock", "logs"}
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # killed outright, the first run left no lock behind; a run holding it refuses another
    with workdir_lock(str(workdir), "the-next-run"):
        try:
            with workdir_lock(str(workdir), "a-third-run"):
                raise AssertionError("two runs held one workdir")
        except RunLockedError as refused:
            assert "run the-next-run (pid" in str(refused)
    with workdir_lock(str(workdir), "after-it"):
        pass
