"""trpo tune: Optuna studies shared by processes through one SQLite file, pruning on periodic evaluations, resume
after Ctrl-C, the best trial as a config file `trpo train` takes, and a search space checked as a class."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from trpo.config import ConfigError
from trpo.tune import DEFAULT_SPACE, parse_space, settings_for

optuna = pytest.importorskip("optuna")

SPACE = """\
max_kl: {low: 0.005, high: 0.05, log: true}
gae_lambda: [0.9, 0.95]
value_epochs: {low: 1, high: 3}
"""
# 4 updates of 256 steps a trial, evaluated (3 episodes) after each: a trial takes about a second.
SMALL = ["--env", "CartPole-v1", "--total-steps", "1024", "--evaluations", "4", "--startup-trials", "1",
         "--set", "steps_per_env=256", "num_envs=1", "eval_episodes=3"]


def tune_cmd(tmp: Path, *args: str) -> list[str]:
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    return [sys.executable, "-m", "trpo.cli", "tune", *SMALL, "--space", str(space), "--out", str(tmp / "tune"),
            *args]


def tune(tmp: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(tune_cmd(tmp, *args), capture_output=True, text=True, timeout=300)
    assert res.returncode == code, res.stdout + res.stderr
    return res


def study(tmp: Path) -> optuna.Study:
    return optuna.load_study(study_name="CartPole-v1", storage=f"sqlite:///{tmp / 'tune' / 'CartPole-v1.db'}")


def finished(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def test_jobs_share_one_sqlite_study_and_the_best_trains(tmp_path: Path) -> None:
    res = tune(tmp_path, "--trials", "4", "--jobs", "2", "--pruner", "none")
    trials = study(tmp_path).trials
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.user_attrs["worker"] for t in trials) == [0, 0, 1, 1]  # two processes, two trials each
    for t in trials:  # each trial is a run directory evaluated at every quarter of its budget
        run = Path(t.user_attrs["run_dir"])
        assert [r["step"] for r in map(json.loads, (run / "evaluations.jsonl").read_text().splitlines())] == \
            [256, 512, 768, 1024]
        assert sorted(t.intermediate_values) == [256, 512, 768, 1024]
    assert "study 'CartPole-v1': 4 complete" in res.stdout and "| trial | value | max_kl |" in res.stdout
    best = study(tmp_path).best_trial
    path = tmp_path / "tune" / "CartPole-v1" / "best.yaml"
    written = yaml.safe_load(path.read_text())
    assert written["env"] == "CartPole-v1" and written["total_steps"] == 1024
    assert {k: written[k] for k in best.params} == best.params and written["steps_per_env"] == 256
    # The best trial's file is a config `trpo train` takes: same settings, so the same final evaluation.
    subprocess.run([sys.executable, "-m", "trpo.cli", "train", "--config", str(path), "--run-dir",
                    str(tmp_path / "again"), "--no-progress", "--vector-mode", "sync"], check=True,
                   capture_output=True, timeout=300)
    again = json.loads((tmp_path / "again" / "eval.json").read_text())
    assert again["mean_return"] == pytest.approx(best.value)


def test_two_commands_on_one_study_and_a_run_that_goes_on(tmp_path: Path) -> None:
    # Two independent `trpo tune` processes (as two machines would) fill one study without losing a trial.
    procs = [subprocess.Popen(tune_cmd(tmp_path, "--trials", "5"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
    trials = study(tmp_path).trials
    assert 5 <= len(finished(trials)) <= 6  # each stops once the study has 5 (one may be mid-trial then)
    assert len(finished(trials)) == len(trials) and len({t.number for t in trials}) == len(trials)
    # More trials later: the study goes on from what it holds.
    tune(tmp_path, "--trials", "7")
    assert len(finished(study(tmp_path).trials)) == 7
    # Another budget on the same study is refused in one line, naming what differs.
    res = tune(tmp_path, "--trials", "8", "--evaluations", "2", code=2)
    assert "was made with another evaluations" in res.stderr and "Traceback" not in res.stderr


def test_median_pruner_stops_trials_below_the_median(tmp_path: Path) -> None:
    tune(tmp_path, "--trials", "1")
    # A finished trial far above anything 1,024 steps can reach: every new trial is below the median at each step
    # after the warm-up (a third of the budget) and is pruned there, in each of two processes.
    s = study(tmp_path)
    real = s.trials[0]
    s.add_trial(optuna.trial.create_trial(params=real.params, distributions=real.distributions, value=1e6,
                                          intermediate_values={step: 1e6 for step in real.intermediate_values}))
    res = tune(tmp_path, "--trials", "6", "--jobs", "2")
    new = [t for t in study(tmp_path).trials if t.number >= 2]
    assert len(new) == 4 and all(t.state == optuna.trial.TrialState.PRUNED for t in new)
    assert {t.user_attrs["worker"] for t in new} == {0, 1}
    for t in new:  # pruned at its first evaluation past the warm-up (step 341): it trained 512 of 1,024 steps
        assert sorted(t.intermediate_values) == [256, 512]
        rows = (Path(t.user_attrs["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        assert json.loads(rows[-1])["step"] == 512
    assert "4 pruned" in res.stdout


def test_ctrl_c_fails_the_trial_and_the_study_goes_on(tmp_path: Path) -> None:
    cmd = tune_cmd(tmp_path, "--trials", "1", "--pruner", "none")
    cmd[cmd.index("1024")] = "20480"  # a long first trial to interrupt
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "tune" / "CartPole-v1" / "trial_0" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert [t.state for t in study(tmp_path).trials] == [optuna.trial.TrialState.FAIL]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    states = [t.state for t in study(tmp_path).trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]


def test_summary_needs_the_study(tmp_path: Path) -> None:
    res = tune(tmp_path, "--summary", code=2)
    assert "no study 'CartPole-v1'" in res.stderr


@pytest.mark.parametrize(("space", "message"), [
    ({"no_such_field": [1]}, "unknown config field 'no_such_field'"),
    ({"vector_mode": ["sync"]}, "says how trials run"),
    ({"gamma": []}, "no choices"),
    ({"gamma": [0.9, 0.9]}, "repeats a choice"),
    ({"max_kl": {"low": 0.1, "high": 0.01}}, "needs low < high"),
    ({"max_kl": {"low": 0.0, "high": 0.01, "log": True}}, "low > 0"),
    ({"actor_hidden": {"low": 1, "high": 2}}, "not a number"),
    ({"value_epochs": {"low": 1.5, "high": 3}}, "finite integer"),
    ({"max_kl": {"low": 0.01, "high": 0.1, "step": 2}}, "takes low, high"),
    ({"max_kl": 0.01}, "list of choices or"),
    ({"actor_hidden": [[64, 64]]}, "numbers, booleans or text"),
    ({}, "non-empty mapping"),
])
def test_bad_spaces_are_refused_in_one_line(space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_space(space)


def test_default_space_and_settings_are_checked(tmp_path: Path) -> None:
    dims = parse_space(DEFAULT_SPACE)
    assert {d.name for d in dims} >= {"max_kl", "cg_damping", "gamma", "gae_lambda", "value_lr", "actor_hidden",
                                      "normalize_obs"}
    assert next(d for d in dims if d.name == "max_kl").log
    with pytest.raises(ConfigError, match="--set fixes max_kl"):
        settings_for("CartPole-v1", 5, sets={"max_kl": "0.02"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_kl: [0.01, -1.0]\n")  # each value is checked on the preset before any trial runs
    with pytest.raises(ConfigError, match=r"bad.yaml: max_kl: -1.0 is refused: max_kl must be"):
        settings_for("CartPole-v1", 5, space_file=str(bad))
    with pytest.raises(ConfigError, match="eval_episodes must be > 0"):
        settings_for("CartPole-v1", 5, sets={"eval_episodes": "0"})
    assert settings_for("Pendulum-v1", 5).total_steps == 100_000  # the preset's budget


values = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.floats(allow_nan=True), st.text(max_size=8),
                   st.lists(st.one_of(st.integers(-3, 300), st.floats(-1, 2), st.text(max_size=6), st.booleans()),
                            max_size=4),
                   st.dictionaries(st.sampled_from(["low", "high", "log", "step"]),
                                   st.one_of(st.integers(-3, 300), st.floats(), st.booleans(), st.text(max_size=3)),
                                   max_size=4))
names = st.one_of(st.sampled_from(["max_kl", "gamma", "value_epochs", "actor_hidden", "normalize_obs", "recurrent",
                                   "cg_iters", "policy_lr", "device", "update_rule"]), st.text(max_size=6))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, values, max_size=3))
def test_any_space_is_either_usable_or_one_config_error(space: dict) -> None:
    # The class of bad spaces: whatever the file holds, parsing gives dimensions whose every value the config
    # takes, or a ConfigError, never another exception.
    try:
        dims = parse_space(space)
    except ConfigError:
        return
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    from trpo.config import coerce_fields

    for _ in range(3):
        trial = study.ask()
        coerce_fields({d.name: d.suggest(trial) for d in dims})


def test_failed_trials_are_replaced_and_say_why(tmp_path: Path) -> None:
    # Half the batch shapes overrun the budget: those trials fail with their reason, and others replace them until
    # the study holds the trials asked for.
    space = tmp_path / "batch.yaml"
    space.write_text("num_envs: [1, 8]\n")  # 8 x 256 steps: over the 1,024 of a trial
    cmd = tune_cmd(tmp_path, "--trials", "3", "--sampler", "random", "--pruner", "none")
    cmd[cmd.index("--space") + 1] = str(space)
    cmd.remove("num_envs=1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    trials = study(tmp_path).trials
    assert len(finished(trials)) == 3
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all(t.params["num_envs"] == 8 for t in failed)
    assert "exceeds the trial's 1024 steps" in res.stdout
