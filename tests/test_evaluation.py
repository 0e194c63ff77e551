"""Evaluation during training (eval_every): evaluations.jsonl, TensorBoard, best.pt; numbered checkpoints
(save_every, keep_checkpoints); `trpo eval --checkpoint`; all of it through a kill and a resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from clitools import run_cli, run_cli_output
from test_cli import FAST, TESTS, metrics, strip_timing, trpo

from trpo import TRPO, ConfigError, TRPOConfig

SMALL = TRPOConfig(num_envs=2, steps_per_env=64, value_epochs=1, value_minibatch=64, eval_episodes=2)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_periodic_evaluations_leave_training_unchanged_and_keep_the_best(tmp_path: Path) -> None:
    plain = TRPO("CartPole-v1", config=SMALL, seed=4)
    plain.learn(1024)
    plain.close()
    run = tmp_path / "run"
    agent = TRPO("CartPole-v1", config=SMALL.replace(eval_every=256, save_every=256, keep_checkpoints=2), seed=4,
                 run_dir=run)
    agent.learn(1024)
    agent.close()
    # Evaluating on a separate env, deterministically, draws nothing from training's generators.
    assert strip_timing(agent.history) == strip_timing(plain.history)
    evals = rows(run / "evaluations.jsonl")
    assert [r["step"] for r in evals] == [256, 512, 768, 1024] and evals == agent.evaluations
    assert all(len(r["returns"]) == 2 for r in evals)
    best = max(evals, key=lambda r: r["mean_return"])
    state = torch.load(run / "best.pt", weights_only=True)
    assert state["num_steps"] == best["step"] and agent.best_mean_return == best["mean_return"]
    # Numbered checkpoints at each multiple of 256 env steps passed: the newest 2 of 4 kept.
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt")) == ["step_1024.pt", "step_768.pt"]
    assert torch.load(run / "checkpoints" / "step_768.pt", weights_only=True)["num_steps"] == 768
    # The best agent is evaluated as saved.
    again = TRPO.load(run / "best.pt").evaluate(2)
    assert again["returns"] == best["returns"]


def test_eval_every_needs_episodes_and_an_env_it_can_make_apart() -> None:
    with pytest.raises(ConfigError, match=r"eval_every .* needs eval_episodes > 0"):
        TRPOConfig(eval_every=100, eval_episodes=0)
    agent = TRPO(gym.make("CartPole-v1"), config=SMALL.replace(num_envs=1, eval_every=64))
    with pytest.raises(ConfigError, match="eval_every needs an env id or a factory"):
        agent.learn(128)
    agent.close()


def test_evaluations_and_best_survive_a_kill_and_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    proc = subprocess.Popen([sys.executable, "-m", "trpo.cli", "train", "--total-steps", "40000", "--run-dir",
                             str(run), "--checkpoint-every", "2", "--eval-every", "256", *FAST],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    evals = run / "evaluations.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (evals.exists() and len(evals.read_text().splitlines()) >= 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["num_steps"]
    if (run / "best.pt").exists():  # written with a checkpoint: never newer than latest.pt
        assert torch.load(run / "best.pt", weights_only=True)["num_steps"] <= latest
    total = latest + 3 * 256
    res = trpo("train", "--resume", str(run), "--total-steps", str(total), "--no-progress", "--eval-episodes", "1")
    assert res.returncode == 0, res.stderr
    kept = rows(evals)
    assert [r["step"] for r in kept] == list(range(256, total + 1, 256))  # no duplicates, none missing
    assert [r["step"] for r in metrics(run)] == [r["step"] for r in kept]
    best = max(kept, key=lambda r: r["mean_return"])
    assert torch.load(run / "best.pt", weights_only=True)["num_steps"] in {r["step"] for r in kept
                                                                          if r["mean_return"] == best["mean_return"]}
    out = trpo("eval", str(run), "--checkpoint", "best", "--episodes", "1", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["step"] == torch.load(run / "best.pt",
                                                                                 weights_only=True)["num_steps"]


def test_eval_checkpoint_names_and_their_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert trpo("train", "--total-steps", "512", "--run-dir", str(run), *FAST).returncode == 0
    final = trpo("eval", str(run), "--checkpoint", "final", "--episodes", "1")
    assert final.returncode == 0 and "checkpoint at step 512" in final.stdout
    for args, message in [([str(run), "--checkpoint", "best"], "checkpoint not found"),
                          ([str(run / "final.pt"), "--checkpoint", "latest"], "is not one"),
                          ([str(run), "--checkpoint", "newest"], "invalid choice: 'newest'")]:
        res = trpo("eval", *args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("trpo: error:")]
        assert message in line, line


def test_trpo_train_says_each_periodic_evaluation_and_the_api_stays_silent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code, _, err = run_cli_output(["train", "--total-steps", "768", "--run-dir", str(run), "--eval-every", "256",
                                   "--vector-mode", "sync", "--num-envs", "1", "--steps-per-env", "128",
                                   "--value-epochs", "1", "--eval-episodes", "2"])
    assert code == 0, err
    lines = err.splitlines()
    said = [line for line in lines if line.startswith("eval at step")]
    assert said == evaluation_lines(rows(run / "evaluations.jsonl")) and len(said) == 3
    # Among the progress lines (not a terminal here: plain lines, the first at once, the last at the end).
    first, last = (next(i for i, line in enumerate(lines) if f" {step}/768 steps" in line) for step in (128, 768))
    assert first < lines.index(said[0]) and last < lines.index(said[-1])
    # The library prints nothing unless asked (progress=True).
    agent = TRPO("CartPole-v1", config=SMALL.replace(eval_every=128, num_envs=1), seed=0, run_dir=tmp_path / "api")
    capsys.readouterr()
    agent.learn(256)
    agent.close()
    assert capsys.readouterr() == ("", "") and len(agent.evaluations) == 2
    agent = TRPO("CartPole-v1", config=SMALL.replace(eval_every=128, num_envs=1), seed=0, progress=True)
    agent.learn(256)
    agent.close()
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("eval at step")] == \
        evaluation_lines(agent.evaluations)


def evaluation_lines(evaluations: list[dict]) -> list[str]:
    """The lines the training progress shows for these evaluations (of 2 episodes each)."""
    best, lines = -float("inf"), []
    for row in evaluations:
        new = row["mean_return"] > best
        best = max(best, row["mean_return"])
        lines.append(f"eval at step {row['step']}: mean return {row['mean_return']:.2f} +/- {row['std_return']:.2f} "
                     "over 2 episodes" + (", new best" if new else ""))
    return lines


def test_trpo_eval_shows_how_far_a_long_evaluation_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    assert run_cli(["train", "--total-steps", "256", "--run-dir", str(run), "--vector-mode", "sync", "--num-envs",
                    "1", "--steps-per-env", "128", "--value-epochs", "1", "--no-progress"])[0] == 0
    monkeypatch.setattr("trpo.logger.PLAIN_INTERVAL", 0.0)  # as if every step took the 5 s between plain lines
    code, out, err = run_cli_output(["eval", str(run), "--json"])
    assert code == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["episodes"] == 10  # the default without --video
    shown = [re.fullmatch(r"(\d+)/10 episodes  (\d+) steps  [\d,.]+ steps/s  elapsed \d\d:\d\d  ETA \S+", line)
             for line in err.splitlines()]
    assert all(shown) and len(shown) == sum(result["lengths"])  # a line per step at this interval
    counts = [(int(m[1]), int(m[2])) for m in shown if m]
    assert counts[-1] == (9, sum(result["lengths"]))  # the last step of the last episode
    assert [steps for _, steps in counts] == list(range(1, sum(result["lengths"]) + 1))


class _NaNAfter(gym.Env):
    """Finite observations until step `after` of an episode, then NaN in one coordinate."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self, after: int, where: int) -> None:
        self.after, self.where, self.t = after, where, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action: int) -> tuple:
        self.t += 1
        obs = self.observation_space.sample()
        if self.t >= self.after:
            obs[self.where] = float("nan") if self.where % 2 == 0 else float("inf")
        return obs, 1.0, False, self.t >= 20, {}


@pytest.mark.parametrize(("after", "where"), [(1, 0), (5, 1), (19, 2)])
def test_an_env_that_returns_a_non_finite_observation_in_evaluation_is_one_env_error(after: int, where: int) -> None:
    from trpo import EnvError

    agent = TRPO(lambda: _NaNAfter(after, where), seed=0, num_envs=1, vector_mode="sync")
    with pytest.raises(EnvError, match=r"non-finite observation \(NaN or inf\) in an evaluation episode"):
        agent.evaluate(2)
    agent.close()
