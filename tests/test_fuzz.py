"""The class of bad input, held by property-based tests: whatever a user passes (flags, YAML files, damaged run
directories, an env returning odd observations and rewards), the outcome is a normal run or one `trpo: error:`
line with exit status 2, no traceback, and the last good checkpoint intact.

The example counts are modest so that the suite stays within its time; `benchmarks/fuzz.py` runs the same
properties with many more (TRPO_FUZZ_EXAMPLES)."""

from __future__ import annotations

import contextlib
import numbers
import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import gymnasium as gym
import numpy as np
import pytest
import torch
import trpo_testenvs  # noqa: F401 - registers the test envs
import yaml
from clitools import assert_normal_or_one_error_line, run_cli
from gymnasium import spaces
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_persistence import assert_same_state

from trpo import TRPO, TRPOConfig, checkpoint
from trpo.cli import _is_user_error

EXAMPLES = int(os.environ.get("TRPO_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="TRPO_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# Flags every fuzzed training run gets last (flags win over files): a few updates of a few steps, no workers to
# start, so that an example takes a fraction of a second. Their own bad values are fuzzed through the other flags.
SMALL_RUN = ["--total-steps", "64", "--steps-per-env", "32", "--num-envs", "2", "--value-epochs", "1",
             "--eval-episodes", "1", "--eval-max-steps", "50", "--cg-iters", "3", "--vector-mode", "sync",
             "--no-progress"]
# Fields whose large values cost time or memory in proportion (thousands of envs, millions of steps) rather than
# being wrong: fuzzed with small and invalid values only.
COSTLY = {"num_envs", "steps_per_env", "value_epochs", "cg_iters", "eval_episodes", "eval_max_steps", "vine_states",
          "vine_horizon", "max_backtracks", "policy_epochs", "num_workers", "vine_actions", "actor_hidden",
          "critic_hidden", "max_worker_restarts", "value_minibatch", "policy_minibatch"}
# Fields that reach outside this process: fuzzed with their valid local values and garbage only.
OUTSIDE = {"vector_mode": ["sync", "subprocess", "ray-ish", ""], "ray_address": ["", "none"],
           "device": ["cpu", "gpu", "cuda:x", ""]}

texts = st.text(max_size=12) | st.sampled_from(["", "nan", "inf", "-inf", "1e400", "0x10", "1_000", " 3 ", "true",
                                                "none", "null", "64,64", ",", "1,,2", "-1", "2.5", "\x00"])


def _cli_values(name: str, hint: Any) -> st.SearchStrategy[str]:
    """Text a user might type for a field: valid values of its type, and the invalid ones around them."""
    if name in OUTSIDE:
        return st.sampled_from(OUTSIDE[name]) | st.text(max_size=6)
    if get_origin(hint) is not None and type(None) in get_args(hint):
        (hint,) = (a for a in get_args(hint) if a is not type(None))
    if get_origin(hint) is tuple:
        return st.lists(st.integers(-2, 9), max_size=3).map(lambda xs: ",".join(map(str, xs))) | texts
    if get_args(hint) and get_origin(hint) is not tuple:  # Literal
        return st.sampled_from([str(c) for c in get_args(hint)]) | texts
    if hint is int:
        big = st.just(None) if name in COSTLY else st.integers(10**6, 10**30)
        return (st.integers(-3, 4) | big.filter(lambda v: v is not None)).map(str) | texts
    if hint is float:
        return st.floats(allow_nan=True, allow_infinity=True).map(repr) | st.floats(-2, 2).map(str) | texts
    return texts


HINTS = get_type_hints(TRPOConfig)
FLAG_VALUES = {f.name: _cli_values(f.name, HINTS[f.name]) for f in fields(TRPOConfig) if HINTS[f.name] is not bool}
BOOL_FLAGS = [f.name for f in fields(TRPOConfig) if HINTS[f.name] is bool]


@st.composite
def train_flags(draw: st.DrawFn) -> list[str]:
    argv: list[str] = []
    for name in draw(st.lists(st.sampled_from(sorted(FLAG_VALUES)), max_size=3, unique=True)):
        argv += [f"--{name.replace('_', '-')}", draw(FLAG_VALUES[name])]
    for name in draw(st.lists(st.sampled_from(BOOL_FLAGS), max_size=2, unique=True)):
        argv.append(f"--{'' if draw(st.booleans()) else 'no-'}{name.replace('_', '-')}")
    seed = draw(st.none() | st.integers(-2, 10) | st.sampled_from([2**32 - 1, 2**32, 2**63, 2**64, 2**70]) | texts)
    if seed is not None:
        argv += ["--seed", str(seed)]
    extra = draw(st.sampled_from([[], ["--env", draw(st.sampled_from(["", " ", "CartPole-v1", "Pendulum-v1", "nope",
                                                                      "trpo_testenvs:DiscreteObs-v0", "::", "a:b"]))],
                                  ["--preset", draw(st.sampled_from(["none", "auto", "", "Nope", "CartPole"]))],
                                  ["--bogus-flag"], ["--total-steps", draw(texts)]]))
    return argv + extra


@contextlib.contextmanager
def scratch() -> Any:
    """A fresh directory per example (Hypothesis runs many examples in one test call)."""
    path = Path(tempfile.mkdtemp(prefix="trpo-fuzz-"))
    cwd = os.getcwd()
    os.chdir(path)  # a relative --run-dir, --config or runs/ lands here
    try:
        yield path
    finally:
        os.chdir(cwd)
        shutil.rmtree(path, ignore_errors=True)


@FUZZ
@given(flags=train_flags())
def test_any_command_line_trains_or_is_one_error_line(flags: list[str]) -> None:
    with scratch() as tmp:
        # SMALL_RUN first: a fuzzed flag given twice wins (argparse keeps the last), so it is tested too.
        code, stderr = run_cli(["train", *SMALL_RUN, *flags, "--run-dir", str(tmp / "run")])
        assert_normal_or_one_error_line(code, stderr)
        if code == 2:
            assert not list(tmp.rglob("*.pt")), "a failed run wrote a checkpoint"


yaml_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | texts
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=2), max_leaves=6)
FIELD_NAMES = [f.name for f in fields(TRPOConfig)] + ["env", "seed", "total_steps", "preset", "versions", "run_id"]


