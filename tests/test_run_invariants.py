"""One invariant per artifact of a run directory, after any end of a process and any resume:
- best.pt is the model of the best evaluation row kept (the first of the best, as training keeps it);
- metrics and evaluation rows and numbered checkpoints all belong to the same life of the run;
- a resume continues its own run or refuses; training from an older checkpoint of a run never rewinds it.
The property over kill points and resume flags is tests/test_fuzz.py's (benchmarks/fuzz.py runs it at length);
here the named cases, each a way the invariants broke before."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trpo import TRPO, TRPOConfig, checkpoint

SMALL = TRPOConfig(num_envs=1, steps_per_env=64, value_epochs=1, value_minibatch=64, checkpoint_every=1,
                   eval_every=64, eval_episodes=1)


def rows(run: Path, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    path = run / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


class Killed(BaseException):
    """Ends a run where a kill would: none of trpo's code runs after it but its finally blocks (which close files;
    every file trpo writes is written whole or not at all). A BaseException, as nothing in trpo may catch it."""


def killed_after(update: int) -> Any:
    def callback(agent: TRPO, _: dict[str, Any]) -> None:
        if agent.num_updates >= update:
            raise Killed

    return callback


def assert_run_is_one_life(run: Path) -> None:
    """The invariants, read from the disk alone."""
    metrics = rows(run)
    steps = {r["update"]: r["step"] for r in metrics}
    first = metrics[0]["update"] if metrics else 1  # 1, or the update after the checkpoint a branch started from
    assert [r["update"] for r in metrics] == list(range(first, first + len(metrics)))
    evaluations = rows(run, "evaluations.jsonl")
    assert [e["update"] for e in evaluations] == sorted({e["update"] for e in evaluations})
    assert all(steps.get(e["update"]) == e["step"] for e in evaluations), "an evaluation of another life"
    best = run / checkpoint.BEST
    if evaluations:
        top = max(e["mean_return"] for e in evaluations)
        first_best = next(e for e in evaluations if e["mean_return"] == top)
        assert best.is_file() and checkpoint.load(best)["num_steps"] == first_best["step"]
    else:
        assert not best.is_file()
    for path in checkpoint.numbered(run):
        assert checkpoint.step_of(path) in steps.values(), f"{path.name} is of another life"
        assert checkpoint.load(path)["num_steps"] == checkpoint.step_of(path)
    latest = run / checkpoint.LATEST
    if latest.is_file() and metrics:
        assert checkpoint.load(latest)["num_updates"] == metrics[-1]["update"]


class DiskFullError(OSError):
    def __init__(self) -> None:
        super().__init__(errno.ENOSPC, "No space left on device")


def test_best_pt_is_written_on_resume_when_the_process_ended_between_latest_and_best(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first evaluation is a best; its best.pt write fails (a full disk; a kill there is the same): latest.pt
    carries that best, and the resume writes it before it trains on (before: best.pt missing, or older)."""
    run = tmp_path / "run"
    real = checkpoint.write_bytes_atomic

    def failing(path: Path, data: bytes) -> None:
        if path.name == checkpoint.BEST.name:
            raise DiskFullError
        real(path, data)

    agent = TRPO("CartPole-v1", config=SMALL, seed=0, run_dir=run)
    monkeypatch.setattr(checkpoint, "write_bytes_atomic", failing)
    with pytest.raises(DiskFullError):
        agent.learn(256)
    agent.close()
    monkeypatch.undo()
    assert not (run / checkpoint.BEST).exists() and len(rows(run, "evaluations.jsonl")) == 1
    resumed = TRPO.resume(run)
    assert (run / checkpoint.BEST).is_file()  # at once, not at the next checkpoint
    resumed.train_until(256)
    resumed.close()
    assert_run_is_one_life(run)


def test_a_resume_that_no_longer_evaluates_drops_the_killed_lifes_evaluations(tmp_path: Path) -> None:
    run = tmp_path / "run"
    agent = TRPO("CartPole-v1", config=SMALL.replace(checkpoint_every=2), seed=0, run_dir=run)
    with pytest.raises(Killed):  # after update 3's evaluation; latest.pt is at update 2
        agent.learn(320, callback=killed_after(3))
    agent.close()
    assert [e["update"] for e in rows(run, "evaluations.jsonl")] == [1, 2, 3]
    resumed = TRPO.resume(run, eval_every=0)
    resumed.train_until(320)
    resumed.close()
    assert [e["update"] for e in rows(run, "evaluations.jsonl")] == [1, 2]
    assert_run_is_one_life(run)


