"""The command line, run as a user runs it: in a subprocess, checking exit codes, outputs and run directories
(error-only cases in this process through main(), clitools.py: the same exit status and stderr, without 2-3 s of
imports each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from clitools import cli, error_lines, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from trpo.cli import build_parser, main
from trpo.config import TRPOConfig, available_cores
from trpo.rollout.collector import layout

TESTS = Path(__file__).parent
FAST = ["--num-envs", "2", "--steps-per-env", "128", "--value-epochs", "2", "--no-progress", "--eval-episodes", "2"]


def trpo(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "trpo.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def trained_run(tmp_path: Path, env: str, total: int = 256, *extra: str) -> Path:
    """A small run of `env` trained through the CLI's main() in this process, in tmp_path/run (one env, 128-step
    batches unless `extra` says otherwise)."""
    run = tmp_path / "run"
    res = cli("train", "--env", env, "--total-steps", str(total), "--run-dir", str(run), "--num-envs", "1",
              "--steps-per-env", "128", "--eval-episodes", "1", "--no-progress", *extra)
    assert res.returncode == 0, res.stderr
    return run


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
    # At most the temporary file of the write the kill interrupted (".latest.pt.PID.tmp"), and the resume below
    # removes it.
    assert {p.name for p in run.rglob("*.tmp")} <= {f".latest.pt.{proc.pid}.tmp", f".config.yaml.{proc.pid}.tmp"}
    (run / "checkpoints" / f".latest.pt.{proc.pid}.tmp").write_bytes(b"half a checkpoint")  # as if it were there
    state = torch.load(latest, weights_only=True)  # whole and readable
    killed_at = state["num_updates"]
    assert 1 <= killed_at < 40000 // 256
    res = trpo("train", "--resume", str(run), "--total-steps", str((killed_at + 2) * 256), "--no-progress",
               "--eval-episodes", "1")
    assert res.returncode == 0, res.stderr
    assert not list(run.rglob("*.tmp"))
    updates = [r["update"] for r in metrics(run)]
    assert updates == list(range(1, killed_at + 3))  # rows past the checkpoint were dropped, then continued
    # TensorBoard hides the events the killed run wrote past its checkpoint: one value per step.
    assert tensorboard_steps(run) == [256 * u for u in updates]


def strip_timing(rows: list[dict]) -> list[dict]:
    from trpo.logger import TIMING_FIELDS

    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


def start_and_kill(run: Path, args: list[str], rows: int) -> None:
    """Start `trpo train` in a subprocess and SIGKILL it once metrics.jsonl holds `rows` rows."""
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    proc = subprocess.Popen([sys.executable, "-m", "trpo.cli", "train", "--run-dir", str(run), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= rows):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def tensorboard_steps(run: Path, tag: str = "trpo/kl") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return [event.step for event in acc.Scalars(tag)]


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(tmp_path: Path) -> None:
    run, ref = tmp_path / "run", tmp_path / "ref"
    args = ["--total-steps", "40000", "--checkpoint-every", "1000", *FAST]
    start_and_kill(run, args, rows=3)
    assert not (run / "checkpoints" / "latest.pt").exists() and len(metrics(run)) >= 3
    res = trpo("train", "--resume", str(run), "--total-steps", "1280", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "from the start" in res.stderr
    # The saved config and seed, from update 1: the same run as one never interrupted.
    full = trpo("train", "--run-dir", str(ref), "--total-steps", "1280", *args[2:])
    assert full.returncode == 0, full.stderr
    assert [r["update"] for r in metrics(run)] == [1, 2, 3, 4, 5]
    assert strip_timing(metrics(run)) == strip_timing(metrics(ref))
    assert tensorboard_steps(run) == tensorboard_steps(ref) == [256, 512, 768, 1024, 1280]


def test_resume_keeps_the_runs_setup_and_allows_only_safe_changes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = trpo("train", "--total-steps", "256", "--run-dir", str(run), "--checkpoint-every", "1", *FAST)
    assert first.returncode == 0, first.stderr
    for flags, message in [(["--env", "Pendulum-v1"], "drop --env"), (["--seed", "2"], "drop --seed"),
                           (["--run-dir", str(tmp_path / "x"), "--overwrite"], "drop --run-dir, --overwrite"),
                           (["--env", ""], "--env needs a value, got ''"),
                           (["--max-kl", "0.1"], "max_kl cannot change")]:
        code, stderr = run_cli(["train", "--resume", str(run), *flags, "--no-progress"])
        assert code == 2 and message in stderr and "Traceback" not in stderr, stderr
    ok = trpo("train", "--resume", str(run), "--total-steps", "512", "--num-workers", "1", "--device", "cpu",
              "--no-progress", "--eval-episodes", "1")
    assert ok.returncode == 0, ok.stderr
    assert [r["update"] for r in metrics(run)] == [1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text())["total_steps"] == 512
    assert json.loads((run / "eval.json").read_text())["step"] == 512
    done = trpo("train", "--resume", str(run), "--no-progress")
    assert done.returncode == 0 and "already reached 512 of 512 steps" in done.stderr, done.stderr
    assert [r["update"] for r in metrics(run)] == [1, 2]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")  # exited, unreaped
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc")
def test_env_workers_exit_quietly_when_the_main_process_is_killed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    log = open(tmp_path / "stderr.txt", "w")  # noqa: SIM115 - the workers write here after the main process died
    proc = subprocess.Popen([sys.executable, "-m", "trpo.cli", "train", "--run-dir", str(run), "--total-steps",
                             "400000", "--num-envs", "2", "--num-workers", "2", "--vector-mode", "subprocess",
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=log, env=env)
    log.close()
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and metrics(run)):
        time.sleep(0.05)
    workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and not all(_gone(pid) for pid in workers):
        time.sleep(0.05)
    alive = [pid for pid in workers if not _gone(pid)]
    for pid in alive:  # do not leave them behind, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert not alive, "env workers outlived their main process"
    written = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in written and "Error" not in written, written


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
    (["train", "--seed", "-1"], "seed must be an integer in [0, 4294967295]"),
    (["train", "--seed", "abc"], "seed must be an integer in [0, 4294967295]"),
    (["train", "--seed", "18446744073709551616"], "seed must be an integer in [0, 4294967295]"),
    (["train", "--torch-threads", "100000"], "torch_threads must lie in"),
    (["train", "--env", ""], "--env needs a value, got ''"),
    (["train", "--total-steps", ""], "--total-steps needs a value, got ''"),
    (["train", "--resume", " "], "--resume needs a value, got ' '"),
    (["eval", ""], "path needs a value, got ''"),
    (["train", "--device", "mps"], "MPS is not available"),
    (["train", "--preset", "Nope"], "unknown preset 'Nope'"),
    (["train", "--config", "missing.yaml"], "config file not found"),
    (["train", "--resume", "no_such_run"], "not a run directory"),
    (["train", "--total-step", "100"], "unrecognized arguments: --total-step 100; did you mean --total-steps?"),
    (["train", "--bogus"], "unrecognized arguments: --bogus (see 'trpo train --help')"),
    (["eval", "x.pt", "--bogus"], "unrecognized arguments: --bogus (see 'trpo eval --help')"),
    (["trian"], "invalid choice: 'trian'"),
    (["eval", "missing.pt"], "checkpoint not found"),
    (["train", "--env", "trpo_testenvs:NanObs-v0", "--total-steps", "1000"], "non-finite observation"),
    (["train", "--env", "trpo_testenvs:NanReward-v0", "--total-steps", "1000"], "non-finite reward"),
    # The user's own env failing, in this process and in worker processes alike.
    (["train", "--env", "trpo_testenvs:RaisesInInit-v0"], "RuntimeError: the simulator failed to start"),
    (["train", "--env", "trpo_testenvs:RaisesInStep-v0"],
     "env 0 (RaisesInStep-v0) raised RuntimeError in step(): the simulator"),
    (["train", "--env", "trpo_testenvs:RaisesInStep-v0", "--vector-mode", "subprocess", "--num-envs", "2"],
     "raised RuntimeError in step(): the simulator diverged"),
    (["train", "--env", "trpo_testenvs:WrongShapeObs-v0"],
     "env 0 (WrongShapeObs-v0) returned a bad observation from step(): an observation of shape (3,) does not fit"),
    # What the env returns is checked against its spaces, with the env and the call named.
    (["train", "--env", "trpo_testenvs:ReshapedObs-v0"], "an observation of shape (2, 1) does not fit"),
    (["train", "--env", "trpo_testenvs:ResetReshapedObs-v0"], "env 0 (ResetReshapedObs-v0) returned a bad "
     "observation from reset(): an observation of shape (2, 1)"),
    (["train", "--env", "trpo_testenvs:OutOfRangeObs-v0"], "observation -1 is outside Discrete(4)"),
    (["train", "--env", "trpo_testenvs:HugeReward-v0"], "returned the reward 1e+300 at step 6 of its episode"),
    (["train", "--env", "trpo_testenvs:EmptyObs-v0"], "has no entries"),
    (["train", "--env", "trpo_testenvs:RaisesInClose-v0", "--vector-mode", "subprocess", "--num-envs", "2"],
     "(RaisesInClose-v0) raised RuntimeError in close(): the simulator would not shut down"),
    (["train", "--obs-encoder", "cnn"], "obs_encoder 'cnn' needs image observations"),
]


def _bad_input_argv(args: list[str], tmp_path: Path) -> list[str]:
    fresh_train = args[0] == "train" and "--resume" not in args
    return [*args, "--run-dir", str(tmp_path / "run"), "--no-progress"] if fresh_train else args


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_exits_nonzero_with_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    # In this process through main() (clitools.py); a few of the same, as processes, in the next test.
    code, stderr = run_cli(_bad_input_argv(args, tmp_path), cwd=tmp_path)
    assert code == 2 and "Traceback" not in stderr, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and message in lines[0], stderr
    assert not list(tmp_path.rglob("*.pt")), "a failed run wrote a checkpoint"


def test_bad_input_in_a_process_of_its_own_is_one_line_and_status_2(tmp_path: Path) -> None:
    """The process as a user sees it: before torch loads, after it, and from a worker process."""
    for args, message in [BAD_INPUTS[0], BAD_INPUTS[4], *(case for case in BAD_INPUTS if "subprocess" in case[0])]:
        res = trpo(*_bad_input_argv(args, tmp_path), cwd=tmp_path)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        lines = error_lines(res.stderr)
        assert len(lines) == 1 and message in lines[0], res.stderr


def _options_that_take_text() -> list[tuple[str, list[str], str]]:
    """(command, the arguments it needs besides, option) for every option and positional of every command that
    takes a value and is not a config field: a blank value for any of them is an error. Options with choices are
    left out: argparse answers those itself (invalid choice: '')."""
    parser = build_parser()
    needs = {"eval": ["x.pt"], "export": ["x.pt", "--out", "x.onnx"], "bench": ["--env", "CartPole-v1"],
             "plot": ["runs"]}
    config_fields = {f.name for f in fields(TRPOConfig)}
    cases = []
    for name, command in parser.subcommands.items():
        for action in command._actions:
            if action.dest in config_fields or action.nargs == 0 or action.default == "" or action.choices:
                continue
            cases.append((name, needs.get(name, []), action.option_strings[0] if action.option_strings else ""))
    return cases


TEXT_OPTIONS = _options_that_take_text()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(case=st.sampled_from(TEXT_OPTIONS), blank=st.sampled_from(["", " ", "\t", "  \n"]))
def test_a_blank_value_for_any_option_is_one_error_line_naming_it(case: tuple[str, list[str], str],
                                                                   blank: str) -> None:
    """`--resume ""` read as no --resume would start a new run, `--total-steps ""` train the preset's budget."""
    command, needs, option = case
    # A positional takes the place of the one `needs` gives.
    argv = [command, *needs, option, blank] if option else [command, blank, *needs[1:]]
    code, stderr = run_cli(argv)
    lines = error_lines(stderr)
    assert code == 2 and len(lines) == 1 and "needs a value" in lines[0], (argv, stderr)
    assert (option or "") in lines[0]