@st.composite
def config_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["mapping", "mapping", "mapping", "other", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "other":
        return yaml.safe_dump(draw(yaml_values)).encode()
    keys = st.sampled_from(sorted(set(FIELD_NAMES) - COSTLY)) | st.text(max_size=6)
    return yaml.safe_dump(draw(st.dictionaries(keys, yaml_values, max_size=4))).encode()


@FUZZ
@given(content=config_files())
def test_any_config_file_trains_or_is_one_error_line(content: bytes) -> None:
    with scratch() as tmp:
        (tmp / "cfg.yaml").write_bytes(content)
        code, stderr = run_cli(["train", "--config", "cfg.yaml", *SMALL_RUN, "--run-dir", "run", "--env",
                                "CartPole-v1"])
        assert_normal_or_one_error_line(code, stderr)


_RUN_TEMPLATE: dict[str, Path] = {}


def finished_run() -> Path:
    """A small finished CartPole run, made once and copied for each example."""
    if "path" not in _RUN_TEMPLATE:
        path = Path(tempfile.mkdtemp(prefix="trpo-fuzz-run-")) / "run"
        code, stderr = run_cli(["train", *SMALL_RUN, "--checkpoint-every", "1", "--run-dir", str(path)])
        assert code == 0, stderr
        _RUN_TEMPLATE["path"] = path
    return _RUN_TEMPLATE["path"]


RUN_FILES = ["config.yaml", "metrics.jsonl", "checkpoints/latest.pt", "final.pt", "eval.json"]


@st.composite
def damages(draw: st.DrawFn) -> list[tuple[str, str, Any]]:
    """What happens to a run directory's files: truncated, replaced by random bytes or text, a YAML field or a
    metrics row replaced by any value, deleted."""
    out = []
    for name in draw(st.lists(st.sampled_from(RUN_FILES), min_size=1, max_size=2, unique=True)):
        how = draw(st.sampled_from(["truncate", "bytes", "delete", "edit"]))
        if how == "truncate":
            out.append((name, how, draw(st.floats(0, 1))))
        elif how == "bytes":
            out.append((name, how, draw(st.binary(max_size=30))))
        elif how == "delete":
            out.append((name, how, None))
        else:
            key = draw(st.sampled_from([*FIELD_NAMES, "update", "step", "episode_return_mean"]))
            out.append((name, how, (key, draw(yaml_values))))
    return out


def _damage(run: Path, name: str, how: str, arg: Any) -> None:
    path = run / name
    if how == "delete":
        path.unlink(missing_ok=True)
    elif how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * arg)])
    elif how == "bytes":
        path.write_bytes(arg)
    elif name == "config.yaml":
        record = yaml.safe_load(path.read_text())
        record[arg[0]] = arg[1]
        path.write_text(yaml.safe_dump(record))
    elif name == "metrics.jsonl":
        import json

        lines = path.read_text().splitlines()
        row = json.loads(lines[0])
        row[arg[0]] = arg[1]
        lines[0] = json.dumps(row, default=str)
        path.write_text("\n".join(lines) + "\n")
    elif name.endswith(".pt"):
        state = torch.load(path, weights_only=True)
        state[arg[0]] = arg[1]
        if arg[0] == "format":
            torch.save(state, path)
        else:  # with a matching checksum, as a run would have written it: the edit reaches the checks behind it
            checkpoint.save_atomic({k: v for k, v in state.items() if k not in ("format", checkpoint.CHECKSUM)}, path)


