"""trpo.sb3.TRPO, the drop-in for sb3-contrib's TRPO: sb3-contrib's documented example and the calls its own test
suite makes on TRPO (tests/test_run.py, test_cnn.py, test_dict_env.py, test_save_load.py, test_deterministic.py),
SB3's evaluate_policy and callbacks, VecEnvs trained as given, and the arguments it refuses. sb3-contrib's parameter
names and zips: tests/test_sb3_zip.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

import stable_baselines3.common.callbacks as sb3_callbacks
from gymnasium import spaces
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CheckpointCallback,
    EvalCallback,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, IdentityEnvBox
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecFrameStack,
    VecNormalize,
    VecTransposeImage,
    is_vecenv_wrapped,
)
from torch import nn

from trpo.rollout.sb3_vecenv import VecEnvRunner
from trpo.sb3 import TRPO

# FLOAT32: the same weights on the same observations, in arrays at other addresses, may round differently in the last
# bit (SIMD kernels split a float32 dot product by alignment): the same actions up to a few ulps, not bit for bit.


def test_sb3_contribs_documented_example(tmp_path: Path) -> None:
    """docs: TRPO("MlpPolicy", env, verbose=1), learn, save, load, predict (a short budget here); the loaded model
    acts as the trained one."""
    env = gym.make("Pendulum-v1")
    model = TRPO("MlpPolicy", env, verbose=1, n_steps=256, seed=0)
    model.learn(total_timesteps=512, log_interval=4)
    obs, _ = env.reset(seed=0)
    before, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "trpo_pendulum")
    del model
    model = TRPO.load(tmp_path / "trpo_pendulum")
    assert (tmp_path / "trpo_pendulum.zip").is_file()
    action, _states = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(action, before, rtol=1e-6)  # FLOAT32
    assert action.shape == (1,) and model.num_timesteps == 512
    for _ in range(3):
        obs, _reward, _terminated, _truncated, _info = env.step(action)
        action, _states = model.predict(obs, deterministic=True)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_run(env_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    """sb3-contrib's test_trpo; verbose=1 prints sb3's table."""
    model = TRPO("MlpPolicy", env_id, n_steps=128, seed=0, policy_kwargs=dict(net_arch=[16]), verbose=1)
    model.learn(total_timesteps=500)
    assert model.num_timesteps == 512  # whole batches, as sb3's
    assert model.learner.config.actor_hidden == (16,) == model.learner.config.critic_hidden
    out = capsys.readouterr().out
    assert "| train/" in out and "is_line_search_success" in out and "total_timesteps" in out


def test_gsde_with_sub_sampling() -> None:
    """sb3-contrib's test_trpo_params: gSDE, sub_sampling_factor 4, net_arch dict."""
    model = TRPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, use_sde=True, sub_sampling_factor=4,
                 seed=0, policy_kwargs=dict(net_arch=dict(pi=[32], vf=[32])), verbose=1)
    seen: list[int] = []
    rule = model.learner.update_rule
    inner = rule.rule  # type: ignore[attr-defined]
    original = inner.update
    inner.update = lambda actor, batch: (seen.append(batch.size), original(actor, batch))[1]
    model.learn(total_timesteps=500)
    assert model.learner.config.use_sde and seen and set(seen) == {16}  # every 4th of 64 samples


@pytest.mark.parametrize("stats_window_size", [1, 42])
def test_ep_buffers_stats_window_size(stats_window_size: int) -> None:
    model = TRPO("MlpPolicy", "CartPole-v1", stats_window_size=stats_window_size, n_steps=64)
    model.learn(total_timesteps=10)
    assert model.ep_info_buffer.maxlen == stats_window_size
    assert model.ep_success_buffer.maxlen == stats_window_size


def test_same_seed_same_run() -> None:
    """test_deterministic: the same seed gives the same actions after training."""
    obs = np.array([0.1, -0.2, 0.3])

    def trained() -> np.ndarray:
        model = TRPO("MlpPolicy", "Pendulum-v1", n_steps=128, seed=3, policy_kwargs=dict(net_arch=[16]))
        model.learn(256)
        return np.stack([model.predict(obs, deterministic=False)[0] for _ in range(3)])

    np.testing.assert_allclose(trained(), trained(), rtol=1e-5)  # FLOAT32


