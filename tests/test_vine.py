"""Vine sampling: env states restored bit for bit, the trunk untouched by its branches, Q estimates against the
exact Q of a small MDP, common random numbers, the estimators against direct formulas, every rollout backend
alike, the errors, and learning."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from clitools import cli
from test_cli import metrics
from trpo_testenvs import LayeredMDP, MaskedChoiceEnv

from trpo import TRPO, TRPOConfig
from trpo import objectives as obj
from trpo.config import ConfigError
from trpo.envs import make_env
from trpo.update_rules import PolicyBatch
from trpo.vine import (
    StateAccess,
    UnsupportedEnvStateError,
    all_action_advantages,
    branch_q_values,
    masked_stand_ins,
)

CLASSIC = ["CartPole-v1", "Pendulum-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0"]
TIMING = ("fps", "time_rollout", "time_policy", "time_value")


def _replay(env: gym.Env, actions: list, to_the_end: bool = False) -> list:
    """(observation bytes, reward, terminated, truncated) per action; with to_the_end, stop when the episode ends."""
    out = []
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(a)
        out.append((np.asarray(obs).tobytes(), reward, terminated, truncated))
        if to_the_end and (terminated or truncated):
            break
    return out


@pytest.mark.filterwarnings("ignore:.*already returned terminated = True")  # the replay steps on past the end
@pytest.mark.parametrize("env_id", ["Hopper-v5", "Ant-v5", *CLASSIC])
def test_a_restored_state_replays_bit_for_bit_time_limit_included(env_id: str) -> None:
    env = gym.make(env_id)
    env.reset(seed=3)
    env.action_space.seed(3)
    for _ in range(5):
        env.step(env.action_space.sample())
    access = StateAccess(env)
    state = access.save()
    limit = env.spec.max_episode_steps
    actions = [env.action_space.sample() for _ in range(limit)]  # long enough to reach the time limit
    first = _replay(env, actions[: limit - 5])
    assert first[-1][3], "the replay should end at the time limit"
    access.restore(state)
    assert _replay(env, actions[: limit - 5]) == first
    # and the RNG: a reset after a restore draws what it drew before
    access.restore(state)
    obs_a = env.reset()[0]
    access.restore(state)
    assert np.array_equal(env.reset()[0], obs_a)


@pytest.mark.parametrize("env_id, module, seed", [("ALE/Pong-v5", "ale_py", 5), ("MinAtar/Breakout-v1", "minatar", 1)])
def test_image_games_restore_bit_for_bit_with_their_preprocessing(env_id: str, module: str, seed: int) -> None:
    """Atari as trpo makes it (sticky actions, no-op starts, frame skip with max-pooling, frame stack) and MinAtar
    (sticky actions): a restored state replays the same frames and rewards, and the RNG after it the same."""
    pytest.importorskip(module)
    env = make_env(env_id)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(3):
        env.step(env.action_space.sample())
    access = StateAccess(env)
    assert access.kind == ("ale" if module == "ale_py" else "minatar")
    state = access.save()
    actions = [env.action_space.sample() for _ in range(300)]
    first = _replay(env, actions, to_the_end=True)
    assert len({step[0] for step in first}) >= 20  # the frames moved on (MinAtar: 25 steps to the end)
    for _ in range(2):  # twice: a restore leaves the saved state intact
        access.restore(state)
        assert _replay(env, actions, to_the_end=True) == first
    access.restore(state)
    obs_a = env.reset()[0]
    access.restore(state)
    assert np.array_equal(env.reset()[0], obs_a)
    env.close()


def test_envs_whose_state_cannot_be_saved_are_refused_with_what_they_would_need() -> None:
    with pytest.raises(ConfigError, match=r"RecordEpisodeStatistics.*save_state"):
        TRPO(lambda: gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1")), sampling="vine")
    with pytest.raises(ConfigError, match=r"CounterEnv.*save_state\(\) -> state and restore_state"):
        TRPO("trpo_testenvs:Counter-v0", sampling="vine")
    with pytest.raises(UnsupportedEnvStateError):
        StateAccess(gym.make("trpo_testenvs:Counter-v0"))


@pytest.mark.parametrize("field, value, message", [
    ("update_rule", "ppo", "ppo's clipped surrogate"),
    ("vine_states", 5000, "vine_states must be <= steps_per_env"),
    ("vine_actions", 1, "vine_actions must be >= 2"),
    ("vine_horizon", 0, "vine_horizon must be a positive integer"),
])
def test_bad_vine_settings_are_config_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TRPOConfig(sampling="vine", **{field: value})


@pytest.mark.parametrize("env_id, steps", [("CartPole-v1", 256), ("Hopper-v5", 128)])
def test_branches_leave_the_trunk_as_single_path_would_have_it(env_id: str, steps: int) -> None:
    """Same seed, same first batch: the trunk's data and the envs' states after it are identical."""
    def first_batch(sampling: str):
        agent = TRPO(env_id, vector_mode="sync", num_envs=2, steps_per_env=steps, sampling=sampling, vine_states=8)
        collector = agent.learner.collector_or_new()
        batch = collector.collect(agent.actor, steps, agent.sample_gen)
        envs = collector.runner.envs
        after = [StateAccess(e).save() for e in envs], collector.runner.obs.copy()
        agent.close()
        return batch, after

    single, (states_s, obs_s) = first_batch("single_path")
    vine, (states_v, obs_v) = first_batch("vine")
    assert vine.vine is not None and vine.vine.env_steps > 0
    for name in ("obs", "next_obs", "actions", "rewards", "terminated", "truncated"):
        assert torch.equal(getattr(single, name), getattr(vine, name)), name
    assert single.episode_returns == vine.episode_returns
    assert np.array_equal(obs_s, obs_v)
    for (core_s, rng_s, t_s), (core_v, rng_v, t_v) in zip(states_s, states_v, strict=True):
        assert rng_s == rng_v and t_s == t_v
        if env_id.startswith("Hopper"):
            assert np.array_equal(core_s.qpos, core_v.qpos) and np.array_equal(core_s.qvel, core_v.qvel)
        else:
            assert np.array_equal(core_s["state"], core_v["state"])


def _layered_q_samples(all_actions: bool, action_free_moves: bool = False, seed: int = 0):
    """One large vine batch on LayeredMDP: (layer, node, action, Q estimate) per branch, the env, and pi_old."""
    env_fn = lambda: LayeredMDP(action_free_moves=action_free_moves)  # noqa: E731
    agent = TRPO(env_fn, seed=seed, num_envs=4, steps_per_env=512, sampling="vine", vine_states=384,
                 vine_all_actions=all_actions, vine_actions=6, vine_horizon=4, vine_bootstrap=False, gamma=0.9,
                 normalize_obs=False, normalize_reward=False)  # the raw rewards of the exact Q (no `vector` preset)
    with torch.no_grad():  # a policy away from uniform, so that pi matters in the exact Q
        for p in agent.actor.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    batch = agent.learner.collector_or_new().collect(agent.actor, 512, agent.sample_gen)
    vine = batch.vine
    q = branch_q_values(vine.rewards, vine.steps, vine.terminated, torch.zeros(vine.steps.shape), 0.9, False)
    mdp = LayeredMDP(action_free_moves=action_free_moves)
    cells = vine.obs.argmax(-1)
    layer, node = (cells // mdp.nodes).numpy(), (cells % mdp.nodes).numpy()
    grid = torch.eye(mdp.layers * mdp.nodes)
    with torch.no_grad():
        probs = torch.softmax(agent.actor(grid)[0], -1).numpy().reshape(mdp.layers, mdp.nodes, -1).astype(np.float64)
    agent.close()
    return layer, node, vine.actions.numpy(), q.numpy(), vine, mdp.exact_q(probs, 0.9)


@pytest.mark.parametrize("all_actions", [True, False])
def test_q_estimates_match_the_exact_q_of_a_small_mdp(all_actions: bool) -> None:
    layer, node, actions, q, vine, exact = _layered_q_samples(all_actions)
    assert vine.all_actions == all_actions
    if all_actions:
        assert (actions == np.arange(3)).all()  # every action from every state
    checked = 0
    for ell, j, a in itertools.product(range(4), range(2), range(3)):
        # one branch per state: branches of one state that drew the same action are copies (common random numbers)
        taken = (actions == a) & (layer == ell)[:, None] & (node == j)[:, None]
        rows = np.flatnonzero(taken.any(1))
        hits = q[rows, taken[rows].argmax(1)]
        if len(hits) < 30:
            continue
        error = abs(hits.mean() - exact[ell, j, a])
        standard_error = max(hits.std(ddof=1), 1e-3) / math.sqrt(len(hits))
        assert error < 4.5 * standard_error, (ell, j, a, hits.mean(), exact[ell, j, a], len(hits))
        checked += 1
    assert checked >= 12  # at least half of the 24 (layer, node, action) cells were visited often enough
    # the last layer's Q is its reward: exact in every single branch
    last = layer == 3
    assert np.allclose(q[last], exact[3][node[last][:, None], actions[last]], atol=1e-6)


def test_branches_of_one_state_share_their_random_numbers() -> None:
    """Where the action changes only the reward, common random numbers make the branches identical after it:
    Q(s, a) - Q(s, a') = R(s, a) - R(s, a') exactly, at every rollout state."""
    layer, node, actions, q, _, _ = _layered_q_samples(True, action_free_moves=True)
    rewards = LayeredMDP(action_free_moves=True).R
    first = rewards[layer[:, None], node[:, None], actions]
    continuation = q - first
    assert np.allclose(continuation, continuation[:, :1], atol=1e-5)
    assert continuation.std() > 0.1  # the continuations do differ between states


def test_branch_q_values_against_a_loop() -> None:
    torch.manual_seed(0)
    gamma, horizon = 0.95, 5
    steps = torch.randint(1, horizon + 1, (6, 3))
    rewards = torch.randn(6, 3, horizon) * (torch.arange(horizon) < steps[..., None])
    terminated = torch.rand(6, 3) < 0.4
    last_values = torch.randn(6, 3)
    for bootstrap in (True, False):
        q = branch_q_values(rewards, steps, terminated, last_values, gamma, bootstrap)
        for n, k in itertools.product(range(6), range(3)):
            length = int(steps[n, k])
            expect = sum(gamma**t * float(rewards[n, k, t]) for t in range(length))
            if bootstrap and not terminated[n, k]:
                expect += gamma**length * float(last_values[n, k])
            assert math.isclose(float(q[n, k]), expect, rel_tol=1e-5, abs_tol=1e-5)


def test_every_action_surrogate_is_sum_over_actions_of_pi_q() -> None:
    """mean(r A) with A = all_action_advantages equals mean_n sum_a pi_theta(a|s_n) Q(s_n, a) up to a constant,
    with the same gradient, for any theta."""
    torch.manual_seed(0)
    n, k = 7, 4
    old_logits, q = torch.randn(n, k, dtype=torch.float64), torch.randn(n, k, dtype=torch.float64)
    old_logp = torch.log_softmax(old_logits, -1)
    adv = all_action_advantages(q, old_logp.exp())
    gaps = []
    for _ in range(3):
        logits = (old_logits + 0.5 * torch.randn(n, k, dtype=torch.float64)).requires_grad_(True)
        new_logp = torch.log_softmax(logits, -1)
        ours = obj.surrogate(new_logp.reshape(-1), old_logp.reshape(-1), adv.reshape(-1))
        direct = (new_logp.exp() * q).sum(-1).mean()
        gaps.append(float((ours - direct).detach()))
        assert torch.allclose(torch.autograd.grad(ours, logits, retain_graph=True)[0],
                              torch.autograd.grad(direct, logits)[0])
    assert np.allclose(gaps, gaps[0])


def test_self_normalized_surrogate_against_a_loop_and_through_policy_batch() -> None:
    torch.manual_seed(1)
    n, k = 5, 3
    old = torch.randn(n * k, dtype=torch.float64)
    new = old + 0.3 * torch.randn(n * k, dtype=torch.float64)
    q = torch.randn(n * k, dtype=torch.float64)
    groups = torch.arange(n).repeat_interleave(k)
    expect = 0.0
    for s in range(n):
        w = [math.exp(float(new[s * k + b] - old[s * k + b])) for b in range(k)]
        expect += sum(wb * float(q[s * k + b]) for b, wb in enumerate(w)) / sum(w) / n
    assert math.isclose(float(obj.self_normalized_surrogate(new, old, q, groups)), expect, rel_tol=1e-12)
    # through PolicyBatch, on a subset: the states it holds, each self-normalized over its own branches
    batch = PolicyBatch(torch.zeros(n * k, 1), torch.zeros(n * k), old, q, (torch.zeros(n * k, 1),), groups)
    idx = torch.tensor([0, 1, 4, 5, 9])  # states 0 (2 branches), 1 (2), 3 (1)
    part = batch.subset(idx)
    sub_expect = 0.0
    for rows in ([0, 1], [4, 5], [9]):
        w = [math.exp(float(new[r] - old[r])) for r in rows]
        sub_expect += sum(wb * float(q[r]) for wb, r in zip(w, rows, strict=True)) / sum(w) / 3
    assert math.isclose(float(part.surrogate(new[idx])), sub_expect, rel_tol=1e-12)


def _history(**overrides: object) -> list[dict]:
    agent = TRPO("CartPole-v1", seed=1, num_envs=4, steps_per_env=128, sampling="vine", vine_states=8, **overrides)
    agent.learn(3 * 512 + 1)
    agent.close()
    return [{k: v for k, v in row.items() if k not in TIMING} for row in agent.history]


@pytest.mark.parametrize("all_actions", [True, False])
def test_vine_runs_are_identical_in_this_process_and_in_worker_processes(all_actions: bool) -> None:
    sync = _history(vector_mode="sync", vine_all_actions=all_actions)
    workers = _history(vector_mode="subprocess", num_workers=2, vine_all_actions=all_actions)
    assert sync == workers
    assert sync[0]["vine_branches"] == 4 * 8 * (2 if all_actions else 4)
    assert sync[0]["step"] == 512 + sync[0]["vine_steps"]  # branch steps count as env steps


def test_vine_with_action_masks_samples_only_valid_actions() -> None:
    """MaskedChoiceEnv raises on an invalid action: branches (first actions and continuations) take none."""
    agent = TRPO(lambda: MaskedChoiceEnv(), num_envs=2, steps_per_env=64, sampling="vine", vine_states=16,
                 vine_all_actions=False, vine_actions=3)
    agent.learn(2000)
    assert agent.history[-1]["vine_branches"] == 2 * 16 * 3
    agent.close()


def test_every_action_vine_with_masks_runs_the_valid_actions_only() -> None:
    """MaskedChoiceEnv raises on an invalid action: the every-action branches run exactly the actions the
    rollout state's mask allows, and the masked ones take no step and weigh nothing."""
    agent = TRPO(lambda: MaskedChoiceEnv(), num_envs=2, steps_per_env=64, sampling="vine", vine_states=16)
    vine = agent.learner.collector_or_new().collect(agent.actor, 64, agent.sample_gen).vine
    assert vine is not None and vine.all_actions
    allowed = vine.obs[:, -6:] > 0  # the mask columns of the 32 rollout states, 6 actions
    assert vine.steps.shape == (32, 6) and not allowed.all()
    assert torch.equal(vine.steps > 0, allowed)  # every valid action ran (1 step at least), no masked one did
    assert vine.env_steps == int(vine.steps.sum())
    assert torch.equal(vine.old_log_probs.exp() > 0, allowed)
    # It learns the best valid action of each situation (20 per episode; a random valid policy scores about 8).
    # Calibration (seeds 0-5, 2026-11-23): 20 of 20 on every seed after about 1,100 steps already.
    agent.learn(3000)
    row = agent.history[-1]
    assert row["vine_branches"] < 2 * 16 * 6 and math.isfinite(row["kl"]) and math.isfinite(row["vine_q_spread"])
    assert agent.evaluate(10)["mean_return"] >= 19
    agent.close()