def _readable(path: Path) -> bool:
    try:
        checkpoint.load(path)
    except checkpoint.CheckpointError:
        return False
    return True


@FUZZ
@given(damage=damages(), more_steps=st.booleans())
def test_a_damaged_run_dir_resumes_or_is_one_error_line_and_good_checkpoints_stay(
        damage: list[tuple[str, str, Any]], more_steps: bool) -> None:
    with scratch() as tmp:
        run = tmp / "run"
        shutil.copytree(finished_run(), run)
        for name, how, arg in damage:
            _damage(run, name, how, arg)
        good = {p: p.read_bytes() for p in (run / "checkpoints" / "latest.pt", run / "final.pt")
                if p.is_file() and _readable(p)}
        code, stderr = run_cli(["train", "--resume", str(run), "--no-progress", "--eval-episodes", "1",
                                *(["--total-steps", "128"] if more_steps else [])])
        assert_normal_or_one_error_line(code, stderr)
        for path, data in good.items():  # the last good checkpoints: untouched, or replaced by a newer whole one
            assert path.is_file() and (path.read_bytes() == data or _readable(path)), path


@FUZZ
@given(at=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_a_checkpoint_with_any_bit_flipped_is_named_or_reads_the_same(at: float, bit: int) -> None:
    """One bit flipped anywhere in a checkpoint: loading it says, in one line, that it is damaged (the checksum, a
    non-finite number), unreadable or no trpo checkpoint, or reads exactly what was saved (the bit was one of the
    zip's own that nothing reads). A weight that changed is never read as if it were the saved one."""
    saved = finished_run() / "final.pt"
    with scratch() as tmp:
        data = bytearray(saved.read_bytes())
        data[int(at * len(data))] ^= 1 << bit
        (tmp / "flipped.pt").write_bytes(bytes(data))
        try:
            state = checkpoint.load(tmp / "flipped.pt")
        except checkpoint.CheckpointError as exc:
            assert "\n" not in str(exc)
        else:
            assert_same_state(state, checkpoint.load(saved))


ODD_ARRAYS = [np.zeros(3, np.float32), np.zeros(3, np.float64), np.zeros(3, np.int64), np.ones(3, bool),
              np.array([np.nan, 0, 0]), np.array([np.inf, 0, 0]), np.array([1e300, 0, 0]), np.array([1e38, 0, 0]),
              np.zeros((3, 1)), np.zeros((1, 3)), np.zeros(4), np.zeros(2), np.array(["1", "2", "3"]),
              np.array([None, 0, 0]), [0.0, 0.0, 0.0], (1, 2, 3), [[0.0, 0.0, 0.0]]]
scalars = st.none() | st.integers() | st.floats() | st.text(max_size=3) | st.booleans()
odd_obs = st.sampled_from(ODD_ARRAYS) | st.tuples(st.integers(0, 3), st.integers(0, 3)).map(np.zeros) | scalars
odd_rewards = st.floats() | st.sampled_from([0.0, 1, True, np.float64(2.0), np.float32(1.0), np.array(1.0), 1e300,
                                             -1e39, 3e38, 10**400, "1.5", b"1", None, [1.0]]) | scalars


class OddEnv(gym.Env):
    """Box(3,) observations and a Discrete(2) action; after `after` good steps it returns `obs` and `reward`."""

    observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, after: int, obs: Any, reward: Any, at_reset: bool) -> None:
        self.after, self.odd_obs, self.odd_reward, self.at_reset, self.t = after, obs, reward, at_reset, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return (self.odd_obs if self.at_reset else np.zeros(3, np.float32)), {}

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict]:
        self.t += 1
        if self.t > self.after:
            return self.odd_obs, self.odd_reward, False, self.t >= 20, {}
        return np.zeros(3, np.float32), 0.0, False, self.t >= 20, {}