def test_save_load_round_trip(tmp_path: Path) -> None:
    """test_save_load: same actions on a batch of observations after load, on the env given to load."""
    env = DummyVecEnv([lambda: IdentityEnvBox(-10, 10)])
    model = TRPO("MlpPolicy", env, n_steps=256, policy_kwargs=dict(net_arch=[16], activation_fn=nn.ReLU),
                 verbose=0)
    model.learn(total_timesteps=128)
    observations = np.concatenate([env.step([env.action_space.sample()])[0] for _ in range(10)], axis=0)
    actions, _ = model.predict(observations, deterministic=True)
    model.save(tmp_path / "model.zip")
    loaded = TRPO.load(tmp_path / "model.zip", env=env)
    np.testing.assert_allclose(loaded.predict(observations, deterministic=True)[0], actions, rtol=1e-6)  # FLOAT32
    assert loaded.get_env() is not None and loaded.learner.config.activation == "relu"
    loaded.learn(128, reset_num_timesteps=False)
    assert loaded.num_timesteps == model.num_timesteps + 256


@pytest.mark.parametrize("share", [None, True, False])
def test_cnn_on_a_small_image_env(share: bool | None, tmp_path: Path) -> None:
    """test_cnn (TRPO's settings): sb3's default CnnPolicy shares its NatureCNN between pi and V (trpo's shared
    trunk, which sb3-contrib's critic step leaves alone: value_fit_trunk false); share_features_extractor=False
    gives the critic a CNN of its own. A channel-last image env is wrapped in VecTransposeImage; predict takes its
    channel-last observations."""
    env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True)
    kwargs = {} if share is None else dict(policy_kwargs=dict(share_features_extractor=share))
    model = TRPO("CnnPolicy", env, n_steps=128, batch_size=64, cg_max_steps=5, **kwargs).learn(128)
    shared = share is not False
    cfg = model.learner.config
    assert (cfg.shared_trunk, cfg.value_fit_trunk) == ((True, False) if shared else (False, True))
    assert (model.learner.critic.body is model.learner.actor.body) is shared
    assert is_vecenv_wrapped(model.get_env(), VecTransposeImage)
    obs, _ = env.reset()
    for _ in range(3):
        model.predict(obs, deterministic=False)
    action, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "cnn_model.zip")
    loaded = TRPO.load(tmp_path / "cnn_model.zip")
    assert loaded.predict(obs, deterministic=True)[0] == action
    assert (loaded.learner.critic.body is loaded.learner.actor.body) is shared