def test_every_action_surrogate_with_masked_actions_sums_over_the_valid_ones() -> None:
    """With pi_old(a|s) = 0 for masked actions (their stand-ins from masked_stand_ins), mean(r A) is
    mean_n sum_{a valid} pi_theta(a|s_n) Q(s_n, a) up to a constant, with the same gradient, and stays finite
    even where the masked log-probabilities are far apart."""
    torch.manual_seed(2)
    n, k = 6, 5
    mask = torch.rand(n, k) > 0.4
    mask[:, 0] = True  # one valid action per state at least
    old_logits, q = torch.randn(n, k, dtype=torch.float64), torch.randn(n, k, dtype=torch.float64)
    masked_logits = lambda x: torch.where(mask, x, torch.full_like(x, -1e9))  # noqa: E731
    old_logp = torch.log_softmax(masked_logits(old_logits), -1)
    adv = all_action_advantages(q, old_logp.exp())
    actions = torch.arange(k).repeat(n, 1)
    stand_in_actions, stand_in_old = masked_stand_ins(actions, old_logp)
    assert torch.equal(stand_in_actions[mask], actions[mask]) and mask.gather(1, stand_in_actions).all()
    gaps = []
    for scale in (0.5, 1.0, 50.0):  # 50: masked log-probabilities of pi_theta and pi_old differ by far more than 1
        logits = (old_logits + scale * torch.randn(n, k, dtype=torch.float64)).requires_grad_(True)
        new_logp = torch.log_softmax(masked_logits(logits), -1)
        ours = obj.surrogate(new_logp.gather(1, stand_in_actions).reshape(-1), stand_in_old.reshape(-1),
                             adv.reshape(-1))
        direct = (torch.where(mask, new_logp.exp(), 0.0) * q).sum(-1).mean()
        assert torch.isfinite(ours)
        gaps.append(float((ours - direct).detach()))
        assert torch.allclose(torch.autograd.grad(ours, logits, retain_graph=True)[0],
                              torch.autograd.grad(direct, logits)[0])
    assert np.allclose(gaps, gaps[0])


