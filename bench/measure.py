"""Wall time and peak memory of a command's whole process tree (Beam workers included), and
where a benchmark's JSON result goes."""

from __future__ import annotations

import json
import tempfile
import time

import psutil


def run_measured(command: list[str], cwd: str, env: dict | None = None,
                 timeline: bool = False) -> dict:
    """Run `command`; seconds, peak RSS (MiB) summed over the process tree, and its stdout.

    With `timeline`, also the samples as [unix time, RSS MiB] pairs, to say which phase of the
    command the peak belongs to.

    Output goes to temporary files, not pipes: a long run logs more than a pipe holds, and a
    child blocked on a full pipe would be measured as slow. Raises with the tail of stderr if
    the command fails.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = psutil.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err)
        peak, samples = 0, []
        while process.poll() is None:
            try:
                tree = [process] + process.children(recursive=True)
                rss = sum(p.memory_info().rss for p in tree if p.is_running())
                peak = max(peak, rss)
                samples.append([round(time.time(), 2), round(rss / 2**20, 1)])
            except psutil.Error:
                pass
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode()
        stderr = err.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed (exit {process.returncode}):\n"
                           f"{stderr[-3000:]}")
    result = {"seconds": round(seconds, 2), "peak_rss_mib": round(peak / 2**20, 1),
              "stdout": stdout}
    if timeline:
        result["timeline"] = samples
    return result


def write_json(result: dict, output: str | None) -> None:
    """The result as JSON to `output`, when one is given."""
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(result, indent=2) + "\n")


def report(result: dict, output: str | None) -> None:
    """The result as JSON on stdout, and to `output` when one is given."""
    print(json.dumps(result, indent=2))
    write_json(result, output)
