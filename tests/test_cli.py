"""The command line, run as a user runs it: in a subprocess, checking exit codes, outputs and run directories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

TESTS = Path(__file__).parent
FAST = ["--num-envs", "2", "--steps-per-env", "128", "--value-epochs", "2", "--no-progress", "--eval-episodes", "2"]


def trpo(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "trpo.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_a_complete_run_directory_and_eval_reads_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = trpo("train", "--env", "CartPole-v1", "--total-steps", "1024", "--seed", "3", "--run-dir", str(run),
               "--max-kl", "0.02", "--checkpoint-every", "2", *FAST)
    assert res.returncode == 0, res.stderr
    assert "mean return" in res.stdout
    for name in ("config.yaml", "metrics.jsonl", "final.pt", "checkpoints/latest.pt", "eval.json"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    record = yaml.safe_load((run / "config.yaml").read_text())
    assert record["env"] == "CartPole-v1" and record["seed"] == 3 and record["max_kl"] == 0.02
    assert record["preset"] == "CartPole" and record["steps_per_env"] == 128  # flag over preset
    assert {"trpo", "torch", "gymnasium"} <= record["versions"].keys()
    rows = metrics(run)
    assert [r["update"] for r in rows] == [1, 2, 3, 4] and rows[-1]["step"] == 1024
    assert all(r["kl"] <= 0.02 for r in rows)

    out = trpo("eval", str(run), "--episodes", "3", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["episodes"] == 3 and {"mean_return", "std_return"} <= result.keys()
    human = trpo("eval", str(run / "final.pt"), "--episodes", "1")
    assert human.returncode == 0 and "mean return" in human.stdout


def test_config_file_and_flag_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("env: Pendulum-v1\ntotal_steps: 512\ngamma: 0.95\nmax_kl: 0.03\nactor_hidden: [16, 16]\n")
    run = tmp_path / "run"
    res = trpo("train", "--config", str(cfg), "--max-kl", "0.04", "--run-dir", str(run), *FAST)
    assert res.returncode == 0, res.stderr
    record = yaml.safe_load((run / "config.yaml").read_text())
    assert record["env"] == "Pendulum-v1" and record["total_steps"] == 512
    assert record["gamma"] == 0.95  # file over preset (Pendulum's preset says 0.9)
    assert record["max_kl"] == 0.04  # flag over file
    assert record["actor_hidden"] == [16, 16]
    # The run's own config.yaml can be fed back in.
    again = trpo("train", "--config", str(run / "config.yaml"), "--run-dir", str(tmp_path / "again"),
                 "--no-progress", "--eval-episodes", "0")
    assert again.returncode == 0, again.stderr


def test_resume_continues_to_the_total(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = trpo("train", "--total-steps", "512", "--run-dir", str(run), "--checkpoint-every", "1", *FAST)
    assert first.returncode == 0, first.stderr
    record = yaml.safe_load((run / "config.yaml").read_text())
    record["total_steps"] = 1024  # as if the run had been asked for more and stopped half way
    (run / "config.yaml").write_text(yaml.safe_dump(record))
    res = trpo("train", "--resume", str(run), "--no-progress")
    assert res.returncode == 0, res.stderr
    rows = metrics(run)
    assert [r["update"] for r in rows] == [1, 2, 3, 4] and rows[-1]["step"] == 1024


def test_sigkill_leaves_a_resumable_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trpo.cli", "train", "--total-steps", "40000", "--run-dir", str(run),
         "--checkpoint-every", "1", *FAST],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    latest = run / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.exists() and len(metrics(run)) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.exists()
    assert not list(run.rglob("*.tmp")) or all(p.name.startswith(".") for p in run.rglob("*.tmp"))
    state = torch.load(latest, weights_only=True)  # whole and readable
    killed_at = state["num_updates"]
    assert 1 <= killed_at < 40000 // 256
    res = trpo("train", "--resume", str(run), "--total-steps", str((killed_at + 2) * 256), "--no-progress",
               "--eval-episodes", "1")
    assert res.returncode == 0, res.stderr
    updates = [r["update"] for r in metrics(run)]
    assert updates == list(range(1, killed_at + 3))  # rows past the checkpoint were dropped, then continued


BAD_INPUTS = [
    (["train", "--env", "NoSuchEnv-v9"], "unknown environment id 'NoSuchEnv-v9'"),
    (["train", "--env", "no_such_module:Foo-v0"], "no_such_module"),
    (["train", "--env", "trpo_testenvs:TextObs-v0"], "unsupported observation space Text"),
    (["train", "--env", "trpo_testenvs:TupleAction-v0"], "unsupported action space Tuple"),
    (["train", "--total-steps", "0"], "total-steps must be a positive integer"),
    (["train", "--total-steps", "-5"], "total-steps must be a positive integer"),
    (["train", "--max-kl", "0"], "max_kl must be a positive number"),
    (["train", "--max-kl", "-0.1"], "max_kl must be a positive number"),
    (["train", "--num-envs", "0"], "num_envs must be a positive integer"),
    (["train", "--max-kl", "abc"], "max_kl: cannot read 'abc'"),
    (["train", "--advantage", "bogus"], "advantage must be one of"),
    (["train", "--preset", "Nope"], "unknown preset 'Nope'"),
    (["train", "--config", "missing.yaml"], "config file not found"),
    (["train", "--resume", "no_such_run"], "not a run directory"),
    (["eval", "missing.pt"], "checkpoint not found"),
    (["train", "--env", "trpo_testenvs:NanObs-v0", "--total-steps", "1000"], "non-finite observation"),
    (["train", "--env", "trpo_testenvs:NanReward-v0", "--total-steps", "1000"], "non-finite reward"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_exits_nonzero_with_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    extra = ["--run-dir", str(tmp_path / "run"), "--no-progress"] if args[0] == "train" else []
    res = trpo(*args, *extra, cwd=tmp_path)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("trpo: error:")]
    assert len(lines) == 1 and message in lines[0], res.stderr


def test_corrupt_checkpoint_is_reported_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    res = trpo("eval", str(bad))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "corrupt or unreadable" in res.stderr
    debug = trpo("--debug", "eval", str(bad))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_failed_run_does_not_overwrite_a_good_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ok = trpo("train", "--total-steps", "256", "--run-dir", str(run), *FAST)
    assert ok.returncode == 0, ok.stderr
    good = (run / "final.pt").read_bytes()
    bad = trpo("train", "--env", "trpo_testenvs:NanObs-v0", "--total-steps", "1000", "--run-dir", str(run),
               "--no-progress")
    assert bad.returncode != 0
    assert (run / "final.pt").read_bytes() == good


def test_help_lists_every_config_field() -> None:
    from dataclasses import fields

    from trpo import TRPOConfig

    res = trpo("train", "--help")
    assert res.returncode == 0
    for f in fields(TRPOConfig):
        assert "--" + f.name.replace("_", "-") in res.stdout


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    res = trpo("train", "--device", "cuda", "--run-dir", str(tmp_path / "run"), "--no-progress")
    assert res.returncode != 0 and "CUDA is not available" in res.stderr and "Traceback" not in res.stderr