@pytest.mark.parametrize("rule", ["npg", "pg", "penalty"])
def test_the_other_rules_take_vine_batches(rule: str) -> None:
    agent = TRPO("Pendulum-v1", num_envs=2, steps_per_env=128, sampling="vine", vine_states=8, update_rule=rule,
                 holdout_fraction=0.25)
    agent.learn(1000)
    row = agent.history[-1]
    assert row["vine_branches"] == 2 * 8 * 4
    assert math.isfinite(row["kl"]) and math.isfinite(row["kl_holdout"])
    agent.close()


@pytest.mark.parametrize("env_id, envs, branches", [("CartPole-v1", 2, 2), ("Hopper-v5", 2, 4),
                                                    ("MinAtar/Breakout-v1", 4, 3)])
def test_vine_presets_train_checkpoint_evaluate_and_resume_through_the_cli(tmp_path: Path, env_id: str, envs: int,
                                                                          branches: int) -> None:
    """The presets as shipped (worker processes; Hopper with normalized observations and rewards; MinAtar's
    images and CNN) with --sampling vine: branch steps count toward --total-steps, checkpoints resume."""
    if env_id.startswith("MinAtar"):
        pytest.importorskip("minatar")
    run = tmp_path / "run"
    first = cli("train", "--env", env_id, "--sampling", "vine", "--vine-states", "4", "--steps-per-env", "64",
                "--total-steps", str(300 * envs), "--checkpoint-every", "1", "--eval-episodes", "1",
                "--no-progress", "--run-dir", str(run))
    assert first.returncode == 0, first.stderr
    rows = metrics(run)
    starts = [0] + [r["step"] for r in rows[:-1]]
    assert all(r["step"] == prev + 64 * envs + r["vine_steps"] for prev, r in zip(starts, rows, strict=True))
    assert rows[-1]["step"] >= 300 * envs > rows[-2]["step"] and (run / "eval.json").is_file()
    ev = cli("eval", str(run), "--episodes", "1", "--json")
    assert ev.returncode == 0, ev.stderr
    more = cli("train", "--resume", str(run), "--total-steps", str(600 * envs), "--no-progress")
    assert more.returncode == 0, more.stderr
    resumed = metrics(run)
    assert len(resumed) > len(rows) and resumed[-1]["step"] >= 600 * envs > resumed[-2]["step"]
    assert all(r["vine_branches"] == envs * 4 * branches for r in resumed)
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["num_steps"] == resumed[-1]["step"] and state["config"]["sampling"] == "vine"