# Rewards this large may fail either way: float32 holds them, but not always their sums, or the squares in the
# advantages' spread and the critic's loss; the run then ends with an error that says so.
LARGE_REWARD = 1e15


def _verdict(obs: Any, reward: Any) -> str:
    """'fits' where an env may return these: an observation of Box(3,)'s shape of numbers that float32 holds
    finitely, and a real reward of modest size (a bool counts as 0 or 1, as float() has it); 'large' where the
    reward alone is in doubt (float32 holds it); else 'bad'."""
    arr = np.asarray(obs) if not isinstance(obs, str) else np.asarray([])
    with np.errstate(over="ignore"):
        obs_ok = arr.shape == (3,) and arr.dtype.kind in "fiub" and bool(np.isfinite(arr.astype(np.float32)).all())
    if not obs_ok or not isinstance(reward, numbers.Real):
        return "bad"
    try:
        size = abs(float(reward))
    except OverflowError:  # an int beyond float's range
        return "bad"
    if size <= LARGE_REWARD:
        return "fits"
    return "large" if size <= float(np.finfo(np.float32).max) else "bad"


@FUZZ
@given(obs=odd_obs, reward=odd_rewards, after=st.integers(0, 5), at_reset=st.booleans())
def test_an_env_returning_odd_values_trains_or_is_one_clear_error(obs: Any, reward: Any, after: int,
                                                                 at_reset: bool) -> None:
    # The odd values come within the first 6 steps of the 64 trained: a run is normal exactly when they fit.
    agent = None
    try:
        agent = TRPO(lambda: OddEnv(after, obs, reward, at_reset), config=TRPOConfig(
            num_envs=1, steps_per_env=32, value_epochs=1, cg_iters=3, eval_max_steps=50), seed=0)
        agent.learn(64)
        result = agent.evaluate(1)
    except Exception as exc:
        assert _is_user_error(exc), f"{type(exc).__name__}: {exc}"
        assert "\n" not in str(exc).strip(), str(exc)
        assert _verdict(obs, reward) != "fits", f"refused values that fit: {exc}"
    else:
        assert _verdict(obs, reward) != "bad", "took values that do not fit the env's spaces"
        assert all(row["step_status"] != "non_finite" for row in agent.history)  # not a silent non-update
        assert result["episodes"] == 1
    finally:
        if agent is not None:
            with contextlib.suppress(Exception):
                agent.close()


