"""Saving and loading: every piece of agent state round-trips for every kind of config; the running statistics
stay arrays; TRPO(env, **overrides) builds on the preset; the README's Python snippet runs as written."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trpo_testenvs  # noqa: F401 - registers the test envs

from trpo import TRPO, TRPOConfig
from trpo.checkpoint import CheckpointError
from trpo.config import ConfigError
from trpo.logger import MetricsLog
from trpo.normalization import RewardScaler, RunningMeanStd
from trpo.resolve import resolve_config

SMALL = dict(num_envs=2, steps_per_env=64, value_epochs=1, value_minibatch=64)


def assert_same_state(a: Any, b: Any, where: str = "state") -> None:
    """Exact equality of nested checkpoint state: tensors bit for bit, same keys, same plain values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# One agent per kind of state: each action space and observation encoding, normalization on and off (the
# reward scaler's statistics have shape (): the crash of every reward-normalized preset), both Fisher products,
# both update rules, every advantage estimator, worker processes.
VARIANTS = {
    "box-normalized": ("Pendulum-v1", dict(normalize_obs=True, normalize_reward=True)),
    "discrete-reward-only": ("CartPole-v1", dict(normalize_reward=True, advantage="td")),
    "multidiscrete-hessian": ("trpo_testenvs:MultiDiscreteAct-v0", dict(fisher_product="hessian", normalize_obs=True)),
    "multibinary-npg": ("trpo_testenvs:MultiBinaryAct-v0", dict(update_rule="npg", advantage="return")),
    "discrete-obs-relu": ("trpo_testenvs:DiscreteObs-v0", dict(activation="relu", normalize_reward=True)),
    "dict-obs-subprocess": ("trpo_testenvs:DictObs-v0", dict(vector_mode="subprocess", normalize_obs=True,
                                                              normalize_reward=True, init_log_std=-0.5)),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_piece_of_state_round_trips(tmp_path: Path, name: str) -> None:
    env_id, fields = VARIANTS[name]
    agent = TRPO(env_id, config=TRPOConfig(**SMALL, **fields), seed=2)
    agent.learn(256)
    path = tmp_path / "agent.pt"
    agent.save(path)
    loaded = TRPO.load(path)
    saved = agent.state_dict()
    assert saved["num_updates"] == 2 and saved["critic_optimizer"]["state"]  # something to round-trip
    if agent.config.normalize_reward:
        assert float(saved["reward_norm"]["count"]) > 1  # statistics were updated, then saved
    assert_same_state({k: v for k, v in saved.items() if k != "versions"},
                      {k: v for k, v in loaded.state_dict().items() if k != "versions"})
    assert loaded.config == agent.config and loaded.preset == agent.preset
    # Same predictions, deterministic and sampled (the prediction generator round-trips too).
    obs = [agent.observation_space.sample() for _ in range(4)]
    for deterministic in (True, False):
        for o in obs:
            np.testing.assert_array_equal(agent.predict(o, deterministic=deterministic)[0],
                                          loaded.predict(o, deterministic=deterministic)[0])
    # Two agents loaded from one checkpoint continue identically.
    again = TRPO.load(path)
    loaded.learn(384)
    again.learn(384)
    assert_same_state(loaded.actor.state_dict(), again.actor.state_dict())
    for a in (agent, loaded, again):
        a.close()


def test_a_config_with_every_field_changed_round_trips(tmp_path: Path) -> None:
    changed = dict(num_envs=2, steps_per_env=32, vector_mode="subprocess", num_workers=1, gamma=0.97, gae_lambda=0.9,
                   advantage="td", normalize_advantages=False, update_rule="penalty", max_kl=0.02, cg_iters=7,
                   kl_constraint="max", holdout_fraction=0.1, policy_lr=1e-3, policy_epochs=2, policy_minibatch=16,
                   max_grad_norm=1.0, clip_range=0.1, target_kl=0.02, kl_penalty="fixed", penalty_coef=2.0,
                   kl_target=0.02,
                   cg_damping=0.05, cg_tol=1e-8, fisher_product="hessian", fisher_subsample=2, backtrack_ratio=0.5,
                   natural_gradient="kfac_cg", kfac_samples=2,
                   max_backtracks=4, value_lr=3e-4, value_eps=1e-5, value_epochs=2, value_minibatch=16,
                   actor_hidden=(8,), critic_hidden=(8,), shared_trunk=True, value_kl_coef=0.5, value_fit_trunk=False,
                   activation="relu", init_log_std=-1.0, normalize_obs=True,
                   normalize_reward=True, clip_obs=5.0, clip_reward=4.0, device="cpu", torch_threads=1,
                   checkpoint_every=3, eval_episodes=2, eval_max_steps=500, obs_encoder="mlp", eval_every=1000,
                   save_every=2000, keep_checkpoints=2,
                   ray_address="127.0.0.1:6379", max_worker_restarts=5,
                   image_encoder="nature", sampling="vine", vine_states=4, vine_actions=3, vine_all_actions=False,
                   vine_horizon=5, vine_bootstrap=False, recurrent_hidden=8, recurrent_seq_len=5,
                   use_sde=True, sde_sample_freq=3, env_kwargs={"g": 9.0}, max_episode_steps=150)
    # Vine sampling takes feed-forward policies (and no wrappers it cannot save the state of, nor per-step
    # observation statistics): the recurrent one is the same config with single paths, a wrapper and those. K-FAC
    # takes feed-forward policies too: the recurrent one solves by CG.
    recurrent = {**changed, "recurrent": "gru", "sampling": "single_path", "obs_norm_update": "step",
                 "natural_gradient": "cg", "kfac_samples": 0,
                 "env_wrappers": (("gymnasium.wrappers:ClipReward", {"min_reward": -5.0, "max_reward": 0.0}),)}
    defaults = TRPOConfig()
    assert set(recurrent) == {f.name for f in dataclasses.fields(TRPOConfig)}  # a new field must join this test
    assert [k for k, v in changed.items() if getattr(defaults, k) == v] == ["device", "torch_threads"]
    for values in (changed, recurrent):
        agent = TRPO("Pendulum-v1", config=TRPOConfig(**values), seed=1)
        agent.learn(64)
        agent.save(tmp_path / "a.pt")
        loaded = TRPO.load(tmp_path / "a.pt")
        assert loaded.config == agent.config
        agent.close()
        loaded.close()


def test_scalar_running_statistics_stay_arrays() -> None:
    stats = RunningMeanStd(())
    stats.update(np.array([1.0, 2.0, 4.0]))
    assert isinstance(stats.mean, np.ndarray) and isinstance(stats.var, np.ndarray)
    state = stats.state_dict()
    assert state["mean"].shape == () and float(state["mean"]) == pytest.approx(7 / 3, rel=1e-4)
    other = RunningMeanStd(())
    other.load_state_dict(state)
    assert other.mean == stats.mean and other.var == stats.var and other.count == stats.count
    scaler = RewardScaler(num_envs=2, gamma=0.99, enabled=True, clip=10.0)
    scaler(np.array([1.0, -1.0]), np.array([False, True]))
    scaler.stats.state_dict()  # raised TypeError before: numpy scalars, not arrays
    with pytest.raises(ValueError, match="do not fit shape"):
        RunningMeanStd((3,)).load_state_dict(state)


def test_loading_into_an_env_with_other_spaces_is_a_clear_error(tmp_path: Path) -> None:
    agent = TRPO("Pendulum-v1", config=TRPOConfig(**SMALL, normalize_obs=True), seed=0)
    agent.learn(128)
    agent.save(tmp_path / "p.pt")
    agent.close()
    with pytest.raises(CheckpointError, match="does not fit env 'MountainCarContinuous-v0'"):
        TRPO.load(tmp_path / "p.pt", env="MountainCarContinuous-v0")


def test_a_prediction_generator_saved_on_another_device_type_is_reseeded(tmp_path: Path) -> None:
    agent = TRPO("Pendulum-v1", config=TRPOConfig(**SMALL), seed=0)
    state = agent.state_dict()
    state["rng"]["predict"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state is 16 bytes
    from trpo import checkpoint

    checkpoint.save_atomic(state, tmp_path / "cuda.pt")
    loaded = TRPO.load(tmp_path / "cuda.pt")
    assert_same_state(loaded.actor.state_dict(), agent.actor.state_dict())
    agent.close()
    loaded.close()


def test_overrides_apply_on_top_of_the_preset_or_the_given_config() -> None:
    preset, _ = resolve_config("Hopper-v5")
    agent = TRPO("Hopper-v5", max_kl=0.02)
    assert agent.config == preset.replace(max_kl=0.02) and agent.preset == "Hopper"
    assert agent.config.num_envs == preset.num_envs and agent.config.normalize_reward
    agent.close()
    exact = TRPO("Hopper-v5", config=TRPOConfig(), max_kl=0.02, actor_hidden=[32, 32])
    assert exact.config == TRPOConfig(max_kl=0.02, actor_hidden=(32, 32)) and exact.preset is None
    exact.close()
    plain = TRPO("Hopper-v5", config=TRPOConfig())  # config= means exactly that config
    assert plain.config == TRPOConfig()
    plain.close()
    with pytest.raises(ConfigError, match="unknown config field 'max_kll'"):
        TRPO("CartPole-v1", max_kll=0.02)
    with pytest.raises(ConfigError, match="seed must be an integer in"):
        TRPO("CartPole-v1", seed=-3)


def test_metrics_log_drops_rows_after_the_checkpoint_and_a_line_cut_short(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, tensorboard=False)
    for update in (1, 2, 3):
        log.write({"update": update, "step": 100 * update, "kl": 0.01})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"update": 4, "st')  # killed mid-write
    log = MetricsLog(tmp_path, tensorboard=False, keep_updates=2)
    log.write({"update": 3, "step": 300, "kl": 0.02})
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [int(re.search(r'"update": (\d+)', ln).group(1)) for ln in lines] == [1, 2, 3]
    assert '"kl": 0.02' in lines[-1]


def test_readme_python_snippet_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (snippet,) = re.findall(r"## Python API\n\n```python\n(.*?)```", readme, re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["agent"].num_steps > 0
    namespace["agent"].close()


def test_api_run_dirs_are_refused_when_used_and_resumed_on_request(tmp_path: Path) -> None:
    from trpo.checkpoint import RunDirError

    run = tmp_path / "run"
    cfg = TRPOConfig(**SMALL, checkpoint_every=1)
    first = TRPO("CartPole-v1", config=cfg, run_dir=run)
    first.learn(256)
    first.train_until(384)  # the same agent goes on in its own run dir
    first.close()
    with pytest.raises(RunDirError, match="already holds a run"):
        TRPO("CartPole-v1", config=cfg, run_dir=run).learn(128)
    resumed = TRPO.resume(run)
    assert resumed.num_updates == 3 and resumed.total_steps == 384
    resumed.train_until(512)
    resumed.close()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [int(re.search(r'"update": (\d+)', ln).group(1)) for ln in lines] == [1, 2, 3, 4]
    anew = TRPO("CartPole-v1", config=cfg, run_dir=run, overwrite=True, seed=9)
    anew.learn(128)
    anew.close()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    with pytest.raises(ConfigError, match="max_kl cannot change"):
        TRPO.resume(run, max_kl=0.5)


def test_an_agent_with_non_finite_weights_is_not_saved_and_the_last_checkpoint_stays(tmp_path: Path) -> None:
    """A checkpoint no load would accept is refused at save, not written for the load to refuse later; the file a
    save would replace stays as it was."""
    import math

    from trpo import CheckpointError

    agent = TRPO("CartPole-v1", seed=0, num_envs=1, vector_mode="sync", steps_per_env=64)
    path = tmp_path / "agent.pt"
    agent.save(path)
    good = path.read_bytes()
    for part, fill in (("actor", math.nan), ("critic", math.inf)):
        with torch.no_grad():
            next(iter(getattr(agent, part).parameters())).view(-1)[0] = fill
        with pytest.raises(CheckpointError, match=rf"not saved: {part}\.\S+ holds NaN or an infinity"):
            agent.save(path)
        assert path.read_bytes() == good
        agent.load_state_dict(TRPO.load(path).state_dict())  # the good weights back, for the next part
    agent.close()