def test_vine_on_atari_with_the_standard_preprocessing() -> None:
    """Pong as trpo makes it (sticky actions, frame skip, 4 stacked 84 x 84 uint8 frames, the paper's CNN):
    every one of its 6 actions branches from each rollout state, in this process and in worker processes
    alike."""
    pytest.importorskip("ale_py")
    rows = []
    for mode in ("sync", "subprocess"):
        agent = TRPO("ALE/Pong-v5", num_envs=2, steps_per_env=32, value_epochs=1, sampling="vine", vine_states=2,
                     vine_horizon=4, vector_mode=mode, num_workers=2, seed=3)
        agent.learn(64)
        rows.append({k: v for k, v in agent.history[-1].items() if k not in TIMING})
        agent.close()
    assert rows[0] == rows[1]
    assert rows[0]["vine_branches"] == 2 * 2 * 6 and rows[0]["vine_steps"] == 2 * 2 * 6 * 4  # Pong lasts
    assert rows[0]["step"] == 64 + rows[0]["vine_steps"] and math.isfinite(rows[0]["kl"])


def _exact_start_value(agent: TRPO, mdp: LayeredMDP, gamma: float) -> float:
    grid = torch.eye(mdp.layers * mdp.nodes)
    with torch.no_grad():
        probs = torch.softmax(agent.actor(grid)[0], -1).numpy().reshape(mdp.layers, mdp.nodes, -1).astype(np.float64)
    return float((probs[0] * mdp.exact_q(probs, gamma)[0]).sum(-1).mean())  # start nodes are uniform


@pytest.mark.parametrize("all_actions", [True, False])
def test_vine_trpo_finds_the_optimal_policy_of_the_small_mdp(all_actions: bool) -> None:
    """The exact value of the learned policy closes >= 97% of the gap from the initial policy's to the optimum
    within 8,000 env steps (branches included). Calibrated on seeds 0-5: 99.1-100% for both estimators at
    8,000 steps; at 2,500 steps 85-95%, so the threshold needs the learning to finish."""
    mdp, gamma = LayeredMDP(), 0.9
    v = np.zeros(mdp.nodes)
    for layer in reversed(range(mdp.layers)):
        v = (mdp.R[layer] + gamma * mdp.P[layer] @ v).max(-1)
    optimum = float(v.mean())
    agent = TRPO(LayeredMDP, seed=3, num_envs=2, steps_per_env=64, sampling="vine", vine_states=16,
                 vine_all_actions=all_actions, gamma=gamma, max_kl=0.05, normalize_obs=False, normalize_reward=False)
    start = _exact_start_value(agent, mdp, gamma)
    agent.learn(8000)
    assert _exact_start_value(agent, mdp, gamma) >= start + 0.97 * (optimum - start)
    agent.close()