class DictEnv(gym.Env[dict[str, Any], np.ndarray]):
    """sb3-contrib's DummyDictEnv with vector entries only (test_dict_env's vec_only)."""

    def __init__(self) -> None:
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)
        self.observation_space = spaces.Dict({"vec": spaces.Box(-10, 10, (5,), np.float32),
                                              "discrete": spaces.Discrete(4)})

    def _obs(self) -> dict[str, Any]:
        return {"discrete": int(self.np_random.integers(4)),
                "vec": self.np_random.uniform(-10, 10, 5).astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        return self._obs(), float(self.np_random.random() - np.abs(action).sum()), False, False, {}


def test_dict_observations() -> None:
    env = gym.wrappers.TimeLimit(DictEnv(), 100)
    model = TRPO("MultiInputPolicy", env, gamma=0.5, seed=1, n_steps=64, batch_size=64,
                 policy_kwargs=dict(net_arch=dict(pi=[8], vf=[8])))
    model.learn(total_timesteps=128)
    evaluate_policy(model, env, n_eval_episodes=2, warn=False)
    obs = env.observation_space.sample()
    assert model.predict(obs, deterministic=True)[0].shape == (2,)


def test_dict_of_vectors_is_the_flattened_observation() -> None:
    """test_dict_env's test_consistency: a Dict of vectors and its FlattenObservation train the same policy."""
    dict_env = gym.wrappers.TimeLimit(DictEnv(), 100)
    flat_env = gym.wrappers.FlattenObservation(gym.wrappers.TimeLimit(DictEnv(), 100))
    obs, _ = dict_env.reset(seed=10)
    flat_obs = gym.spaces.flatten(dict_env.observation_space, obs)
    dict_model = TRPO("MultiInputPolicy", dict_env, gamma=0.5, seed=1, n_steps=64, batch_size=64).learn(128)
    flat_model = TRPO("MlpPolicy", flat_env, gamma=0.5, seed=1, n_steps=64, batch_size=64).learn(128)
    assert dict_model.learner.num_updates == flat_model.learner.num_updates == 2
    np.testing.assert_allclose(dict_model.predict(obs, deterministic=True)[0],
                               flat_model.predict(flat_obs, deterministic=True)[0], rtol=1e-5, atol=1e-6)


def test_evaluate_policy_and_sb3_callbacks(tmp_path: Path) -> None:
    """EvalCallback with StopTrainingOnRewardThreshold stops training once the mean reward passes the threshold;
    CheckpointCallback saves; a BaseCallback sees every env step with sb3's locals."""

    class Steps(BaseCallback):
        def _on_training_start(self) -> None:
            self.calls: dict[str, int] = {"start": 1, "rollout_start": 0, "step": 0, "rollout_end": 0}
            assert self.locals["total_timesteps"] == 1024

        def _on_rollout_start(self) -> None:
            self.calls["rollout_start"] += 1

        def _on_step(self) -> bool:
            self.calls["step"] += 1
            assert {"infos", "dones", "rewards", "new_obs", "actions"} <= set(self.locals)
            assert len(self.locals["infos"]) == 2 and self.num_timesteps == 2 * self.n_calls
            return True

        def _on_rollout_end(self) -> None:
            self.calls["rollout_end"] += 1

    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=1)
    model = TRPO("MlpPolicy", env, n_steps=64, seed=0)
    stop = StopTrainingOnRewardThreshold(reward_threshold=-1.0)  # any policy passes: stops at the first evaluation
    evaluation = EvalCallback(eval_env, callback_on_new_best=stop, eval_freq=96, n_eval_episodes=2)
    steps = Steps()
    checkpoints = CheckpointCallback(save_freq=64, save_path=str(tmp_path), name_prefix="m")
    model.learn(1024, callback=[steps, checkpoints, evaluation])
    assert model.num_timesteps == 2 * 96  # stopped at the step of the first evaluation, mid-batch
    assert steps.calls == {"start": 1, "rollout_start": 2, "step": 96, "rollout_end": 1}
    assert evaluation.best_mean_reward == evaluation.last_mean_reward > 0  # one evaluation, at step 192
    assert sorted(p.name for p in tmp_path.glob("m_*.zip")) == ["m_128_steps.zip"]
    mean, _ = evaluate_policy(TRPO.load(tmp_path / "m_128_steps.zip"), eval_env, n_eval_episodes=2)
    assert mean > 0


def test_vecnormalize_and_frame_stack_train_as_given() -> None:
    """A VecNormalize over a DummyVecEnv: its statistics move with the steps trpo takes, trpo's normalizers stay off;
    a VecFrameStack: the policy sees the stacked observations."""
    venv = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0), gamma=0.9)
    model = TRPO("MlpPolicy", venv, n_steps=128, gamma=0.9, seed=0)
    model.learn(512)
    assert venv.obs_rms.count > 512 and model.get_vec_normalize_env() is venv
    assert not model.learner.config.normalize_obs and not model.learner.config.normalize_reward
    assert [e["l"] for e in model.ep_info_buffer] == [200, 200]  # Monitor's records: an episode per env
    stacked = VecFrameStack(make_vec_env("CartPole-v1", n_envs=2, seed=0), n_stack=3)
    model = TRPO("MlpPolicy", stacked, n_steps=32).learn(64)
    assert model.learner.encoder.dim == 12


