"""Run directories: one writer at a time, a run written only by itself, resume from any saved state, temporary
files of killed writes removed, and Ctrl-C / SIGTERM that say truthfully what is saved."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
import trpo_testenvs  # noqa: F401 - registers the test envs
import yaml
from test_cli import FAST, TESTS, metrics, trpo

from trpo import TRPO, ConfigError, TRPOConfig
from trpo.checkpoint import RunDirError, RunDirLock

SMALL = TRPOConfig(num_envs=2, steps_per_env=64, value_epochs=1, value_minibatch=64, checkpoint_every=1,
                   eval_episodes=1)


def files(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def _writer(seed: int, run_dirs: list[str], barrier: Any, results: Any) -> None:
    """One of two processes that train into the same run directories at the same moment."""
    for run_dir in run_dirs:
        agent = TRPO("CartPole-v1", config=SMALL, seed=seed, run_dir=run_dir)
        barrier.wait()
        try:
            agent.learn(512)
            results.put((run_dir, seed, "ok"))
        except RunDirError as exc:
            results.put((run_dir, seed, str(exc)))
        finally:
            agent.close()


def test_two_writers_started_together_never_mix_a_run_dir(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")  # not fork: this test process has run torch already
    barrier, results = ctx.Barrier(2), ctx.Queue()
    run_dirs = [str(tmp_path / f"run{i}") for i in range(4)]
    procs = [ctx.Process(target=_writer, args=(seed, run_dirs, barrier, results)) for seed in (1, 2)]
    env = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), env])  # spawned children import trpo_testenvs' module
    try:
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=240) for _ in range(2 * len(run_dirs))]
    finally:
        os.environ["PYTHONPATH"] = env
        for proc in procs:
            proc.join(timeout=60)
    for run_dir in run_dirs:
        mine = {seed: outcome for d, seed, outcome in outcomes if d == run_dir}
        winners = [seed for seed, outcome in mine.items() if outcome == "ok"]
        assert len(winners) == 1, mine
        (loser,) = set(mine) - set(winners)
        assert "is in use" in mine[loser] or "already holds a run" in mine[loser], mine[loser]
        # Everything in the directory is the winner's, and whole.
        run = Path(run_dir)
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == winners[0]
        assert torch.load(run / "final.pt", weights_only=True)["seed"] == winners[0]
        assert [r["update"] for r in metrics(run)] == [1, 2, 3, 4]


def test_resume_beside_a_live_run_is_refused_and_allowed_once_it_is_killed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    # The CartPole preset's env worker process is forked while the lock is held: it must not keep it.
    proc = subprocess.Popen([sys.executable, "-m", "trpo.cli", "train", "--total-steps", "400000", "--run-dir",
                             str(run), "--checkpoint-every", "1", *FAST], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 2):
            time.sleep(0.05)
        res = trpo("train", "--resume", str(run), "--no-progress")
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("trpo: error:")]
        assert "is in use" in line and f"process {proc.pid}" in line
        readers = trpo("eval", str(run), "--episodes", "1"), trpo("plot", str(run), "--out", str(tmp_path / "c.png"))
        assert all(res.returncode == 0 for res in readers), [res.stderr for res in readers]  # they take no lock
        rows = len(metrics(run))
        time.sleep(1.0)
        assert len(metrics(run)) > rows, "the live run was disturbed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The kernel dropped the lock with the process (and its worker's copy was closed at fork): no stale lock.
    res = trpo("train", "--resume", str(run), "--total-steps", str(256 * (len(metrics(run)) + 1)), "--no-progress",
               "--eval-episodes", "1")
    assert res.returncode == 0, res.stderr


def test_a_second_agent_in_one_process_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = TRPO("CartPole-v1", config=SMALL, run_dir=run)
    first.learn(128)
    with pytest.raises(RunDirError, match="this process"):
        TRPO.resume(run)
    first.close()
    again = TRPO.resume(run)
    again.train_until(256)
    again.close()
    assert [r["update"] for r in metrics(run)] == [1, 2]


def test_load_into_another_run_is_refused_and_into_an_empty_dir_starts_a_new_run(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for run, seed in ((a, 1), (b, 2)):
        agent = TRPO("CartPole-v1", config=SMALL, seed=seed, run_dir=run)
        agent.learn(256)
        agent.close()
    before_a, before_b = files(a), files(b)
    intruder = TRPO.load(a / "checkpoints" / "latest.pt", run_dir=b)
    with pytest.raises(RunDirError, match="holds another run"):
        intruder.train_until(512)
    intruder.close()
    assert files(b) == before_b  # nothing of b touched
    # Into an empty directory: a new run that goes on from a's checkpoint; a is left alone.
    fork = TRPO.load(a / "final.pt", run_dir=c)
    fork.train_until(512)
    fork.close()
    assert files(a) == before_a
    assert [r["update"] for r in metrics(c)] == [3, 4]
    record_a, record_c = (yaml.safe_load((d / "config.yaml").read_text()) for d in (a, c))
    assert record_c["run_id"] != record_a["run_id"] and record_c["seed"] == 1
    # Into its own run: that run goes on.
    own = TRPO.load(a / "final.pt", run_dir=a)
    own.train_until(512)
    own.close()
    assert [r["update"] for r in metrics(a)] == [1, 2, 3, 4]


def test_resume_from_final_pt_when_latest_is_missing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert trpo("train", "--total-steps", "512", "--run-dir", str(run), *FAST).returncode == 0
    (run / "checkpoints" / "latest.pt").unlink()  # e.g. a run copied without its checkpoints folder
    res = trpo("train", "--resume", str(run), "--total-steps", "1024", "--no-progress", "--eval-episodes", "1")
    assert res.returncode == 0, res.stderr
    assert "resuming CartPole-v1 at step 512 of 1024" in res.stderr
    assert [r["update"] for r in metrics(run)] == [1, 2, 3, 4]
    assert torch.load(run / "final.pt", weights_only=True)["num_steps"] == 1024


def test_a_run_killed_between_its_last_checkpoint_and_final_pt_finishes_on_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert trpo("train", "--total-steps", "512", "--run-dir", str(run), *FAST).returncode == 0
    rows = metrics(run)
    (run / "final.pt").unlink()
    (run / "eval.json").unlink()
    res = trpo("train", "--resume", str(run), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "stopped before writing its final.pt and evaluation; writing them" in res.stderr
    assert torch.load(run / "final.pt", weights_only=True)["num_steps"] == 512
    assert json.loads((run / "eval.json").read_text())["step"] == 512
    assert metrics(run) == rows  # no update run again
    done = trpo("train", "--resume", str(run), "--no-progress")
    assert done.returncode == 0 and "already reached 512 of 512 steps" in done.stderr


def test_temp_files_of_killed_writes_are_removed_when_the_run_dir_is_next_opened(tmp_path: Path) -> None:
    run = tmp_path / "run"
    agent = TRPO("CartPole-v1", config=SMALL, run_dir=run)
    agent.learn(128)
    agent.close()
    leftovers = [run / "checkpoints" / ".latest.pt.4242.tmp", run / ".config.yaml.77.tmp", run / ".eval.json.9.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a write")
    keep = [run / ".notes.tmp", run / "latest.pt.1.tmp"]  # not names a write of ours leaves
    for path in keep:
        path.write_text("mine")
    resumed = TRPO.resume(run)
    assert not any(path.exists() for path in leftovers)
    assert all(path.read_text() == "mine" for path in keep)
    resumed.close()


def test_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = f"from pathlib import Path; from trpo.checkpoint import RunDirLock; RunDirLock(Path({str(run)!r})); " \
           "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    RunDirLock(run).release()  # free again: no stale lock


def test_a_factory_env_run_resumes_when_given_its_env_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    agent = TRPO(lambda: gym.make("CartPole-v1"), config=SMALL, run_dir=run)
    agent.learn(256)
    agent.close()
    with pytest.raises(ConfigError, match="pass that env again"):
        TRPO.resume(run)
    other = tmp_path / "other"
    TRPO("CartPole-v1", config=SMALL, run_dir=other).learn(128).close()
    with pytest.raises(ConfigError, match="trains on 'CartPole-v1'"):  # a run with an id keeps it
        TRPO.resume(other, env="Acrobot-v1")
    resumed = TRPO.resume(run, env=lambda: gym.make("CartPole-v1"))
    resumed.train_until(384)
    resumed.close()
    assert [r["update"] for r in metrics(run)] == [1, 2, 3]
    # The command line: --env with --resume is taken for such a run (and refused without it).
    res = trpo("train", "--resume", str(run), "--no-progress")
    assert res.returncode == 2 and "--env" in res.stderr, res.stderr
    res = trpo("train", "--resume", str(run), "--env", "CartPole-v1", "--total-steps", "512", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert [r["update"] for r in metrics(run)] == [1, 2, 3, 4]


def _start(run: Path, *args: str) -> tuple[subprocess.Popen[str], Path]:
    log = run.parent / f"{run.name}.log"
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "trpo.cli", "train", "--total-steps", "400000", "--run-dir",
                                 str(run), *FAST, *args], stdout=fh, stderr=fh, env=env, text=True)
    return proc, log


def _wait_for_rows(run: Path, rows: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= rows):
        time.sleep(0.05)


@pytest.mark.parametrize("sig,code,what", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                           (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_ctrl_c_keep_the_checkpoint_and_name_the_resume_command(tmp_path: Path, sig: int, code: int,
                                                                           what: str) -> None:
    run = tmp_path / "run"
    proc, log = _start(run, "--checkpoint-every", "1")
    _wait_for_rows(run, 2)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    text = log.read_text()
    assert "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    step = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["num_steps"]
    assert last == f"trpo: {what}; the checkpoint {run / 'checkpoints' / 'latest.pt'} (step {step}) is intact; " \
                   f"continue with: trpo train --resume {run}", last


def test_an_interrupt_before_the_first_checkpoint_says_so(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc, log = _start(run, "--checkpoint-every", "0")
    _wait_for_rows(run, 1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    last = log.read_text().strip().splitlines()[-1]
    assert last == f"trpo: interrupted; no checkpoint was written yet; trpo train --resume {run} starts the run " \
                   "again from its first step", last


def test_a_run_saved_before_run_ids_resumes_and_keeps_everything(tmp_path: Path) -> None:
    run = tmp_path / "run"
    agent = TRPO("CartPole-v1", config=SMALL, run_dir=run)
    agent.learn(256)
    agent.close()
    record = yaml.safe_load((run / "config.yaml").read_text())
    del record["run_id"]
    (run / "config.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    for path in (run / "final.pt", run / "checkpoints" / "latest.pt"):
        state = torch.load(path, weights_only=True)
        del state["run_id"], state["sha256"]  # nor checksums, which came later
        torch.save(state, path)
    resumed = TRPO.resume(run)
    resumed.train_until(384)
    resumed.close()
    assert [r["update"] for r in metrics(run)] == [1, 2, 3]  # the earlier rows kept, the run went on
    run_id = yaml.safe_load((run / "config.yaml").read_text())["run_id"]
    assert run_id and torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["run_id"] == run_id


def _loads_torch(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("after_lock", [None, 0.0, 0.02, 0.05])
def test_ctrl_c_during_start_up_is_one_line(tmp_path: Path, after_lock: float | None) -> None:
    # None: while torch loads (seen in /proc: trpo's own code runs; a SIGINT before Python has even set up its
    # handler, which a loaded machine can delay for a second, would end the process by the signal's default).
    # Right after the run dir is locked: the env worker process is being forked (an interrupt inside fork's
    # callbacks used to be swallowed: the run went on).
    if after_lock is None and not Path("/proc/self/maps").exists():
        pytest.skip("reads the process's memory map from /proc")
    run = tmp_path / "run"
    proc, log = _start(run)
    deadline = time.time() + 60
    if after_lock is None:
        while not _loads_torch(proc.pid) and time.time() < deadline:
            time.sleep(0.001)
    else:
        while not (run / ".lock").exists() and time.time() < deadline:
            time.sleep(0.001)
        time.sleep(after_lock)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    text = log.read_text()
    assert "Traceback" not in text and "Exception ignored" not in text, text
    assert text.strip().splitlines()[-1].startswith("trpo: interrupted; "), text


def test_an_interrupt_during_a_write_acts_once_the_write_is_whole(tmp_path: Path) -> None:
    # Ctrl-C inside torch.save's zip writer used to surface as its RuntimeError; inside TensorBoard's queue it left
    # the writer's thread waiting forever at close. Deferred, the write completes, then KeyboardInterrupt is raised.
    code = f"""
import os, signal, time
from pathlib import Path
import torch
from trpo.checkpoint import interrupts_deferred, load, save_atomic
path = Path({str(tmp_path / "c.pt")!r})
def write(fh):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # the signal arrives inside the write
    torch.save({{"format": "trpo-checkpoint-v1", "x": torch.arange(1000)}}, fh)
try:
    from trpo import checkpoint
    checkpoint._replace_atomically(path, write)
except KeyboardInterrupt:
    assert torch.equal(load(path)["x"], torch.arange(1000))
    print("interrupted after the write")
terms = []
signal.signal(signal.SIGTERM, lambda s, f: terms.append(s))
with interrupts_deferred():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert terms == []
assert terms == [signal.SIGTERM]
print("SIGTERM handled after the block")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split("\n")[:2] == ["interrupted after the write", "SIGTERM handled after the block"], \
        res.stdout + res.stderr
