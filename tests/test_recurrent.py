"""Recurrent policies (config.recurrent): the sequence layout, the Fisher-vector product through time against
torch.func.hessian, rollout log-probabilities against the update's, episode boundaries, predict's state, save/load
and resume, every action space and backend."""

from __future__ import annotations

import json
from typing import get_args

import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces
from test_cli import trpo as trpo_cli
from torch.func import hessian
from trpo_testenvs import MaskedChoiceEnv, PixelSideEnv, SpacesEnv

from trpo import TRPO, pomdp  # pomdp registers the partially observed tasks
from trpo.config import ConfigError, Recurrent, TRPOConfig
from trpo.distributions import make_distribution
from trpo.encoders import CELLS, ConvBody, make_cell, unroll
from trpo.networks import Actor
from trpo.policy import snapshot
from trpo.sequences import Sequences, chunk
from trpo.trust_region import autograd_linearization, gauss_newton_fvp, hessian_fvp
from trpo.update_rules import PolicyBatch, flat_parameters

SMALL = TRPOConfig(num_envs=2, steps_per_env=64, actor_hidden=(8,), critic_hidden=(8,), recurrent="lstm",
                   recurrent_hidden=6, recurrent_seq_len=8, cg_iters=5, value_epochs=2, value_minibatch=32,
                   eval_episodes=1)

MEMORY_STEPS = 30_720  # see test_only_the_recurrent_policy_learns_the_memory_task

ACTION_SPACES = {
    "discrete": spaces.Discrete(3),
    "box": spaces.Box(-1.0, 1.0, (2,), np.float32),
    "multidiscrete": spaces.MultiDiscrete([3, 2]),
    "multibinary": spaces.MultiBinary(3),
}


