"""trpo bench: runs are ordinary run directories; finished ones are skipped, started ones resumed."""

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
from test_cli import _gone

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import replay

SMALL = ["--set", "steps_per_env=128", "value_epochs=2", "eval_episodes=2"]


def bench(tmp: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "trpo.cli", "bench", "--env", "CartPole-v1", "--seeds", "0", "1",
                          "--out", str(tmp), *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == code, res.stdout + res.stderr
    return res


def suite(tmp: Path, *args: str) -> str:
    return bench(tmp, *args).stdout


def test_suite_runs_skips_and_resumes(tmp_path: Path) -> None:
    out = suite(tmp_path, "--steps", "512", *SMALL)
    runs = [tmp_path / "CartPole-v1" / f"trpo-s{s}" for s in (0, 1)]
    for run in runs:
        assert json.loads((run / "eval.json").read_text())["step"] == 512
        assert (run / "checkpoints" / "latest.pt").is_file()
    assert "| CartPole-v1 | trpo | 512 | 0 1 |" in out
    # Each run said as it starts and as it ends (in the order they end), with its result and the runs ended.
    for seed, run in enumerate(runs):
        assert f"started: CartPole-v1 seed {seed} (trpo), 512 steps -> {run}\n" in out
    ended = [line for line in out.splitlines() if line.startswith("ended: ")]
    assert [line.split("; ")[1] for line in ended] == ["1/2 runs ended", "2/2 runs ended"]
    results = [json.loads((run / "eval.json").read_text())["mean_return"] for run in runs]
    for seed, result in enumerate(results):
        assert any(re.fullmatch(rf"ended: CartPole-v1 seed {seed} \(trpo\): final evaluation {result:.1f} in "
                                r"\d\d:\d\d; [12]/2 runs ended", line) for line in ended), out
    again = suite(tmp_path, "--steps", "512", *SMALL)
    assert again.count("done already") == 2 and "started:" not in again
    for seed, result in enumerate(results):
        assert re.search(rf"^skipped: CartPole-v1 seed {seed} \(trpo\): done already \(final evaluation "
                         rf"{result:.1f}\); [12]/2 runs ended$", again, re.MULTILINE), again
    # A larger budget continues both runs from their checkpoints: rows 1-2 kept, 3-4 added.
    more = suite(tmp_path, "--steps", "1024", *SMALL)
    assert more.count("resumed: CartPole-v1 seed ") == 2 and "started:" not in more
    for run in runs:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["update"] for r in rows] == [1, 2, 3, 4]
    assert "| CartPole-v1 | trpo | 1,024 | 0 1 |" in more
    assert "| 500 |" in more  # rl-zoo's CartPole figure beside ours

    # benchmarks/replay.py: the code here trains the recorded run again, row for row, up to where it was resumed
    # (a resumed run's envs start from fresh seeds: docs/runs.md); a changed row is found.
    said = replay.replay(runs[0], updates=2)
    assert said.startswith("identical over 2 updates; the CartPole preset gives another: steps_per_env 128 "
                           "(preset 512), value_epochs 2 (preset 20)"), said
    assert replay.replay(runs[0], updates=3).startswith("differs at update 3")
    metrics = runs[0] / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows[1]["entropy"] += 1e-7
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert replay.replay(runs[0], updates=2).startswith("differs at update 2, entropy: recorded")
    # The script's exit status says it: 1 where a record differs, so that a check that runs it fails.
    res = subprocess.run([sys.executable, replay.__file__, str(runs[0]), "--updates", "2"],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "1 of 1 records not trained again as recorded" in res.stderr, res.stderr


def test_suite_sets_any_field_booleans_included(tmp_path: Path) -> None:
    suite(tmp_path, "--steps", "256", "--label", "vine", "--set", "steps_per_env=128", "value_epochs=1",
          "eval_episodes=1", "normalize_advantages=false", "sampling=vine", "vine_states=4", "--preset", "none")
    config = (tmp_path / "CartPole-v1" / "vine-s0" / "config.yaml").read_text()
    assert "normalize_advantages: false" in config and "sampling: vine" in config and "vector_mode: sync" in config
    # --preset none: the field defaults under the --set values, not the CartPole preset's (minibatches of 512)
    assert "preset: null" in config and "value_minibatch: 128" in config
    bad = bench(tmp_path, "--set", "max_kl=big", code=2)
    assert "max_kl: cannot read 'big' as float" in bad.stderr and "Traceback" not in bad.stderr
    for args, message in ((["--set", "max_kl"], "'max_kl' is not FIELD=VALUE"), (["--shard", "3/2"], "shard must be"),
                          (["--jobs", "0"], "jobs must be a positive integer"), (["--seeds", "-1"], "seed must be"),
                          (["--peer", "nobody"], "unknown peer 'nobody'; known: sb3-contrib"),
                          (["--peer", "sb3-contrib", "--set", "max_kl=0.02"], "--set applies to trpo's runs"),
                          (["--peer", "rl-zoo", "--set", "env_kwargs=[1]"], "env_kwargs"),
                          (["--preset", "Nope"], "unknown preset 'Nope'"),
                          (["--peer", "sb3-contrib", "--preset", "none"], "--preset applies to trpo's runs")):
        assert message in bench(tmp_path, *args, code=2).stderr


def test_suite_runs_the_sb3_contrib_peer_as_run_directories(tmp_path: Path) -> None:
    # sb3-contrib's TRPO with rl-zoo's CartPole settings (2 envs x 512 steps per update), continued from its
    # checkpoint when the budget grows, in the same table and the same `trpo plot` as trpo's runs.
    out = suite(tmp_path, "--seeds", "0", "--steps", "1024", "--peer", "sb3-contrib")
    run = tmp_path / "CartPole-v1" / "sb3-contrib-s0"
    assert "| CartPole-v1 | sb3-contrib | 1,024 | 0 |" in out
    assert (run / "checkpoints" / "model.zip").is_file()
    more = suite(tmp_path, "--seeds", "0", "--steps", "2048", "--peer", "sb3-contrib")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1024, 2048] and all(r["episodes"] > 0 for r in rows)
    result = json.loads((run / "eval.json").read_text())
    assert result["step"] == 2048 and result["episodes"] == 10 and len(result["returns"]) == 10
    assert "| CartPole-v1 | sb3-contrib | 2,048 | 0 |" in more
    assert "gae_lambda: 0.98" in (run / "config.yaml").read_text()  # rl-zoo's CartPole entry
    png = tmp_path / "curves.png"
    subprocess.run([sys.executable, "-m", "trpo.cli", "plot", str(tmp_path / "CartPole-v1"), "--out", str(png)],
                   check=True, capture_output=True, timeout=120)
    assert png.stat().st_size > 0
    # The env's own options reach the peer's envs, training and evaluation (CartPole's Sutton-Barto reward: 0 a
    # step, -1 at a fall), and its record.
    suite(tmp_path, "--seeds", "0", "--steps", "1024", "--peer", "sb3-contrib", "--label", "sutton",
          "--set", 'env_kwargs={"sutton_barto_reward": true}')
    kw_run = tmp_path / "CartPole-v1" / "sutton-s0"
    assert set(json.loads((kw_run / "eval.json").read_text())["returns"]) <= {0.0, -1.0}
    assert all(json.loads(line)["episode_return_mean"] <= 0 for line in (kw_run / "metrics.jsonl").open())
    assert "sutton_barto_reward: true" in (kw_run / "config.yaml").read_text()
    bad = subprocess.run([sys.executable, "-m", "trpo.cli", "bench", "--env", "Foo-v0", "--peer", "sb3-contrib",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--peer sb3-contrib: no rl-zoo TRPO settings for Foo-v0" in bad.stderr


def test_summary_trains_nothing_and_the_budget_is_the_presets(tmp_path: Path) -> None:
    from trpo.bench import budget
    from trpo.resolve import PRESET_STEPS

    out = suite(tmp_path, "--steps", "256", *SMALL)
    assert "| CartPole-v1 | trpo | 256 | 0 1 |" in out
    table = suite(tmp_path, "--steps", "256", "--summary")
    assert "| CartPole-v1 | trpo | 256 | 0 1 |" in table and "runs (shard" not in table
    # Without --steps each env gets its preset's budget, as `trpo train` gives it (1M without a preset).
    assert budget("CartPole-v1", None) == PRESET_STEPS["CartPole"] and budget("Foo-v0", None) == 1_000_000
    assert "| CartPole-v1 |" not in suite(tmp_path, "--summary")  # 256-step runs are not at the preset's budget


def test_bench_runs_rl_zoos_own_script_as_the_peer(tmp_path: Path) -> None:
    # rl_zoo3's train script with its own trpo.yml (CartPole: 2 envs x 512 steps), recorded as a run directory
    # (its config, one metrics row per batch from its Monitor files) and evaluated as trpo's runs are.
    # With the env's own options passed on (CartPole's Sutton-Barto reward: 0 a step, -1 at a fall), in training
    # and in the evaluation.
    kwargs = ["--set", 'env_kwargs={"sutton_barto_reward": true}']
    out = suite(tmp_path, "--seeds", "0", "--steps", "2048", "--peer", "rl-zoo", *kwargs)
    run = tmp_path / "CartPole-v1" / "rl-zoo-s0"
    assert "| CartPole-v1 | rl-zoo | 2,048 | 0 |" in out
    result = json.loads((run / "eval.json").read_text())
    assert result["step"] >= 2048 and result["episodes"] == 10 and set(result["returns"]) <= {0.0, -1.0}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == list(range(1, len(rows) + 1)) and rows and rows[0]["step"] >= 1024
    assert all(r["episode_return_mean"] <= 0 for r in rows)
    assert yaml.safe_load((run / "config.yaml").read_text())["command"] == (
        "python -m rl_zoo3.train --algo trpo --env CartPole-v1 -n 2048 --seed 0 --env-kwargs sutton_barto_reward:True")
    assert "done already" in suite(tmp_path, "--seeds", "0", "--steps", "2048", "--peer", "rl-zoo", *kwargs)
    bad = bench(tmp_path, "--peer", "rl-zoo", "--env", "Hopper-v5", code=2)
    assert "rl_zoo3's trpo.yml has no entry for Hopper-v5" in bad.stderr


def test_a_failed_run_is_said_with_its_log_and_counted(tmp_path: Path) -> None:
    # gym.make refuses the keyword in the run's own process: that run fails, the benchmark goes on to its table.
    code, out, err = run_cli_output(["bench", "--env", "CartPole-v1", "--seeds", "0", "--steps", "256", "--out",
                                     str(tmp_path), "--set", 'env_kwargs={"no_such_option": 1}'])
    run = tmp_path / "CartPole-v1" / "trpo-s0"
    # The table is printed, then status 1 and a line naming the failed run and its log.
    assert code == 1 and "| env | label |" in out, err
    assert err == f"trpo: 1 run failed: CartPole-v1 seed 0 (trpo) (exit 2, see {run}.log)\n"
    (ended,) = [line for line in out.splitlines() if line.startswith("ended: ")]
    assert re.fullmatch(rf"ended: CartPole-v1 seed 0 \(trpo\): FAILED \(exit 2, see {re.escape(str(run))}\.log\) "
                        r"in \d\d:\d\d; 1/1 runs ended, 1 failed", ended), out
    assert "no_such_option" in Path(f"{run}.log").read_text()


def test_an_env_or_seed_given_twice_is_refused_before_anything_runs(tmp_path: Path) -> None:
    # Twice the same seed would be two runs in one run directory.
    for args, named in ((["--seeds", "0", "1", "0"], "--seeds names 0 more than once"),
                        (["--env", "CartPole-v1", "CartPole-v1", "--seeds", "0"], "--env names CartPole-v1 more")):
        code, _, err = run_cli_output(["bench", "--env", "CartPole-v1", "--steps", "256", "--out", str(tmp_path),
                                       *SMALL, *args])
        assert code == 2 and err.startswith(f"trpo: error: {named}") and err.count("\n") == 1, err
        assert not (tmp_path / "CartPole-v1").exists()


def test_damaged_results_are_said_and_stray_directories_ignored(tmp_path: Path) -> None:
    runs = tmp_path / "CartPole-v1"
    damaged = {"not-json": b"{", "not-utf8": b"\xff\xfe", "a-list": b"[1]", "text-step": b'{"step": "x"}',
               "no-return": b'{"step": 256}', "nan-return": b'{"step": 256, "mean_return": NaN}'}
    for name, data in damaged.items():
        (runs / f"{name}-s0").mkdir(parents=True)
        (runs / f"{name}-s0" / "eval.json").write_bytes(data)
    (runs / "dir-s0" / "eval.json").mkdir(parents=True)
    for stray in ("notes-sX", "-s3", "plain"):  # not LABEL-sSEED: not runs, whatever they hold
        (runs / stray).mkdir()
        (runs / stray / "eval.json").write_text('{"step": 256, "mean_return": 1.0}')
    (runs / "good-s1").mkdir()
    (runs / "good-s1" / "eval.json").write_text('{"step": 256, "mean_return": 9.5}')
    code, out, err = run_cli_output(["bench", "--env", "CartPole-v1", "--steps", "256", "--out", str(tmp_path),
                                     "--summary"])
    assert code == 0 and not err, err
    assert "| CartPole-v1 | good | 256 | 1 | 9.5 |" in out and out.count("| CartPole-v1 |") == 1, out
    said = [line for line in out.splitlines() if line.startswith("damaged, not counted: ")]
    assert sorted(said) == sorted(f"damaged, not counted: {runs / f'{name}-s0' / 'eval.json'} {why}"
                                  for name, why in [*((n, "holds no step and final evaluation") for n in
                                                      ("a-list", "text-step", "no-return", "nan-return")),
                                                    ("not-json", "is unreadable (JSONDecodeError)"),
                                                    ("not-utf8", "is unreadable (UnicodeDecodeError)"),
                                                    ("dir", "is unreadable (IsADirectoryError)")]), out


def test_a_finished_run_whose_result_was_damaged_is_evaluated_again(tmp_path: Path) -> None:
    suite(tmp_path, "--seeds", "0", "--steps", "256", *SMALL)
    result = tmp_path / "CartPole-v1" / "trpo-s0" / "eval.json"
    before = json.loads(result.read_text())
    result.write_text('{"step": ')  # cut short
    again = suite(tmp_path, "--seeds", "0", "--steps", "256", *SMALL)
    assert "resumed: CartPole-v1 seed 0" in again and "| CartPole-v1 | trpo | 256 | 0 |" in again, again
    assert json.loads(result.read_text()) == before  # the same checkpoint, evaluated again


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc")
def test_sigterm_stops_the_runs_it_started(tmp_path: Path) -> None:
    # SIGTERM reaches the bench process only (Ctrl-C reaches its whole process group): it must end its runs itself.
    proc = subprocess.Popen([sys.executable, "-m", "trpo.cli", "bench", "--env", "CartPole-v1", "--seeds", "0", "1",
                             "--steps", "400000", "--out", str(tmp_path), *SMALL], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = [tmp_path / "CartPole-v1" / f"trpo-s{seed}" / "metrics.jsonl" for seed in (0, 1)]
    deadline = time.time() + 120
    while time.time() < deadline and not all(m.is_file() and m.read_text() for m in metrics):
        time.sleep(0.1)
    # Started from the pool's threads: each thread's children are its task's.
    tasks = Path(f"/proc/{proc.pid}/task").iterdir()
    runs = [int(p) for task in tasks for p in (task / "children").read_text().split()]
    assert len(runs) == 2
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        for pid in (proc.pid, *runs):  # whatever the outcome, leave nothing running
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 143 and err.strip().endswith("trpo: terminated (SIGTERM); finished runs are kept; the "
                                                           "same command skips them and continues the others from "
                                                           "their checkpoints"), err
    assert all(_gone(pid) for pid in runs)
    assert out.count("; the same command continues it") == 2 and "FAILED" not in out, out
    for seed in (0, 1):  # each run stopped as `trpo train` does on SIGTERM, saying what it keeps
        assert "trpo: terminated (SIGTERM); " in Path(f"{metrics[seed].parent}.log").read_text()


def _rows(run: Path, rows: list[dict]) -> Path:
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_time_to_target_sums_training_time_until_the_last_10_updates_episodes_reach_it(tmp_path: Path) -> None:
    from trpo.bench import time_to, time_to_target

    # 1000 steps an update at 500 steps/s: 2 s each; returns climb by 10 an update, episodes every update but the
    # 3rd (its row has no return and does not enter the window).
    rows = [{"update": u, "step": 1000 * u, "fps": 500.0, "episodes": 0 if u == 3 else 1,
             **({} if u == 3 else {"episode_return_mean": 10.0 * u})} for u in range(1, 31)]
    climbing = _rows(tmp_path / "a", rows)
    # The window of the updates 13-22 (3 skipped) is the first whose mean is >= 175: mean(130..220) = 175 at
    # update 22, after 44 s.
    assert time_to(climbing, 175.0) == pytest.approx(44.0)
    assert time_to(climbing, 1000.0) is None
    assert time_to(tmp_path / "none", 1.0) is None  # no rows: never
    flat = _rows(tmp_path / "b", [{**r, "episode_return_mean": 0.0} for r in rows if r["episodes"]])
    assert time_to_target([climbing, flat], 175.0) == "00:44 (1/2)"
    assert time_to_target([flat], 175.0) == "- (0/1)" and time_to_target([flat], None) == "-"
