"""trpo tune: Optuna studies shared by processes through one SQLite file, pruning on periodic evaluations, resume
after Ctrl-C, the best trial as a config file `trpo train` takes, and a search space checked as a class."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from clitools import run_cli_output
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import _gone

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
    # Exactly 5: a trial starts only where fewer than 5 before it are finished or running; one asked for after that
    # ends at once, failed and marked surplus, and is not in the summary.
    assert len(finished(trials)) == 5, [(t.number, t.state) for t in trials]
    kept = [t for t in trials if not t.user_attrs.get("surplus")]
    assert len(finished(kept)) == len(kept) and len({t.number for t in trials}) == len(trials)
    assert all(t.state == optuna.trial.TrialState.FAIL and not t.intermediate_values for t in trials if t not in kept)
    said = tune(tmp_path, "--trials", "5", "--summary").stdout.splitlines()[0]  # "study 'X': 3 complete, 2 pruned"
    assert sum(int(n) for n, state in re.findall(r"(\d+) (\w+)", said) if state in ("complete", "pruned")) == 5
    assert "fail" not in said, said
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
    # Each said as it ended, from the two processes' trials in the study (this process only waits for them).
    pruned = [ln for ln in res.stderr.splitlines() if re.match(r"trpo: trial \d+ pruned at step 512 \(evaluation ", ln)]
    assert len(pruned) == 4 and all("; best 1000000.00 (trial 1); " in ln for ln in pruned), res.stderr
    assert [ln.split("; ")[-1].split(" trials")[0] for ln in pruned] == ["3/6", "4/6", "5/6", "6/6"]


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
    said = [ln for ln in res.stderr.splitlines() if ln.startswith("trpo: trial ")]
    assert len(said) == len(trials)  # every trial, failed or not, as it ended
    for t in failed:
        assert any(ln.startswith(f"trpo: trial {t.number} failed: ConfigError: a batch of 8 x 256 steps exceeds the "
                                 "trial's 1024 steps (num_envs=8); ") for ln in said), res.stderr


def test_each_trial_is_said_as_it_ends(tmp_path: Path) -> None:
    cmd = tune_cmd(tmp_path, "--trials", "2", "--pruner", "none")
    code, _, err = run_cli_output(cmd[cmd.index("tune"):])  # in this process: one job, the callback's lines
    assert code == 0, err
    trials = study(tmp_path).trials
    lines = err.splitlines()
    assert lines[0].startswith("trpo: tuning CartPole-v1 (1,024 steps a trial, 4 evaluations)") and len(lines) == 3
    best = None
    for t, line in zip(trials, lines[1:], strict=True):
        best = t if best is None or t.value > best.value else best
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        assert re.fullmatch(rf"trpo: trial {t.number} complete: {t.value:.2f} \({re.escape(params)}\); best "
                            rf"{best.value:.2f} \(trial {best.number}\); {t.number + 1}/2 trials finished, "
                            r"\d\d:\d\d elapsed", line), line


def test_an_output_directory_holds_one_study_and_refuses_another_storage(tmp_path: Path) -> None:
    cmd = tune_cmd(tmp_path, "--trials", "1", "--pruner", "none", "--total-steps", "256", "--evaluations", "1")
    code, _, err = run_cli_output(cmd[cmd.index("tune"):])
    assert code == 0, err
    best = tmp_path / "tune" / "CartPole-v1" / "best.yaml"
    written = best.read_text()
    # The same study name in another storage would write its trial_0 and best.yaml over these: refused.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    code, _, err = run_cli_output([*cmd[cmd.index("tune"):], "--storage", other])
    assert code == 2 and err.count("\n") == 1 and err.startswith(
        f"trpo: error: {tmp_path / 'tune' / 'CartPole-v1'} holds the trials of study 'CartPole-v1' in "
        f"sqlite:///../CartPole-v1.db (a SQLite path from that directory), not of 'CartPole-v1' in {other}, "), err
    assert best.read_text() == written and not (tmp_path / "other.db").exists()


def test_errors_of_storage_and_worker_processes_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = tune_cmd(tmp_path, "--trials", "2", "--total-steps", "256", "--evaluations", "1")[3:]
    code, _, err = run_cli_output([*cmd, "--storage", "sqlite:///"])  # SQLAlchemy's in-memory database
    assert code == 2 and err == ("trpo: error: --storage sqlite:/// names no database file: give sqlite:///PATH.db "
                                 "(or a server's URL)\n"), err
    # The env raises in step() in both worker processes: their line, not a traceback of this one.
    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    cmd[cmd.index("CartPole-v1")] = "trpo_testenvs:RaisesInStep-v0"
    code, _, err = run_cli_output([*cmd, "--jobs", "2"])
    study_dir = tmp_path / "tune" / "trpo_testenvs_RaisesInStep-v0"
    assert code == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1] == ("trpo: error: workers 0, 1: env 0 (RaisesInStep-v0) raised RuntimeError in "
                                    "step(): the simulator diverged (see "
                                    f"{study_dir / 'worker_0.log'}, {study_dir / 'worker_1.log'})"), err


def _start_long_trials(tmp_path: Path, jobs: int) -> tuple[subprocess.Popen[str], list[str]]:
    """A tune of `jobs` processes whose trials would take minutes, returned once each has written a metrics row;
    and its command line."""
    cmd = tune_cmd(tmp_path, "--trials", "2", "--pruner", "none", "--jobs", str(jobs))
    cmd[cmd.index("1024")] = "400000"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rows = [tmp_path / "tune" / "CartPole-v1" / f"trial_{n}" / "metrics.jsonl" for n in range(jobs)]
    deadline = time.time() + 120
    while not all(m.is_file() and m.read_text() for m in rows) and time.time() < deadline:
        time.sleep(0.2)
    return proc, cmd


def test_a_killed_tunes_trial_is_marked_failed_by_the_next_command(tmp_path: Path) -> None:
    proc, cmd = _start_long_trials(tmp_path, 1)
    proc.kill()  # SIGKILL: nothing of the process's own runs
    proc.communicate(timeout=60)
    assert [t.state for t in study(tmp_path).trials] == [optuna.trial.TrialState.RUNNING]
    code, out, err = run_cli_output([*cmd[3:], "--summary"])  # a later command finds its process gone
    assert code == 0, err
    (trial,) = study(tmp_path).trials
    assert trial.state == optuna.trial.TrialState.FAIL
    reason = f"interrupted: its process {proc.pid} on {trial.user_attrs['host']} ended without finishing it (killed?)"
    assert trial.user_attrs["error"] == reason
    assert "study 'CartPole-v1': 1 fail\n" in out and f"trial 0 failed: {reason}" in out


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc")
def test_sigterm_with_jobs_ends_the_worker_processes_and_their_trials(tmp_path: Path) -> None:
    proc, _ = _start_long_trials(tmp_path, 2)
    workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(workers) == 2
    proc.terminate()  # SIGTERM reaches the parent alone
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        for pid in (proc.pid, *workers):
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 143 and "trpo: terminated (SIGTERM); study 'CartPole-v1'" in err, err
    assert all(_gone(pid) for pid in workers)
    trials = study(tmp_path).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2
    assert all(t.user_attrs["error"] == "interrupted (Ctrl-C or SIGTERM)" for t in trials)
