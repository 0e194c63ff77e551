"""Issue 33's wrong lines and tracebacks: each case ends as a normal run or as one line naming its real cause (a
checkpoint into an env with other spaces, a full disk under TensorBoard's writer thread, a run directory whose
name is not UTF-8, stderr closed by the caller)."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from clitools import cli, error_lines, run_cli_output
from test_cli import trained_run

from trpo import TRPO
from trpo.checkpoint import CheckpointError

SMALL = ["--total-steps", "512", "--num-envs", "1", "--steps-per-env", "128", "--eval-episodes", "1"]


def test_a_checkpoint_into_an_env_with_other_spaces_names_both_spaces(tmp_path: Path) -> None:
    # Pendulum's preset samples with gSDE, which CartPole's Discrete actions refuse: that refusal was the line.
    run = trained_run(tmp_path, "Pendulum-v1")
    checkpoint = run / "checkpoints" / "latest.pt"
    res = cli("eval", str(run), "--env", "CartPole-v1")
    assert res.returncode == 2 and len(error_lines(res.stderr)) == 1, res.stderr
    # The bounds as numpy prints them (its print options decide the spacing), then the shapes and the actions.
    assert re.fullmatch(rf"trpo: error: {re.escape(str(checkpoint))} does not fit env 'CartPole-v1': their spaces "
                        r"differ\. The checkpoint's: observations Box\(\[.+\], \(3,\), float32\), actions "
                        r"Box\(-2\.0, 2\.0, \(1,\), float32\); the env's: observations Box\(\[.+\], \(4,\), float32\), "
                        r"actions Discrete\(2\)", error_lines(res.stderr)[0]), res.stderr
    with pytest.raises(CheckpointError, match=r"their spaces differ.*the env's: observations Box\(.+\(2,\), float32"
                                              r"\), actions Box\(-1\.0, 1\.0, \(1,\), float32\)$"):
        TRPO.load(checkpoint, env="MountainCarContinuous-v0")  # the weights' shapes: said the same way
    TRPO.load(checkpoint, env="Pendulum-v1").close()  # its own env, named: loads


@pytest.mark.parametrize("fails_from", [1, 3])  # its first event (written as the writer opens), or a later one
def test_a_full_disk_under_tensorboards_writer_thread_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  fails_from: int) -> None:
    record_writer = pytest.importorskip("tensorboard.summary.writer.record_writer")
    written = []

    def write(self: object, data: bytes) -> None:  # in the writer's own thread
        written.append(data)
        if len(written) >= fails_from:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    # Python's own hook, which prints a thread's traceback to stderr (pytest's would keep it from the output).
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    run = tmp_path / "run"
    code, _, err = run_cli_output(["train", *SMALL, "--run-dir", str(run), "--no-progress"])
    assert code == 2 and "Traceback" not in err and "Exception in thread" not in err, err
    assert error_lines(err) == [f"trpo: error: No space left on device: {str(run / 'tensorboard')!r}"], err


def test_a_run_directory_whose_name_is_not_utf8_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    name = os.fsdecode(b"run-\xff")  # any bytes make a Linux name; Python holds this one as a lone surrogate
    for args in (["train", *SMALL, "--run-dir", str(tmp_path / name)],
                 ["bench", "--env", "CartPole-v1", "--seeds", "0", "--steps", "256", "--out", str(tmp_path / name)],
                 ["tune", "--trials", "1", "--total-steps", "256", "--out", str(tmp_path / name)]):
        code, _, err = run_cli_output(args)
        flag = "--run-dir" if args[0] == "train" else "--out"
        assert code == 2 and err == (f"trpo: error: {flag} {str(tmp_path / name)!r} is not UTF-8 text, which "
                                     "TensorBoard's event files need in their directory's name: give another\n"), err
    assert list(tmp_path.iterdir()) == []


def test_with_stderr_closed_a_run_trains_to_its_end(tmp_path: Path) -> None:
    # `trpo train ... 2>&-`: Python starts with sys.stderr None; the progress display and the lines must not end
    # the run (it stopped after its first update, silently).
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "trpo.cli", "train", *SMALL, "--run-dir", str(run)],
                         stdout=subprocess.PIPE, text=True, timeout=240, preexec_fn=lambda: os.close(2))
    assert res.returncode == 0, res.stdout
    assert [json.loads(line)["update"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert json.loads((run / "eval.json").read_text())["step"] == 512
    assert res.stdout.startswith("trpo: evaluation over 1 episodes"), res.stdout  # stdout's line only