def test_truncation_bootstraps_from_the_final_observation() -> None:
    """Pendulum's episodes end only by its time limit: the batch marks them truncated, not terminated, with the
    true final observation (info["terminal_observation"]) as next_obs; CartPole's falls terminate."""
    model = TRPO("MlpPolicy", "Pendulum-v1", n_steps=256, seed=0)
    batch = model.learner.collector_or_new().collect(model.learner.actor, 256, model.learner.sample_gen)
    assert int(batch.truncated.sum()) == 1 and int(batch.terminated.sum()) == 0
    t = int(batch.truncated[:, 0].nonzero()[0, 0])
    assert t == 199 and not torch.equal(batch.next_obs[t], batch.obs[t + 1])
    assert torch.equal(batch.next_obs[t - 1], batch.obs[t])
    model = TRPO("MlpPolicy", "CartPole-v1", n_steps=256, seed=0)
    batch = model.learner.collector_or_new().collect(model.learner.actor, 256, model.learner.sample_gen)
    assert int(batch.terminated.sum()) > 0 and int(batch.truncated.sum()) == 0
    assert isinstance(model.learner.collector.runner, VecEnvRunner)  # type: ignore[union-attr]


def test_target_kl_and_damping_are_per_action_dimension() -> None:
    """sb3-contrib's KL and its Hessian are means over a Box's action dimensions: max_kl and cg_damping scale by
    them (tests/test_peer_equivalence.py shows the step then equals sb3-contrib's)."""
    model = TRPO("MlpPolicy", DictEnvFlat(), target_kl=0.02, cg_damping=0.1, line_search_max_iter=10,
                 line_search_shrinking_factor=0.5, n_critic_updates=7, batch_size=32, learning_rate=3e-4)
    cfg = model.learner.config
    assert (cfg.max_kl, cfg.cg_damping) == pytest.approx((0.04, 0.2))
    assert (cfg.max_backtracks, cfg.backtrack_ratio, cfg.value_epochs, cfg.value_minibatch, cfg.value_lr,
            cfg.value_eps) == (9, 0.5, 7, 32, 3e-4, 1e-5)
    discrete = TRPO("MlpPolicy", "CartPole-v1", target_kl=0.02, cg_damping=0.1).learner.config
    assert (discrete.max_kl, discrete.cg_damping) == (0.02, 0.1)


class DictEnvFlat(DictEnv):
    def __init__(self) -> None:
        super().__init__()
        self.observation_space = spaces.Box(-10, 10, (5,), np.float32)  # type: ignore[assignment]

    def _obs(self) -> Any:
        return self.np_random.uniform(-10, 10, 5).astype(np.float32)


def zoo_model(entry_id: str, env_id: str, **overrides: Any) -> TRPO:
    """The drop-in with rl-zoo's hyperparams/trpo.yml entry `entry_id` on `env_id`, its env built as rl-zoo's
    ExperimentManager builds it: n_envs envs, and for `normalize` a VecNormalize with the entry's gamma."""
    from trpo.peers import zoo_hyperparams

    entry = {**zoo_hyperparams("trpo")[entry_id], **overrides}
    env = make_vec_env(env_id, n_envs=entry.pop("n_envs"), seed=0)
    normalize, _ = entry.pop("normalize", False), entry.pop("n_timesteps")
    assert normalize in (True, False), "the entries tested here normalize with VecNormalize's defaults or not at all"
    env = VecNormalize(env, gamma=entry["gamma"]) if normalize else env
    return TRPO(entry.pop("policy"), env, seed=0, **entry)


def test_rl_zoo_hyperparameter_entry_trains() -> None:
    """rl-zoo's hyperparams/trpo.yml entry for CartPole-v1, through the drop-in (a short budget)."""
    model = zoo_model("CartPole-v1", "CartPole-v1").learn(1024)
    assert model.num_timesteps == 1024 and model._n_updates == 1