def test_every_command_has_options_in_the_blank_value_property() -> None:
    assert {command for command, _, _ in TEXT_OPTIONS} >= {"train", "eval", "export", "bench", "tune", "plot"}
    assert ("train", [], "--resume") in TEXT_OPTIONS and ("train", [], "--total-steps") in TEXT_OPTIONS


def test_bad_files_and_run_dirs_are_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir.yaml").mkdir()
    (tmp_path / "env5.yaml").write_text("env: 5\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "latin1.yaml").write_bytes("max_kl: 0.02 # \u00e9\n".encode("latin-1"))
    bad_runs = {"abc": "env: CartPole-v1\ntotal_steps: abc\n", "latin1": "\u00e9", "invalid": "a: [1\n",
                "list": "- 1\n"}
    for name, text in bad_runs.items():
        (tmp_path / f"run_{name}").mkdir()
        (tmp_path / f"run_{name}" / "config.yaml").write_bytes(
            text.encode("latin-1" if name == "latin1" else "utf-8"))
    cases = [
        (["train", "--config", "latin1.yaml"], "is not UTF-8"),
        (["train", "--resume", "run_abc"], "total_steps must be a positive integer, got 'abc'"),
        (["train", "--resume", "run_latin1"], "is not UTF-8"),
        (["train", "--resume", "run_invalid"], "is not valid YAML"),
        (["train", "--resume", "run_list"], "must hold a mapping"),
        (["train", "--run-dir", "a_file"], "a_file exists and is not a directory"),
        (["train", "--config", "a_dir.yaml"], "Is a directory"),
        (["train", "--config", "env5.yaml"], "env must be a non-empty env id, got 5"),
        (["train", "--config", "list.yaml"], "must hold a mapping"),
        (["eval", str(tmp_path)], "no checkpoint in run directory"),
        (["train", "--run-dir", "a_file/run"], "Not a directory"),
    ]
    for args, message in cases:
        code, stderr = run_cli([*args, "--no-progress" if args[0] == "train" else "--json"], cwd=tmp_path)
        lines = error_lines(stderr)
        assert code == 2 and "Traceback" not in stderr, (args, stderr)
        assert len(lines) == 1 and message in lines[0], (args, stderr)


def test_corrupt_checkpoint_is_reported_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    res = trpo("eval", str(bad))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "corrupt or unreadable" in res.stderr
    debug = trpo("--debug", "eval", str(bad))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_a_used_run_dir_is_refused_and_overwrite_starts_it_anew(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ok = trpo("train", "--total-steps", "512", "--run-dir", str(run), *FAST)
    assert ok.returncode == 0, ok.stderr
    # The run's files (.lock names the last process that held the directory, and is no part of the run).
    run_files = lambda: {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}  # noqa: E731
    before = run_files()
    again = trpo("train", "--total-steps", "256", "--run-dir", str(run), *FAST)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    (line,) = [ln for ln in again.stderr.splitlines() if ln.startswith("trpo: error:")]
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert run_files() == before  # nothing touched
    (run / "notes.txt").write_text("mine")  # not a run file: --overwrite leaves it
    fresh = trpo("train", "--total-steps", "256", "--run-dir", str(run), "--overwrite", "--seed", "5", *FAST)
    assert fresh.returncode == 0, fresh.stderr
    assert [r["update"] for r in metrics(run)] == [1]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert torch.load(run / "final.pt", weights_only=True)["seed"] == 5
    assert (run / "notes.txt").read_text() == "mine"


def test_default_run_dirs_never_collide(tmp_path: Path) -> None:
    from trpo.checkpoint import unique_run_dir

    base = tmp_path / "runs" / "CartPole-v1-s0-20261122-120000"
    made = [unique_run_dir(base) for _ in range(3)]
    assert [p.name for p in made] == [base.name, base.name + "-2", base.name + "-3"]
    assert all(p.is_dir() for p in made)
    res = trpo("train", "--total-steps", "256", *FAST, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("CartPole-v1-s0-") and p not in made]
    assert (run / "final.pt").is_file()


def test_version_and_choices_in_help() -> None:
    from trpo import __version__

    res = trpo("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"trpo {__version__}"
    help_text = " ".join(trpo("train", "--help").stdout.split())
    for flag, choices in [("--activation", "{tanh,relu}"), ("--advantage", "{gae,td,return}"),
                          ("--update-rule", "{trpo,npg,penalty,pg,ppo}"), ("--kl-constraint", "{mean,max}"),
                          ("--kl-penalty", "{fixed,adaptive,theory}"),
                          ("--fisher-product", "{gauss_newton,hessian,layerwise}"),
                          ("--vector-mode", "{sync,subprocess,ray,envpool}")]:
        assert f"{flag} {choices}" in help_text, flag
    assert "--overwrite" in help_text


@pytest.mark.parametrize("args", [["presets"], ["train", "--max-kl", "-1"], ["train", "--seed", "-3"],
                                  ["train", "--config", "bad.yaml"], ["train", "--total-steps", "0"],
                                  ["train", "--preset", "Hoper"], ["train", "--resume", "nowhere"],
                                  ["train", "--resume", "empty"], ["train", "--resume", "notyaml"],
                                  ["eval", "nowhere"], ["eval", "empty"], ["eval", "empty", "--checkpoint", "best"],
                                  ["export", "empty", "--out", "p.onnx"],
                                  ["eval", "bad.yaml", "--checkpoint", "final"]])
def test_commands_that_do_not_train_answer_without_loading_torch_or_gymnasium(tmp_path: Path, args: list[str]) -> None:
    # torch and gymnasium take 2-3 s to import: `trpo presets`, a mistyped flag or file, and a path that holds
    # no run or checkpoint answer before that.
    (tmp_path / "bad.yaml").write_text("env: CartPole-v1\nvalue_epochs: many\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notyaml").mkdir()
    (tmp_path / "notyaml" / "config.yaml").write_text("env: [CartPole-v1\n")
    code = ("import sys; from trpo.cli import main; code = main(sys.argv[1:]); "
            "print(code, [m for m in ('torch', 'gymnasium') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert res.stdout.splitlines()[-1] == f"{0 if args == ['presets'] else 2} []", res.stdout + res.stderr
    if args != ["presets"]:
        assert len([ln for ln in res.stderr.splitlines() if ln.startswith("trpo: error:")]) == 1, res.stderr


def test_output_into_a_closed_pipe_stops_quietly() -> None:
    # `true` exits without reading, long before trpo has imported torch: the first write meets a closed pipe.
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    res = subprocess.run(f"{sys.executable} -m trpo.cli presets | true; echo ${{PIPESTATUS[0]}}", shell=True,
                         capture_output=True, text=True, env=env, executable="/bin/bash")
    assert res.stdout == "141\n"  # 128 + SIGPIPE, as Unix tools exit when their reader leaves
    assert res.stderr == "", res.stderr  # no traceback, no error line: the reader chose to stop


def test_evaluation_in_an_env_without_a_time_limit_ends(tmp_path: Path) -> None:
    # The deterministic CliffWalking policy walks into a wall forever: each episode is cut at eval_max_steps.
    run = tmp_path / "run"
    res = trpo("train", "--env", "CliffWalking-v1", "--preset", "none", "--total-steps", "1024", "--eval-episodes",
               "1", "--run-dir", str(run), "--no-progress", timeout=120)
    assert res.returncode == 0, res.stderr
    assert "1 of 1 episodes cut at eval_max_steps=10000: the env has no time limit of its own" in res.stdout
    result = json.loads((run / "eval.json").read_text())
    assert result["capped"] == 1 and result["lengths"] == [10000]
    res = trpo("eval", str(run), "--episodes", "2", "--json", timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["capped"] == 2


@pytest.mark.parametrize(("fields", "said"), [
    ({"num_envs": 1}, "1 env stepped in this process"),
    ({"num_envs": 4, "vector_mode": "subprocess", "num_workers": 1}, "4 envs on 1 worker process (subprocess)"),
    ({"num_envs": 4, "vector_mode": "subprocess", "num_workers": 2}, "4 envs on 2 worker processes (subprocess)"),
    ({"num_envs": 3, "vector_mode": "ray", "num_workers": 3}, "3 envs on 3 Ray actors (ray)"),
    ({"num_envs": 8, "vector_mode": "envpool", "num_workers": 1}, "8 envs on 1 envpool thread (envpool)"),
])
def test_the_layout_a_run_starts_with_is_said_in_words(fields: dict, said: str) -> None:
    text = layout(TRPOConfig(**fields))
    assert text.startswith(said + "; the learner in this process on cpu, 1 torch thread; ")
    assert text.endswith(f"{available_cores()} cores available")


def _settings_line(stderr: str) -> str:
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("trpo: settings")]
    return line


def test_train_says_its_settings_by_where_each_comes_from_also_on_resume(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text("gamma: 0.95\nmax_kl: 0.03\n")
    run = tmp_path / "run"
    code, err = run_cli(["train", "--config", "cfg.yaml", "--max-kl", "0.02", "--steps-per-env", "128",
                         "--vector-mode", "sync", "--total-steps", "256", "--run-dir", "run", "--eval-episodes", "0",
                         "--value-epochs", "1", "--checkpoint-every", "1", "--no-progress"], cwd=tmp_path)
    assert code == 0, err
    # The CartPole preset's values off the field defaults (those no flag or file replaced), the file's, the flags':
    # a value that replaced the preset's shows it.
    assert _settings_line(err) == (
        "trpo: settings (the others at their field defaults): preset CartPole: num_envs=2 num_workers=1 "
        "fisher_subsample=2 value_minibatch=512; --config cfg.yaml: gamma=0.95; flags: steps_per_env=128 (preset 512) "
        "vector_mode=sync (preset subprocess) max_kl=0.02 value_epochs=1 (preset 20) checkpoint_every=1 "
        "eval_episodes=0")
    code, err = run_cli(["train", "--resume", str(run), "--total-steps", "512", "--device", "cpu", "--no-progress"])
    assert code == 0, err
    assert _settings_line(err) == (
        "trpo: settings (the others at their field defaults): preset CartPole: num_envs=2 num_workers=1 "
        "fisher_subsample=2 value_minibatch=512; the run's own: steps_per_env=128 (preset 512) vector_mode=sync "
        "(preset subprocess) gamma=0.95 max_kl=0.02 value_epochs=1 (preset 20) checkpoint_every=1 eval_episodes=0; "
        "flags: device=cpu")
    code, err = run_cli(["train", "--preset", "none", "--total-steps", "128", "--steps-per-env", "128", "--run-dir",
                         str(tmp_path / "plain"), "--eval-episodes", "0", "--value-epochs", "1", "--no-progress"])
    assert code == 0 and _settings_line(err) == ("trpo: settings (the others at their field defaults): flags: "
                                                 "steps_per_env=128 value_epochs=1 eval_episodes=0"), err


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_train_help_after_env_shows_the_values_that_run_would_take(capsys: pytest.CaptureFixture[str]) -> None:
    plain = _help(["train", "--help"], capsys)
    assert "hyperparameters (TRPOConfig fields; default: preset, else the field default):" in plain
    assert "KL(pi_old || pi_new) over the batch. (default 0.01)" in plain and "(preset " not in plain
    hopper = _help(["train", "--env", "Hopper-v5", "--help"], capsys)
    assert "hyperparameters (TRPOConfig fields; --env Hopper-v5 takes preset Hopper: its values, else the field " \
           "default):" in hopper
    assert "KL(pi_old || pi_new) over the batch. (preset Hopper: 0.02; field default 0.01)" in hopper  # --max-kl
    assert "--num-envs NUM_ENVS Number of vectorized environments N. (preset Hopper: 2; field default 1)" in hopper
    assert "--gamma GAMMA Discount factor. (default 0.99)" in hopper  # the preset's value is the field default
    # Only the hyperparameters' defaults differ from the plain help.
    assert hopper.split("hyperparameters (")[0] == plain.split("hyperparameters (")[0]
    preset = _help(["train", "--env", "Hopper-v5", "--preset", "CartPole", "--help"], capsys)
    assert "--env Hopper-v5 --preset CartPole takes preset CartPole" in preset and "(preset CartPole: 2;" in preset
    none = _help(["train", "--env", "Hopper-v5", "--preset", "none", "--help"], capsys)
    assert "takes no preset: the field defaults" in none and "(preset " not in none
    # An env no preset names: the preset its observations call for (CliffWalking's are no vector: none).
    assert "--env CliffWalking-v1 takes no preset" in _help(["train", "--env=CliffWalking-v1", "-h"], capsys)


def test_every_commands_help_shows_its_percent_signs_as_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    # argparse %-formats an argument's help but not a description: "95%%" there showed as written.
    for command in ["", *build_parser().subcommands]:
        text = _help([command, "--help"] if command else ["--help"], capsys)
        assert "%%" not in text and "%(" not in text, command
    assert "IQM with rliable's 95% interval" in _help(["bench", "--help"], capsys)