def random_sequences(obs_dim: int, state_dim: int, steps: int = 13, envs: int = 3, length: int = 5,
                     seed: int = 0) -> tuple[Sequences, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(steps, envs, obs_dim, generator=gen)
    starts = torch.rand(steps, envs, generator=gen) < 0.2
    states = 0.5 * torch.randn(steps, envs, state_dim, generator=gen)
    return Sequences.of(obs, starts, states, length)


# --- the layout ------------------------------------------------------------------------------------------------


def test_chunks_pad_the_last_sequence_and_the_flat_order_maps_back() -> None:
    x = torch.arange(7 * 2).reshape(7, 2)  # [T=7, N=2], value = t * 2 + n
    c = chunk(x, 3)  # 3 chunks per env: S = 6, L = 3
    assert c.shape == (3, 6)
    assert c[:, 0].tolist() == [0, 2, 4] and c[:, 1].tolist() == [1, 3, 5]  # chunk 0 of env 0 and of env 1
    assert c[:, 4].tolist() == [12, 0, 0]  # env 0's last chunk: step 6, then padding
    seq, order = Sequences.of(torch.zeros(7, 2, 1), torch.zeros(7, 2, dtype=torch.bool), torch.zeros(7, 2, 4), 3)
    assert int(seq.valid.sum()) == 14 and sorted(order.tolist()) == list(range(14))
    assert torch.equal(x.reshape(-1)[order], c[seq.valid])
    sub, rows = seq.subset(torch.tensor([4, 1]))
    # Sequence 4 (env 0's last chunk) has one valid step, sequence 1 three; the rows, row-major over [L, 2]:
    # step 0 of 4 and of 1 (flat 4, 1), then steps 1 and 2 of sequence 1 (flat 6 + 1, 10 + 1).
    assert rows.tolist() == [4, 1, 7, 11]
    assert torch.equal(sub.position[sub.valid], torch.arange(4))


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cells_match_torch_lstm_and_gru(kind: str) -> None:
    """The written-out equations are torch's LSTM and GRU cells with the same weights."""
    torch.manual_seed(0)
    cell = make_cell(kind, 4, 5)
    assert cell is not None
    ref = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(4, 5)
    with torch.no_grad():
        for p in cell.parameters():  # biases away from their init, so that each one is checked
            p.add_(0.3 * torch.randn_like(p))
        ref.weight_ih.copy_(cell.input.weight)
        ref.weight_hh.copy_(cell.recur.weight)
        ref.bias_ih.copy_(cell.input.bias)
        ref.bias_hh.copy_(cell.recur.bias)
    x, state = torch.randn(3, 4), torch.randn(3, cell.state_dim)
    out, new = cell(x, state)
    if kind == "lstm":
        h, c = ref(x, (state[:, :5], state[:, 5:]))
        torch.testing.assert_close(new, torch.cat([h, c], -1))
    else:
        h = ref(x, state)
        torch.testing.assert_close(new, h)
    torch.testing.assert_close(out, h)


def test_every_cell_kind_is_a_config_choice() -> None:
    """The `recurrent` choices are 'none' and exactly the registered cells (a new kind: its class, its CELLS line and
    its name in config.Recurrent), and an unknown kind is refused by name."""
    assert get_args(Recurrent) == ("none", *CELLS)
    assert make_cell("none", 3, 4) is None
    with pytest.raises(ValueError, match="one of lstm, gru"):
        make_cell("rnn", 3, 4)


def test_nothing_leaks_across_an_episode_start() -> None:
    """After a step that starts an episode, outputs do not depend on anything before it (values or gradients)."""
    torch.manual_seed(0)
    cell = CELLS["lstm"](3, 4)
    x = torch.randn(6, 2, 3, requires_grad=True)
    starts = torch.zeros(6, 2, dtype=torch.bool)
    starts[3, 0] = True
    state = torch.randn(2, cell.state_dim, requires_grad=True)
    outs = unroll(cell, x, state, starts)[0]
    other = unroll(cell, x.detach() + torch.randn(6, 2, 3) * torch.arange(6).lt(3)[:, None, None],
                   torch.randn(2, cell.state_dim), starts)[0]
    torch.testing.assert_close(outs[3:, 0], other[3:, 0], rtol=0, atol=0)  # env 0 from its new episode on
    assert not torch.allclose(outs[3:, 1], other[3:, 1])  # env 1 goes on remembering
    gx, gs = torch.autograd.grad(outs[3:, 0].sum(), (x, state))
    assert gx[:3, 0].abs().max() == 0 and gs[0].abs().max() == 0
    assert gx[3:, 0].abs().max() > 0


# --- the Fisher-vector product through time ------------------------------------------------------------------


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("name", ["discrete", "box", "multibinary"])
@pytest.mark.parametrize("form", ["gauss_newton", "hessian"])
def test_fisher_vector_product_through_time_equals_the_hessian_of_the_mean_kl(kind: str, name: str,
                                                                              form: str) -> None:
    torch.manual_seed(1)
    dist = make_distribution(ACTION_SPACES[name])
    actor = Actor(4, dist, (5,), "tanh", init_log_std=-0.3, recurrent=kind, recurrent_hidden=3)
    for p in actor.parameters():  # away from the near-uniform init, so the metric is not trivial
        p.data.add_(0.4 * torch.randn_like(p))
    seq, _ = random_sequences(4, actor.cell.state_dim)
    theta_old, params_of = flat_parameters(actor)
    old = tuple(p.detach() for p in actor(seq))

    def mean_kl(theta: torch.Tensor) -> torch.Tensor:
        return dist.kl(old, params_of(theta, seq)).mean()

    h = hessian(mean_kl)(theta_old)
    damping = 0.01
    if form == "hessian":
        fvp = hessian_fvp(mean_kl, theta_old, damping)
    else:
        fvp = gauss_newton_fvp(autograd_linearization(lambda th: params_of(th, seq), theta_old),
                               dist.fisher_metric_product, damping)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        v = torch.randn(theta_old.shape, generator=gen)
        torch.testing.assert_close(fvp(v), h @ v + damping * v, rtol=1e-5, atol=1e-7)


# --- rollouts and the update --------------------------------------------------------------------------------------


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rollout_log_probs_and_states_equal_the_updates(kind: str) -> None:
    """Stepping the batch's observations again one at a time from the stored states gives back the stored states
    and the batch's log pi_old(a|s), which the update computes through time over sequences; at theta_old the
    update's ratios are exactly 1."""
    agent = TRPO("trpo.pomdp:CueMemory-v0", config=SMALL.replace(recurrent=kind, num_envs=3, steps_per_env=50),
                 seed=4)
    batch = agent.learner.collector_or_new().collect(agent.actor, 50, agent.sample_gen)
    assert batch.states is not None and batch.starts[0].all() and batch.starts.sum() > 3
    state = batch.states[0].numpy()
    steps = []
    for t in range(50):
        np.testing.assert_allclose(state * ~batch.starts[t].numpy()[:, None],
                                   batch.states[t].numpy() * ~batch.starts[t].numpy()[:, None], atol=1e-6)
        with torch.no_grad():
            s = torch.from_numpy(np.where(batch.starts[t].numpy()[:, None], 0.0, state).astype(np.float32))
            params, _, s = agent.actor.step(batch.obs[t], s)
        steps.append(agent.dist.log_prob(params, batch.actions[t]))
        state = s.numpy()
    torch.testing.assert_close(torch.stack(steps), batch.log_probs, rtol=1e-5, atol=1e-6)
    adv = torch.randn(150)
    pb = PolicyBatch.sequential(agent.actor, batch.obs, batch.starts, batch.states, batch.actions,
                                batch.log_probs.reshape(-1), adv, agent.config.recurrent_seq_len)
    with torch.no_grad():
        ratio = (agent.dist.log_prob(agent.actor(pb.inputs), pb.actions) - pb.old_log_probs).exp()
    assert torch.equal(ratio, torch.ones_like(ratio))
    assert sorted(pb.advantages.tolist()) == sorted(adv.tolist())
    agent.close()


def test_acting_carries_the_state_and_resets_it_at_episode_starts() -> None:
    torch.manual_seed(0)
    dist = make_distribution(spaces.Discrete(2))
    actor = Actor(2, dist, (4,), "tanh", 0.0, recurrent="gru", recurrent_hidden=3)
    from trpo.normalization import ObsNormalizer

    acting = snapshot(actor, dist, ObsNormalizer(2, False, 10.0).frozen())
    obs = np.random.default_rng(0).normal(size=(2, 2)).astype(np.float32)
    state = acting.initial_state(2)
    assert state.shape == (2, 3) and not state.any()
    _, s1 = acting.act(obs, state, np.array([True, True]), None)
    _, s2 = acting.act(obs, s1, np.array([True, False]), None)
    np.testing.assert_array_equal(s2[0], s1[0])  # env 0 started again: the same step from the zero state
    assert not np.allclose(s2[1], s1[1])


# --- the API and the CLI ---------------------------------------------------------------------------------------


def test_predict_returns_and_takes_the_state() -> None:
    agent = TRPO("trpo.pomdp:CueMemory-v0", config=SMALL, seed=0)
    cue = np.array([1.0, 0.0], np.float32)
    action, state = agent.predict(cue)
    assert action in (0, 1) and state.shape == (1, 12)
    blank = np.zeros(2, np.float32)
    _, after_cue = agent.predict(blank, state=state)
    _, fresh = agent.predict(blank, state=state, episode_start=True)
    _, from_zero = agent.predict(blank)
    np.testing.assert_array_equal(fresh, from_zero)
    assert not np.allclose(after_cue, from_zero)
    actions, states = agent.predict(np.stack([cue, blank]), state=np.zeros((2, 12)), episode_start=[True, False])
    assert actions.shape == (2,) and states.shape == (2, 12)
    with pytest.raises(ValueError, match=r"state must be the array predict returned, of shape \(1, 12\)"):
        agent.predict(cue, state=np.zeros((1, 5)))
    with pytest.raises(ValueError, match="episode_start must hold one bool per observation"):
        agent.predict(cue, episode_start=[True, False])
    agent.close()


def test_vine_with_a_recurrent_policy_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^sampling .vine. takes feed-forward policies only") as info:
        TRPOConfig(recurrent="gru", sampling="vine")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", list(ACTION_SPACES))
def test_every_action_space_trains_and_round_trips(tmp_path, name: str) -> None:
    space = ACTION_SPACES[name]
    env = lambda: SpacesEnv(spaces.Box(-1, 1, (3,), np.float32), space, horizon=7)  # noqa: E731
    agent = TRPO(env, config=SMALL.replace(recurrent="gru" if name == "box" else "lstm"), seed=2)
    agent.learn(256)
    assert agent.num_updates == 2 and all(np.isfinite(r["kl"]) for r in agent.history)
    agent.save(tmp_path / "a.pt")
    loaded = TRPO.load(tmp_path / "a.pt", env=env)
    obs = np.random.default_rng(0).uniform(-1, 1, (5, 3)).astype(np.float32)
    a1, s1 = agent.predict(obs)
    a2, s2 = loaded.predict(obs)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(s1, s2)
    for a in (agent, loaded):
        a.close()


def test_update_rules_all_take_sequences() -> None:
    for rule in ("trpo", "npg", "pg", "penalty", "ppo"):
        extra = {"kl_penalty": "theory"} if rule == "penalty" else {}
        agent = TRPO("trpo.pomdp:CueMemory-v0", config=SMALL.replace(update_rule=rule, holdout_fraction=0.2,
                                                                     fisher_subsample=2, **extra), seed=1)
        agent.learn(256)
        row = agent.history[-1]
        assert np.isfinite(row["kl"]) and np.isfinite(row["kl_holdout"]), rule
        if rule == "trpo":
            assert row["kl"] <= agent.config.max_kl * 1.0001
        agent.close()


@pytest.mark.numerics
def test_sync_and_subprocess_runs_are_identical() -> None:
    histories = []
    for mode in ("sync", "subprocess"):
        agent = TRPO("trpo.pomdp:CueMemory-v0", config=SMALL.replace(vector_mode=mode, num_envs=3, num_workers=2),
                     seed=3)
        agent.learn(3 * 64 * 3)
        histories.append([{k: v for k, v in r.items() if not k.startswith(("time_", "fps"))} for r in agent.history])
        agent.close()
    assert histories[0] == histories[1]


@pytest.mark.parametrize("in_obs", [False, True])
def test_masked_actions_are_never_taken_by_a_recurrent_policy(in_obs: bool) -> None:
    """MaskedChoiceEnv raises on an invalid action: every rollout and evaluation step must respect the mask."""
    env = lambda: MaskedChoiceEnv(nvec=(6, 4), in_obs=in_obs)  # noqa: E731
    agent = TRPO(env, config=SMALL.replace(recurrent="gru", vector_mode="subprocess", num_workers=2), seed=0)
    agent.learn(256)
    assert agent.evaluate(2)["mean_length"] == 20
    agent.close()


def test_an_image_policy_with_memory_trains_in_every_mode_alike() -> None:
    histories = []
    for mode in ("sync", "subprocess"):
        agent = TRPO(PixelSideEnv, config=SMALL.replace(vector_mode=mode, num_workers=2), seed=1)
        assert isinstance(agent.actor.body, ConvBody) and agent.actor.cell is not None
        agent.learn(256)
        histories.append([{k: v for k, v in r.items() if not k.startswith(("time_", "fps"))} for r in agent.history])
        agent.close()
    assert histories[0] == histories[1]


def test_cli_trains_checkpoints_resumes_and_evaluates_a_recurrent_run(tmp_path) -> None:
    run = tmp_path / "run"
    args = ["--env", "trpo.pomdp:CueMemory-v0", "--recurrent", "lstm", "--recurrent-hidden", "8",
            "--recurrent-seq-len", "16", "--num-envs", "2", "--steps-per-env", "128", "--value-epochs", "2",
            "--eval-episodes", "2", "--no-progress"]
    first = trpo_cli("train", *args, "--total-steps", "512", "--run-dir", str(run), "--checkpoint-every", "1")
    assert first.returncode == 0, first.stderr
    record = yaml.safe_load((run / "config.yaml").read_text())
    assert record["recurrent"] == "lstm" and record["recurrent_seq_len"] == 16
    res = trpo_cli("train", "--resume", str(run), "--total-steps", "1024", "--no-progress")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3, 4] and rows[-1]["step"] == 1024
    ev = trpo_cli("eval", str(run), "--episodes", "3")
    assert ev.returncode == 0 and "mean return" in ev.stdout, ev.stderr
    loaded = TRPO.load(run / "final.pt")
    assert loaded.config.recurrent == "lstm" and loaded.actor.cell is not None
    loaded.close()