def test_numbered_checkpoints_of_a_replaced_part_are_set_aside_and_the_new_ones_kept(tmp_path: Path) -> None:
    """Before: with keep_checkpoints, the resumed life's step_N.pt files were deleted as soon as they were written,
    the killed life's later ones kept."""
    run = tmp_path / "run"
    cfg = SMALL.replace(checkpoint_every=3, save_every=64, keep_checkpoints=2, eval_every=0)
    agent = TRPO("CartPole-v1", config=cfg, seed=0, run_dir=run)
    with pytest.raises(Killed):  # after update 5: latest.pt at update 3, step_N.pt up to update 5
        agent.learn(384, callback=killed_after(5))
    agent.close()
    assert checkpoint.load(run / checkpoint.LATEST)["num_steps"] == 192
    # step_256 and step_320 were saved after update 3 (step 192): that part is trained again.
    assert [p.name for p in checkpoint.numbered(run)] == ["step_256.pt", "step_320.pt"]
    resumed = TRPO.resume(run)
    resumed.train_until(384)
    resumed.close()
    assert [p.name for p in checkpoint.numbered(run)] == ["step_320.pt", "step_384.pt"]
    assert sorted(p.name for p in (run / "checkpoints" / "replaced").iterdir()) == ["step_256.pt", "step_320.pt"]
    assert_run_is_one_life(run)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        agent = TRPO("CartPole-v1", config=SMALL, seed=0, run_dir=tmp_path / name)
        agent.learn(64)
        agent.close()
        runs.append(tmp_path / name)
    shutil.copy(runs[0] / checkpoint.LATEST, runs[1] / checkpoint.LATEST)
    with pytest.raises(checkpoint.RunDirError, match=r"checkpoint .*latest\.pt is of another run \(run_id \w+\) "
                                                     r"than its config\.yaml"):
        TRPO.resume(runs[1])
    assert len(rows(runs[1])) == 1  # nothing written


def test_training_an_older_checkpoint_in_its_run_is_refused_and_branching_works(tmp_path: Path) -> None:
    """Before: TRPO.load(RUN/best.pt, run_dir=RUN).learn() dropped the rows after best's step and rewound latest.pt
    and final.pt, silently."""
    run = tmp_path / "run"
    agent = TRPO("CartPole-v1", config=SMALL.replace(save_every=64), seed=0, run_dir=run)
    agent.learn(256)
    agent.close()
    before = (run / "metrics.jsonl").read_bytes(), (run / checkpoint.LATEST).read_bytes()
    old = TRPO.load(run / "checkpoints" / "step_128.pt", run_dir=run)
    with pytest.raises(checkpoint.RunDirError, match=r"step_128\.pt is at update 2 of the run in .*, which went on to "
                                                     r"update 4 .*load it with another run_dir"):
        old.learn(64, reset_num_timesteps=False)
    old.close()
    assert ((run / "metrics.jsonl").read_bytes(), (run / checkpoint.LATEST).read_bytes()) == before
    branch = TRPO.load(run / "checkpoints" / "step_128.pt", run_dir=tmp_path / "branch")
    branch.learn(64, reset_num_timesteps=False)
    branch.close()
    assert [r["update"] for r in rows(tmp_path / "branch")] == [3]
    assert_run_is_one_life(tmp_path / "branch")  # its best.pt is its own evaluation's, not the run's
    assert_run_is_one_life(run)
    # The run's own newest state goes on as ever.
    going_on = TRPO.load(run, run_dir=run)
    going_on.learn(64, reset_num_timesteps=False)
    going_on.close()
    assert_run_is_one_life(run)


def test_resume_goes_on_from_latest_pt_when_it_is_newer_than_final_pt(tmp_path: Path) -> None:
    """A finished run resumed to a larger total and killed after a checkpoint: checkpoints/latest.pt is newer than
    final.pt, and the next resume goes on from it (held by nothing but this test before)."""
    run = tmp_path / "run"
    agent = TRPO("CartPole-v1", config=SMALL.replace(eval_every=0), seed=0, run_dir=run)
    agent.learn(128)
    agent.close()
    more = TRPO.resume(run)
    more.train_until(320, callback=lambda a, _: a.num_updates < 4)  # a kill after update 4's checkpoint
    more.close()
    assert checkpoint.load(run / checkpoint.FINAL)["num_steps"] == 128
    assert checkpoint.newest(run) == run / checkpoint.LATEST
    again = TRPO.resume(run)
    assert again.num_updates == 4
    again.close()


def test_observations_are_clipped_after_normalization(tmp_path: Path) -> None:
    """clip_obs bounds what the policy sees, in rollouts (the batch) and in predict, at +-clip_obs."""
    agent = TRPO("Pendulum-v1", config=TRPOConfig(num_envs=1, steps_per_env=64, value_epochs=1, normalize_obs=True,
                                                  clip_obs=0.5), seed=0)
    agent.learn(64)
    norm = agent.obs_norm.frozen()
    far = np.array([[1e6, -1e6, 0.0]], np.float32)
    np.testing.assert_array_equal(np.abs(norm(far))[0, :2], [0.5, 0.5])
    batch = agent.learner.collector_or_new().collect(agent.actor, 64, agent.sample_gen)
    assert float(batch.obs.abs().max()) <= 0.5 and float(batch.obs.abs().max()) == pytest.approx(0.5)
    unclipped = TRPO("Pendulum-v1", config=TRPOConfig(num_envs=1, steps_per_env=64, normalize_obs=True,
                                                      clip_obs=1e6), seed=0)
    unclipped.learn(64)
    assert float(np.abs(unclipped.obs_norm.frozen()(far)).max()) > 1e3
    agent.close()
    unclipped.close()