def test_rl_zoo_mujoco_entry_trains_through_vecnormalize() -> None:
    """rl-zoo's Hopper entry (its MuJoCo entries name v4; Gymnasium 1 has v5) with n_steps cut from 1024 to 64 so
    that two updates run: VecNormalize's statistics move with trpo's steps, the entry's settings reach the config."""
    pytest.importorskip("mujoco")
    model = zoo_model("Hopper-v4", "Hopper-v5", n_steps=64).learn(256)
    venv, cfg = model.get_vec_normalize_env(), model.learner.config
    assert isinstance(venv, VecNormalize) and venv.gamma == 0.99 and venv.obs_rms.count > 256
    assert model.num_timesteps == 256 and model._n_updates == model.learner.num_updates == 2
    assert (cfg.num_envs, cfg.cg_iters, cfg.value_epochs, cfg.value_minibatch) == (2, 25, 20, 128)
    assert cfg.max_kl == pytest.approx(0.01 * 3) and not cfg.normalize_obs  # max_kl: per Hopper's 3 action dims


@pytest.mark.parametrize(("kwargs", "named"), [
    (dict(rollout_buffer_class=object), "rollout_buffer_class"),
    (dict(rollout_buffer_kwargs={"a": 1}), "rollout_buffer_kwargs"),
    (dict(target_kl=0.0), "target_kl"),
    (dict(line_search_max_iter=1), "line_search_max_iter"),
    (dict(policy_kwargs=dict(activation_fn=nn.ELU)), "activation_fn"),
    (dict(policy_kwargs=dict(ortho_init=False)), "ortho_init"),
    (dict(policy_kwargs=dict(net_arch=[])), "net_arch"),
    (dict(policy_kwargs=dict(lstm_hidden_size=8)), "lstm_hidden_size"),
    (dict(policy_kwargs=dict(optimizer_kwargs=dict(weight_decay=0.1))), "optimizer_kwargs"),
])
def test_refused_arguments_name_themselves_in_one_line(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError) as info:
        TRPO("MlpPolicy", "CartPole-v1", **kwargs)
    message = str(info.value)
    assert named in message and "\n" not in message


def test_refused_policies_name_themselves_in_one_line() -> None:
    for policy, env, named in [("MlpLstmPolicy", "CartPole-v1", "MlpLstmPolicy"),
                               ("MlpPolicy", DictEnv(), "MultiInputPolicy")]:
        with pytest.raises(ValueError) as info:
            TRPO(policy, env)
        assert named in str(info.value) and "\n" not in str(info.value)


def test_tensorboard_function_callback_and_set_env(tmp_path: Path) -> None:
    """tensorboard_log writes SB3's TRPO_1 run; a plain function is a callback (SB3's ConvertCallback), False
    stopping at that step; set_env trains on another VecEnv of the same spaces, refuses other spaces."""
    model = TRPO("MlpPolicy", "CartPole-v1", n_steps=32, tensorboard_log=str(tmp_path), seed=0)
    calls: list[int] = []
    model.learn(256, callback=lambda locals_, globals_: calls.append(locals_["n_steps"]) or len(calls) < 40)
    assert model.num_timesteps == 40 and calls[:3] == [1, 2, 3] and calls[31:34] == [32, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["TRPO_1"]
    model.set_env(make_vec_env("CartPole-v1", n_envs=1, seed=5))
    model.learn(64)
    assert model.num_timesteps == 64
    with pytest.raises(ValueError, match="spaces"):
        model.set_env(gym.make("Pendulum-v1"))


def test_progress_bar(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """learn(progress_bar=True) shows SB3's bar (tqdm and rich: the sb3 extra) counting the env steps; without
    tqdm, SB3's own ImportError."""
    TRPO("MlpPolicy", "CartPole-v1", n_steps=64).learn(128, progress_bar=True)
    assert "128/128" in capsys.readouterr().out
    monkeypatch.setattr(sb3_callbacks, "tqdm", None)
    with pytest.raises(ImportError, match="tqdm and rich"):
        TRPO("MlpPolicy", "CartPole-v1", n_steps=64).learn(128, progress_bar=True)