# Where a process can end inside a run: the n-th call of one of these (each writes one file whole, or evaluates).
KILL_POINTS = ("save_atomic", "write_bytes_atomic", "write_text_atomic", "evaluate")
KILLS = settings(FUZZ, max_examples=EXAMPLES if "TRPO_FUZZ_EXAMPLES" in os.environ else 8)


@KILLS
# Counter-v0's every episode returns 7: its first evaluation stays the best, so a best.pt lost or left behind shows.
# The examples: the classes seen broken (best.pt never written; the killed life's evaluations kept by a resume that
# no longer evaluates; its numbered checkpoints kept and the new life's deleted).
@example(env="trpo_testenvs:Counter-v0", point="write_bytes_atomic", nth=1, eval_every=64, save_every=0, keep=0,
         resumed_with={})
@example(env="trpo_testenvs:Counter-v0", point="evaluate", nth=4, eval_every=64, save_every=0, keep=0,
         resumed_with={"eval_every": 0})
@example(env="CartPole-v1", point="evaluate", nth=6, eval_every=64, save_every=64, keep=2, resumed_with={})
@given(env=st.sampled_from(["trpo_testenvs:Counter-v0", "CartPole-v1"]), point=st.sampled_from(KILL_POINTS),
       nth=st.integers(1, 14), eval_every=st.sampled_from([0, 64, 128]),
       save_every=st.sampled_from([0, 64, 128]), keep=st.integers(0, 2),
       resumed_with=st.fixed_dictionaries({}, optional={"eval_every": st.sampled_from([0, 64, 192]),
                                                        "save_every": st.sampled_from([0, 64]),
                                                        "keep_checkpoints": st.integers(0, 2),
                                                        "checkpoint_every": st.integers(1, 3)}))
def test_after_a_kill_anywhere_and_any_resume_flags_every_artifact_belongs_to_the_run(
        env: str, point: str, nth: int, eval_every: int, save_every: int, keep: int,
        resumed_with: dict[str, int]) -> None:
    """A run ended at any write or evaluation, then resumed with any flags that may change: best.pt is the model
    of the best evaluation kept, and rows and numbered checkpoints are all of one life (test_run_invariants.py)."""
    from unittest import mock

    from test_run_invariants import Killed, assert_run_is_one_life

    cfg = TRPOConfig(num_envs=1, steps_per_env=64, value_epochs=1, cg_iters=3, checkpoint_every=2,
                     eval_every=eval_every, eval_episodes=1, save_every=save_every, keep_checkpoints=keep)
    owner = TRPO if point == "evaluate" else checkpoint
    real = getattr(owner, point)
    calls = []

    def dies(*args: Any, **kwargs: Any) -> Any:
        calls.append(point)
        if len(calls) == nth:
            raise Killed
        return real(*args, **kwargs)

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        agent = TRPO(env, config=cfg, seed=0, run_dir=run)
        with mock.patch.object(owner, point, dies), contextlib.suppress(Killed):
            agent.learn(512)
        agent.close()
        if (run / "config.yaml").is_file():
            resumed = TRPO.resume(run, **resumed_with)
            resumed.train_until(640)
            resumed.close()
            assert_run_is_one_life(run)


@pytest.fixture(autouse=True, scope="module")
def _cleanup_template() -> Any:
    yield
    if "path" in _RUN_TEMPLATE:
        shutil.rmtree(_RUN_TEMPLATE.pop("path").parent, ignore_errors=True)