@pytest.mark.slow
def test_only_the_recurrent_policy_learns_the_memory_task() -> None:
    """CueMemory: the reward depends on the first observation of the episode; feed-forward TRPO cannot do better
    than chance (expected return 0). Calibrated on seeds 0-4 at this budget (50 evaluation episodes): the LSTM
    scored 1.00 on all five, feed-forward between -0.24 and 0.04 (a chance mean of 50 episodes has std 0.14).
    Thresholds 0.9 and 0.5 leave margin on both sides."""
    cfg = TRPOConfig(num_envs=2, steps_per_env=512, recurrent="lstm", recurrent_hidden=16, recurrent_seq_len=16,
                     value_minibatch=256, value_epochs=5, eval_episodes=50)
    agent = TRPO("trpo.pomdp:CueMemory-v0", config=cfg, seed=0)
    agent.learn(MEMORY_STEPS)
    recurrent = agent.evaluate(50)["mean_return"]
    agent.close()
    flat = TRPO("trpo.pomdp:CueMemory-v0", config=cfg.replace(recurrent="none"), seed=0)
    flat.learn(MEMORY_STEPS)
    feed_forward = flat.evaluate(50)["mean_return"]
    flat.close()
    assert recurrent >= 0.9, recurrent
    assert feed_forward <= 0.5, feed_forward


def test_the_no_velocity_tasks_hide_exactly_the_velocities() -> None:
    import gymnasium as gym

    for env_id, hidden in (("CartPoleNoVel-v1", (1, 3)), ("PendulumNoVel-v1", (2,)),
                           ("MountainCarContinuousNoVel-v0", (1,))):
        env, full = gym.make(env_id), gym.make(env_id.replace("NoVel", ""))
        obs, _ = env.reset(seed=3)
        ref, _ = full.reset(seed=3)
        for _ in range(5):
            action = env.action_space.sample()
            obs, *_ = env.step(action)
            ref, *_ = full.step(action)
        shown = [i for i in range(len(ref)) if i not in hidden]
        assert (obs[list(hidden)] == 0).all() and ref[list(hidden)].any()
        np.testing.assert_array_equal(obs[shown], ref[shown])
        assert env.observation_space == full.observation_space
    with pytest.raises(ValueError, match="pass indices= for 'Acrobot-v1'"):
        pomdp.HideVelocity(gym.make("Acrobot-v1"))
