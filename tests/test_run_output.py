"""Where a run's output goes: the libraries' to the log (at the file-descriptor level, child
processes included), ours to the terminal; and the per-component progress lines."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from absl import logging as absl_logging

from masktfx import features
from masktfx.pipeline.run_output import ComponentProgress, Terminal

_NOISY = textwrap.dedent("""
    import logging, os, subprocess, sys, warnings
    from masktfx.pipeline.run_output import library_output_to
    with library_output_to(sys.argv[1]) as terminal:
        print("python print")
        os.write(2, b"fd 2 from C code\\n")
        subprocess.run(["sh", "-c", "echo from a child process; echo child stderr >&2"])
        logging.getLogger("absl").warning("absl warning")
        warnings.warn("a library warning")
        terminal.say("our line")
        terminal.say("our error", error=True)
    print("after the run")
""")


def test_the_libraries_write_to_the_log_and_we_to_the_terminal(tmp_path):
    log = tmp_path / "logs" / "run.log"
    done = subprocess.run([sys.executable, "-c", _NOISY, str(log)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "our line\nafter the run\n"
    assert done.stderr == "our error\n"
    text = log.read_text()
    for line in ("python print", "fd 2 from C code", "from a child process", "child stderr",
                 "absl warning", "a library warning", "[masktfx] our line",
                 "[masktfx] our error"):
        assert line in text
    assert "after the run" not in text


def test_one_line_per_component_start_and_end_with_its_state_and_the_epochs(capsys):
    terminal = Terminal(sys.stdout, sys.stderr)
    states = {"Transform": "CACHED", "Trainer": "COMPLETE"}
    trainer = __import__("logging").getLogger(features.TRAINER_PROGRESS_LOGGER)
    with ComponentProgress(terminal, states.get) as progress:
        absl_logging.info("Component %s is running.", "Transform")
        absl_logging.info("Component %s is finished.", "Transform")
        absl_logging.info("Component %s is running.", "Trainer")
        for epoch, auc in ((1, 0.6), (2, 0.9), (3, 0.8)):
            trainer.info("epoch %(epoch)d/%(epochs)d",
                         {"epoch": epoch, "epochs": 30, "loss": 0.5, "val_auc": auc})
        absl_logging.info("Component %s is finished.", "Trainer")
        absl_logging.info("Component %s is running.", "Evaluator")
        assert progress.failed() == "Evaluator"
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[2:4] for line in lines] == [
        ["Transform", "..."], ["Transform", "CACHED"], ["Trainer", "..."],
        ["Trainer", "COMPLETE"], ["Evaluator", "..."], ["Evaluator", "FAILED"]]
    assert lines[3].endswith("s (3 epochs, best validation AUC 0.9000 at epoch 2)")
    assert [name for name, _, _ in progress.finished] == ["Transform", "Trainer", "Evaluator"]
