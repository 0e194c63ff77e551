"""The threat model of docs/security.md, held: opening a run directory, a checkpoint or a tune study imports, calls
and joins nothing the user did not name or trust, writes nothing through a link, and evaluates or trains nothing
damaged. The page's table names each test here, and each test here is in it (the last test)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sys
import tempfile
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import trpo_testenvs  # noqa: F401 - registers the test envs (DictObs-v0)
import yaml
from clitools import assert_normal_or_one_error_line, error_lines, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trpo import TRPO, CheckpointError, ObservationError, TRPOConfig, checkpoint
from trpo.rollout import RolloutCollector

ROOT = Path(__file__).resolve().parent.parent
PROPERTY = settings(max_examples=int(os.environ.get("TRPO_FUZZ_EXAMPLES", "25")), deadline=None,
                    derandomize="TRPO_FUZZ_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# Two updates of 32 steps with an evaluation after each, so that a run writes every file it can (best.pt,
# evaluations.jsonl), and normalizer statistics that are not the defaults.
SMALL_RUN = ["--total-steps", "64", "--steps-per-env", "32", "--num-envs", "1", "--value-epochs", "1",
             "--eval-episodes", "1", "--eval-max-steps", "50", "--cg-iters", "3", "--vector-mode", "sync",
             "--eval-every", "32", "--checkpoint-every", "1", "--normalize-obs", "--normalize-reward", "--no-progress"]
CHECKPOINTS = ("checkpoints/latest.pt", "final.pt", "best.pt")
_TEMPLATE: dict[str, Path] = {}


def finished_run() -> Path:
    """A small finished CartPole run with every file a run writes, made once and copied for each use."""
    if "run" not in _TEMPLATE:
        run = Path(tempfile.mkdtemp(prefix="trpo-security-")) / "run"
        code, stderr = run_cli(["train", *SMALL_RUN, "--run-dir", str(run)])
        assert code == 0, stderr
        assert all((run / name).is_file() for name in (*CHECKPOINTS, "evaluations.jsonl", "eval.json")), stderr
        _TEMPLATE["run"] = run
    return _TEMPLATE["run"]


@pytest.fixture(autouse=True, scope="module")
def _remove_the_template() -> Iterator[None]:
    yield
    if "run" in _TEMPLATE:
        shutil.rmtree(_TEMPLATE.pop("run").parent, ignore_errors=True)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh directory per example (Hypothesis runs many in one test call) holding a copy of the finished run."""
    path = Path(tempfile.mkdtemp(prefix="trpo-security-"))
    try:
        shutil.copytree(finished_run(), path / "run")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def reseal(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Change a checkpoint's contents and save it with a matching checksum, as a run would have written it."""
    state = torch.load(path, weights_only=True)
    edit(state)
    contents = {k: v for k, v in state.items() if k != checkpoint.CHECKSUM}  # sealed as save does, unchecked:
    torch.save({**contents, checkpoint.CHECKSUM: checkpoint._digest(contents)}, path)  # trpo's save refuses NaN


def plant(run: Path, env: str | None = None, **fields: Any) -> None:
    """What another run's author may have written: its config.yaml and every checkpoint naming `env` and `fields`."""
    record = yaml.safe_load((run / "config.yaml").read_text())
    record.update(fields, **({} if env is None else {"env": env}))
    (run / "config.yaml").write_text(yaml.safe_dump(record, sort_keys=False))

    def edit(state: dict[str, Any]) -> None:
        state["config"].update(fields)
        if env is not None:
            state["env_id"] = env

    for name in CHECKPOINTS:
        reseal(run / name, edit)


def one_refusal(code: int, stderr: str, *words: str) -> str:
    """The command failed with one error line holding each of `words`; that line."""
    assert_normal_or_one_error_line(code, stderr)
    assert code == 2, stderr
    (line,) = error_lines(stderr)
    for word in words:
        assert word in line, line
    return line


# --- imports and calls -------------------------------------------------------------------------------------------

class Calls:
    """A stand-in for a callable that records each call made the way a wrapper is applied, wrapper(env, **kwargs),
    and passes any other call on to the original (the standard library's own callers go on working)."""

    def __init__(self, original: Callable[..., Any] | None = None) -> None:
        self.original, self.as_wrapper = original, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if (args and isinstance(args[0], gym.Env)) or self.original is None:
            self.as_wrapper.append((args, kwargs))
            return args[0] if args else None
        return self.original(*args, **kwargs)


def _recording_classes(calls: Calls) -> dict[str, Any]:
    """Callables of other kinds than a function, none a gymnasium.Wrapper subclass, each recording its calls."""

    class NotAWrapper:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            calls(*args, **kwargs)

    class AnEnv(gym.Env):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            calls(*args, **kwargs)

    return {"function": Calls(), "class": NotAWrapper, "env_class": AnEnv, "instance": calls}


STDLIB = ["os:system", "os.system", "os:remove", "subprocess:call", "subprocess:run", "subprocess:check_output",
          "builtins:eval", "builtins:exec", "shutil:rmtree", "os:execv"]
OPENINGS = ["load", "load-trusted", "resume-trusted", "eval", "eval-trusted", "resume-cli-trusted"]


def open_run(run: Path, how: str, *extra: str) -> None:
    """Open the run as `how` says; a refusal must be one line (API: a ValueError of one line)."""
    trusted = how.endswith("trusted")
    if how.startswith("load"):
        TRPO.load(run, trust=trusted).close()
    elif how == "resume-trusted":
        TRPO.resume(run, trust=True).close()
    elif how.startswith("eval"):
        code, stderr = run_cli(["eval", str(run), "--episodes", "1", *extra, *(["--trust"] if trusted else [])])
        assert_normal_or_one_error_line(code, stderr)
        if code:
            raise ValueError(error_lines(stderr)[0])
    else:
        code, stderr = run_cli(["train", "--resume", str(run), "--trust", *extra])
        assert_normal_or_one_error_line(code, stderr)
        if code:
            raise ValueError(error_lines(stderr)[0])


@PROPERTY
@given(target=st.sampled_from(STDLIB) | st.tuples(st.sampled_from(["function", "class", "env_class", "instance"]),
                                                  st.sampled_from([":", "."])),
       kwargs=st.sampled_from([{}, {"command": "true"}, {"path": "/"}]), how=st.sampled_from(OPENINGS))
def test_a_stored_callable_that_is_no_wrapper_is_never_called(target: Any, kwargs: dict[str, Any], how: str) -> None:
    """Whatever callable a run names as a wrapper, standard library or not, imported or not, trusted or not: it is
    refused, and never called with the env."""
    calls = Calls()
    with scratch() as tmp, pytest.MonkeyPatch.context() as mp:
        if isinstance(target, str):  # a function of the standard library, replaced by a recorder of the same name
            module, _, name = target.partition(":") if ":" in target else target.rpartition(".")
            calls = Calls(getattr(sys.modules.get(module) or __import__(module), name))
            mp.setattr(sys.modules[module], name, calls)
            path = target
        else:  # any other kind of callable, in a module this process imported
            kind, sep = target
            module = f"trpo_sec_{uuid.uuid4().hex[:8]}"
            fake = types.ModuleType(module)
            for attr, value in _recording_classes(calls).items():
                setattr(fake, attr, value)
            calls = calls if kind != "function" else fake.function
            mp.setitem(sys.modules, module, fake)
            path = f"{module}{sep}{kind}"
        plant(tmp / "run", env_wrappers=[{path: kwargs}])
        with pytest.raises(ValueError) as refused:
            open_run(tmp / "run", how)
        assert "\n" not in str(refused.value) and ("wrapper" in str(refused.value) or "import" in str(refused.value))
        assert calls.as_wrapper == [], f"{path} was called as a wrapper"


MODULE_SOURCE = """
import pathlib
import gymnasium as gym
pathlib.Path({marker!r}).write_text("imported")
gym.register(id={env_id!r}, entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv", max_episode_steps=500)


class Wrap(gym.Wrapper):
    pass
"""


@PROPERTY
@given(where=st.sampled_from(["env", "wrapper", "both"]), how=st.sampled_from(["load", "resume", "eval", "export",
                                                                              "resume-cli"]),
       allow=st.sampled_from(["none", "trust", "env"]))
def test_a_stored_module_is_imported_only_when_named_or_trusted(where: str, how: str, allow: str) -> None:
    """A module the run names (its env id's, a wrapper's), importable here but not imported yet, e.g. planted beside
    the run: opening the run imports it only where this call names it (the env id given again) or trusts the run;
    otherwise one line names the module and how to allow it, and the module's code never runs."""
    module, env_id = f"trpo_sec_{uuid.uuid4().hex[:8]}", f"SecEnv{uuid.uuid4().hex[:8]}-v0"
    with scratch() as tmp, pytest.MonkeyPatch.context() as mp:
        marker = tmp / "imported"
        (tmp / f"{module}.py").write_text(MODULE_SOURCE.format(marker=str(marker), env_id=env_id))
        mp.syspath_prepend(str(tmp))
        stored_env = f"{module}:{env_id}"
        plant(tmp / "run", env=stored_env if where != "wrapper" else None,
              env_wrappers=[f"{module}:Wrap"] if where != "env" else [])
        trust = allow == "trust"
        # The env id given again names its module (a wrapper's too); export takes no --env, and a run on another
        # env (where == "wrapper") keeps its own.
        named = allow == "env" and how != "export" and where != "wrapper"
        env_args = ["--env", stored_env] if named else []
        run = tmp / "run"
        try:
            if how == "load":
                TRPO.load(run, env=stored_env if named else None, trust=trust).close()
            elif how == "resume":
                TRPO.resume(run, env=stored_env if named else None, trust=trust).close()
            else:
                argv = {"eval": ["eval", str(run), "--episodes", "1"], "export": ["export", str(run), "--out",
                                                                                   str(tmp / "policy.pt")],
                        "resume-cli": ["train", "--resume", str(run)]}[how]
                code, stderr = run_cli([*argv, *env_args, *(["--trust"] if trust else [])])
                assert_normal_or_one_error_line(code, stderr)
                if code:
                    raise ValueError(error_lines(stderr)[0])
        except ValueError as exc:
            assert not (trust or named), exc
            assert f"would import {module}" in str(exc) and "--trust" in str(exc) and "\n" not in str(exc)
            assert not marker.exists() and module not in sys.modules, "the module ran"
        else:
            assert trust or named, "opened without being allowed"
            assert marker.exists()
        finally:
            sys.modules.pop(module, None)
            gym.registry.pop(env_id, None)


@pytest.mark.parametrize("address", ["ray://203.0.113.7:10001", "203.0.113.7:6379"])
def test_a_stored_ray_cluster_is_joined_only_when_named_or_trusted(address: str) -> None:
    """A run trained on a Ray cluster records its address; resuming it would join that cluster, whose replies are
    pickles: unnamed, it is refused before anything starts (no Ray runtime is started by any of this)."""
    with scratch() as tmp:
        run = tmp / "run"
        plant(run, vector_mode="ray", ray_address=address)
        with pytest.raises(CheckpointError, match=re.escape(f"would join the Ray cluster at {address}")):
            TRPO.load(run)
        one_refusal(*run_cli(["train", "--resume", str(run)]), "join the Ray cluster", "--trust")
        one_refusal(*run_cli(["eval", str(run), "--episodes", "1"]), "join the Ray cluster", "--trust")
        TRPO.load(run, trust=True).close()
        TRPO.load(run, overrides={"ray_address": address}).close()
        for argv in (["train", "--resume", str(run), "--ray-address", address],
                     ["eval", str(run), "--trust", "--episodes", "1"]):
            code, stderr = run_cli(argv)  # the run is finished: nothing to collect, Ray never starts
            assert code == 0, stderr
        plant(run, ray_address="auto")  # this machine's own cluster needs no opt-in
        TRPO.load(run).close()


MARKER_COMMAND = "touch {marker}"


def test_python_objects_in_a_run_are_refused() -> None:
    """A YAML tag that would call a function, and a checkpoint holding a pickled call: read as data, refused."""
    with scratch() as tmp:
        marker = tmp / "ran"
        run = tmp / "run"
        text = (run / "config.yaml").read_text()
        tagged = text + f"max_kl: !!python/object/apply:os.system [{MARKER_COMMAND.format(marker=marker)!r}]\n"
        (run / "config.yaml").write_text(tagged)
        one_refusal(*run_cli(["train", "--resume", str(run)]), "config.yaml")

        class Call:
            def __reduce__(self) -> tuple[Any, ...]:
                return os.system, (MARKER_COMMAND.format(marker=marker),)

        torch.save({"format": checkpoint.FORMAT, "actor": Call()}, tmp / "pickled.pt")
        one_refusal(*run_cli(["eval", str(tmp / "pickled.pt")]), "corrupt or unreadable")
        assert not marker.exists()


# --- writes ------------------------------------------------------------------------------------------------------

def _linked_names() -> list[str]:
    pid = os.getpid()  # the temporary files' names hold the writer's PID: this process's, as run_cli runs here
    return [".lock", "config.yaml", "metrics.jsonl", "evaluations.jsonl", "checkpoints/latest.pt", "final.pt",
            "best.pt", "eval.json", f".config.yaml.{pid}.tmp", f"checkpoints/.latest.pt.{pid}.tmp",
            f".eval.json.{pid}.tmp", f".best.pt.{pid}.tmp", "checkpoints", "tensorboard"]


def _tree(path: Path) -> dict[str, bytes] | None:
    """A file's bytes, or a folder's files and their bytes; None where nothing is."""
    if path.is_file():
        return {"": path.read_bytes()}
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return None


@PROPERTY
@given(name=st.sampled_from(_linked_names()), command=st.sampled_from(["resume", "new", "overwrite", "eval"]),
       target_exists=st.booleans())
def test_no_command_writes_through_a_link_in_a_run_dir(name: str, command: str, target_exists: bool) -> None:
    """Any file or folder trpo writes in a run directory, replaced by a link to somewhere outside (an existing file
    or folder, or a name where nothing is yet): no command truncates, writes or creates the link's target."""
    folder = name in ("checkpoints", "tensorboard")
    with scratch() as tmp:
        run = tmp / "run"
        if command == "new":  # a directory holding the link alone, then a new run there
            shutil.rmtree(run)
            run.mkdir()
        target = tmp / "outside" / ("folder" if folder else "file.txt")
        target.parent.mkdir()
        if target_exists and folder:
            target.mkdir()
            (target / "precious.txt").write_text("precious\n")
        elif target_exists:
            target.write_text("precious\n")
        link = run / name
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        link.unlink(missing_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=folder)
        before = _tree(target)
        argv = {"resume": ["train", "--resume", str(run), "--total-steps", "128", "--no-progress"],
                "new": ["train", *SMALL_RUN, "--run-dir", str(run)],
                "overwrite": ["train", *SMALL_RUN, "--run-dir", str(run), "--overwrite"],
                "eval": ["eval", str(run), "--episodes", "1"]}[command]
        code, stderr = run_cli(argv)
        assert_normal_or_one_error_line(code, stderr)
        assert _tree(target) == before, f"{command} wrote through the link {name}: {stderr}"


# --- damage ------------------------------------------------------------------------------------------------------

def _float_leaves(value: Any, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of each floating-point tensor of a checkpoint, named as the error names it: keys joined by
    dots, list items as [i]."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _float_leaves(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _float_leaves(item, f"{name}[{i}]")
    elif isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
        yield name, value


@PROPERTY
@given(data=st.data(), bad=st.sampled_from([math.nan, math.inf, -math.inf, "negative"]),
       resealed=st.booleans())
def test_any_non_finite_number_in_a_checkpoint_is_named(data: st.DataObject, bad: Any, resealed: bool) -> None:
    """NaN or an infinity anywhere in the weights, the optimizer's state or the statistics, or a negative
    variance: loading names the checkpoint as damaged (the number's place where the checksum still matches, as in a
    run that trained into NaN; the checksum where the number was changed afterwards)."""
    with scratch() as tmp:
        path = tmp / "run" / "final.pt"
        state = torch.load(path, weights_only=True)
        leaves = [(n, t) for n, t in _float_leaves(state) if not n.startswith("config")]
        if bad == "negative":
            leaves = [(n, t) for n, t in leaves if n.endswith("norm.var")]
        name = data.draw(st.sampled_from([n for n, _ in leaves]))

        def edit(state: dict[str, Any]) -> None:
            tensor = dict(_float_leaves(state))[name].view(-1)
            tensor[data.draw(st.integers(0, tensor.numel() - 1))] = -1.0 if bad == "negative" else bad

        if resealed:
            reseal(path, edit)
            said = f"{name} holds {'a negative variance' if bad == 'negative' else 'NaN or an infinity'}"
        else:
            edit(state)
            torch.save(state, path)
            said = "its contents do not match the SHA-256 checksum"
        with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {path} is damaged: {said}")):
            TRPO.load(path)


@pytest.mark.parametrize("resealed", [True, False])
def test_a_nan_checkpoint_is_one_error_line_for_eval_and_resume(resealed: bool) -> None:
    """A checkpoint whose weights are NaN: `trpo eval` and `--resume` say it is damaged in one line, exit 2 (it
    evaluated to a junk return, and a resume ended in a RecursionError)."""
    with scratch() as tmp:
        run = tmp / "run"
        path = run / "checkpoints" / "latest.pt"

        def poison(state: dict[str, Any]) -> None:
            for tensor in state["actor"].values():
                tensor.fill_(math.nan)

        if resealed:
            reseal(path, poison)
        else:
            state = torch.load(path, weights_only=True)
            poison(state)
            torch.save(state, path)
        one_refusal(*run_cli(["eval", str(run), "--episodes", "1"]), f"checkpoint {path} is damaged")
        one_refusal(*run_cli(["train", "--resume", str(run), "--total-steps", "128", "--no-progress"]),
                    f"checkpoint {path} is damaged")


def test_a_checkpoint_whose_bytes_changed_is_named_damaged() -> None:
    """One bit flipped in a weight's stored bytes loads as another weight: the checksum names it."""
    with scratch() as tmp:
        path = tmp / "run" / "final.pt"
        weight = torch.load(path, weights_only=True)["critic"]
        stored = next(t for t in weight.values() if t.numel() >= 16).numpy().tobytes()
        data = bytearray(path.read_bytes())
        at = data.find(stored) + len(stored) // 2  # tensors are stored uncompressed
        assert at >= len(stored) // 2
        data[at] ^= 0x04
        path.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match="is damaged: its contents do not match the SHA-256 checksum"):
            TRPO.load(path)


def test_a_checkpoint_from_before_checksums_still_loads() -> None:
    """A checkpoint as trpo wrote it before checksums (the same dict, no checksum key) loads and predicts the same;
    its numbers are still checked."""
    with scratch() as tmp:
        agent = TRPO.load(tmp / "run" / "final.pt")
        assert len(torch.load(tmp / "run" / "final.pt", weights_only=True)[checkpoint.CHECKSUM]) == 64
        old = tmp / "old.pt"
        torch.save({"format": checkpoint.FORMAT, **agent.state_dict()}, old)  # the earlier save_atomic's body
        loaded = TRPO.load(old)
        obs = np.array([[0.01, -0.02, 0.03, 0.04], [0.1, 0.2, -0.1, -0.2]], np.float32)
        np.testing.assert_array_equal(agent.predict(obs)[0], loaded.predict(obs)[0])
        code, stderr = run_cli(["eval", str(old), "--episodes", "1"])
        assert code == 0, stderr
        state = agent.state_dict()
        state["obs_norm"]["mean"][0] = math.nan
        torch.save({"format": checkpoint.FORMAT, **state}, old)
        with pytest.raises(CheckpointError, match=re.escape("obs_norm.mean holds NaN")):
            TRPO.load(old)
        agent.close()
        loaded.close()


def test_a_policy_with_nan_weights_collects_its_batch_once() -> None:
    """The batch is kept when the policy did not change since it was set going: compared bit for bit, so that a NaN
    weight (NaN != NaN) no longer reads as a change that drops the batch, again and again (the RecursionError)."""
    agent = TRPO("CartPole-v1", config=TRPOConfig(num_envs=1, steps_per_env=8, vector_mode="sync"))
    with torch.no_grad():
        for param in agent.actor.parameters():
            param.fill_(math.nan)
    collector = RolloutCollector(agent.env_spec, agent.config, agent.encoder, agent.dist, agent.obs_norm,
                                 agent.reward_scaler, 0)
    try:
        batch = collector.collect(agent.actor, 8, torch.Generator().manual_seed(0))
    finally:
        collector.close()
        agent.close()
    assert batch.obs.shape[:2] == (8, 1)


_AGENTS: dict[str, TRPO] = {}


def _agent(env_id: str) -> TRPO:
    if env_id not in _AGENTS:
        _AGENTS[env_id] = TRPO(env_id, config=TRPOConfig(num_envs=1, vector_mode="sync"))
    return _AGENTS[env_id]


@PROPERTY
@given(rows=st.none() | st.integers(1, 4), data=st.data(), bad=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_predict_refuses_non_finite_observations(rows: int | None, data: st.DataObject, bad: float) -> None:
    """One observation, a batch, a Dict's Box entry: an entry that is NaN or infinite is a ValueError naming the
    observation, as rollouts refuse it (the policy used to answer with an action); the same without it acts."""
    dict_obs = data.draw(st.booleans())
    agent = _agent("DictObs-v0" if dict_obs else "CartPole-v1")
    space = agent.observation_space
    samples = [space.sample() for _ in range(rows or 1)]
    if dict_obs:
        obs: Any = samples[0] if rows is None else {k: np.stack([s[k] for s in samples]) for k in space.spaces}
    else:
        obs = samples[0] if rows is None else np.stack(samples)
    agent.predict(obs)  # finite: acts
    row = data.draw(st.integers(0, (rows or 1) - 1))
    box = obs["pos"] if dict_obs else obs
    flat = box.reshape(rows or 1, -1)
    flat[row, data.draw(st.integers(0, flat.shape[1] - 1))] = bad
    obs = {**obs, "pos": flat.reshape(box.shape)} if dict_obs else flat.reshape(box.shape)
    which = "the observation" if rows is None else f"observation {row} of the batch"
    with pytest.raises(ObservationError, match=f"predict: {which} holds NaN or an infinity"):
        agent.predict(obs)
    assert issubclass(ObservationError, ValueError)


# --- a tune study ------------------------------------------------------------------------------------------------

def test_a_tune_study_writes_only_its_space_to_best_yaml(tmp_path: Path) -> None:
    """A shared study whose best trial records a field outside the search space (env_wrappers: os:system): best.yaml,
    which `trpo train --config` reads, holds the space's fields alone; and a link planted at best.yaml is refused
    rather than written through."""
    optuna = pytest.importorskip("optuna")
    from trpo.tune import best_config, report, settings_for

    s = settings_for("CartPole-v1", 1, out=tmp_path / "tune")
    dim = next(d for d in s.space if d.name == "max_kl")  # a range of the default space
    study = optuna.create_study(direction="maximize")
    distributions = {"max_kl": optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log),
                     "env_wrappers": optuna.distributions.CategoricalDistribution(["os:system"])}
    study.add_trial(optuna.trial.create_trial(params={"max_kl": 0.01, "env_wrappers": "os:system"}, value=1.0,
                                              distributions=distributions))
    best = best_config(s, study)
    assert best is not None and best["max_kl"] == 0.01 and "env_wrappers" not in best
    target = tmp_path / "target.txt"
    target.write_text("precious\n")
    s.study_dir.mkdir(parents=True)
    (s.study_dir / "best.yaml").symlink_to(target)
    with pytest.raises(checkpoint.RunDirError, match=re.escape("best.yaml is a symbolic link")):
        report(s, study)
    assert target.read_text() == "precious\n"


def test_the_threat_model_names_each_test_and_each_test_is_in_it() -> None:
    """docs/security.md's table and this file agree: each row's tests exist, and each test here is in the page."""
    named = set(re.findall(r"`(test_\w+)`", (ROOT / "docs" / "security.md").read_text()))
    here = {name for name in globals() if name.startswith("test_")} - {"test_the_threat_model_names_each_test_and_each_"
                                                                        "test_is_in_it"}
    assert named == here


def test_the_peers_write_their_run_directories_without_following_links(tmp_path: Path) -> None:
    """trpo bench --peer's run directories are run directories too: their files are written as trpo's are."""
    from trpo.peers import _metrics_from_monitors

    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(outside)
    with pytest.raises(checkpoint.RunDirError):
        _metrics_from_monitors(tmp_path / "no-monitors", 1024, run / "metrics.jsonl")
    assert outside.read_text() == "keep"
