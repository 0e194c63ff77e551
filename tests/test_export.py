"""trpo export: TorchScript and ONNX policies whose actions equal predict(obs, deterministic=True) on 1,000
observations, for every action space, masks, images, recurrent policies (with their state) and gSDE; and the CLI."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from clitools import cli
from gymnasium import spaces
from test_cli import trained_run
from trpo_testenvs import MaskedChoiceEnv, PixelSideEnv, SpacesEnv

from trpo import TRPO, ExportError, TRPOConfig
from trpo.export import export

ort = pytest.importorskip("onnxruntime")

SMALL = TRPOConfig(num_envs=2, steps_per_env=64, actor_hidden=(8,), critic_hidden=(8,), cg_iters=5, value_epochs=1,
                   eval_episodes=1)
BOX_OBS = spaces.Box(-2.0, 2.0, (3,), np.float32)
DICT_OBS = spaces.Dict({"pos": spaces.Box(-1, 1, (2, 2), np.float32),
                        "inner": spaces.Dict({"mode": spaces.Discrete(3, start=1), "v": spaces.Box(0, 5, (1,))})})
CASES = {
    "box-normalized": (lambda: SpacesEnv(BOX_OBS, spaces.Box(-0.5, 0.4, (2,), np.float32)), {"normalize_obs": True}),
    "discrete-start": (lambda: SpacesEnv(BOX_OBS, spaces.Discrete(4, start=-1)), {}),
    "multidiscrete": (lambda: SpacesEnv(BOX_OBS, spaces.MultiDiscrete([3, 2], start=[1, 0])), {}),
    "multibinary": (lambda: SpacesEnv(BOX_OBS, spaces.MultiBinary(3)), {}),
    "masked-info": (lambda: MaskedChoiceEnv(nvec=(6, 4)), {}),
    "masked-dict": (lambda: MaskedChoiceEnv(nvec=(6,), in_obs=True), {}),
    "image": (functools.partial(PixelSideEnv, channels_last=True), {}),
    "recurrent": (lambda: SpacesEnv(BOX_OBS, spaces.Discrete(3)), {"recurrent": "gru", "normalize_obs": True}),
    "sde": (lambda: SpacesEnv(BOX_OBS, spaces.Box(-1, 1, (2,), np.float32)), {"use_sde": True}),
    "discrete-obs": (lambda: SpacesEnv(spaces.Discrete(5, start=2), spaces.Discrete(3)), {}),
    "dict-obs": (lambda: SpacesEnv(DICT_OBS, spaces.Box(-1, 1, (2,), np.float32)), {"normalize_obs": True}),
    "dict-recurrent": (lambda: SpacesEnv(DICT_OBS, spaces.Discrete(3)), {"recurrent": "lstm"}),
}


def leaves(space: spaces.Space, n: int) -> tuple[Any, list[np.ndarray]]:
    """n observations of `space` as predict takes them (a Dict of batches) and as the exported inputs (one per
    leaf, in the space's order)."""
    if isinstance(space, spaces.Dict):
        parts = {key: leaves(sub, n) for key, sub in space.spaces.items()}
        return {k: batch for k, (batch, _) in parts.items()}, [x for _, xs in parts.values() for x in xs]
    obs = np.stack([space.sample() for _ in range(n)])
    return obs, [obs]


def observations(agent: TRPO, n: int, seed: int = 0) -> tuple[Any, list[np.ndarray], np.ndarray | None]:
    """n observations of the agent's env (without a Dict's mask) for predict and as the exported inputs, and for a
    masked env n masks allowing >= 1 per group."""
    agent.encoder.features.seed(seed)
    obs, inputs = leaves(agent.encoder.features, n)
    if not agent.encoder.mask_dim:
        return obs, inputs, None
    rng = np.random.default_rng(seed)
    masks = (rng.random((n, agent.encoder.mask_dim)) < 0.5).astype(np.int8)
    for lo, hi in agent.encoder.mask_groups:
        masks[np.arange(n), lo + rng.integers(0, hi - lo, n)] = 1
    return obs, inputs, masks


def predicted(agent: TRPO, obs: np.ndarray, masks: np.ndarray | None, state: np.ndarray | None = None):
    if masks is not None and agent.encoder.mask_from == "obs":
        return agent.predict({**obs, "action_mask": masks}, state=state)
    return agent.predict(obs, state=state, action_mask=masks)


def run_exported(path: Path, fmt: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    if fmt == "torchscript":
        out = torch.jit.load(str(path))(*(torch.as_tensor(x) for x in inputs))
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]
    session = ort.InferenceSession(str(path))
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs, strict=True)))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("case", list(CASES))
def test_exported_actions_equal_predict(tmp_path: Path, case: str, fmt: str) -> None:
    env, fields = CASES[case]
    agent = TRPO(env, config=SMALL.replace(**fields), seed=1)
    agent.learn(128)  # a trained policy and moved normalization statistics
    path = export(agent, tmp_path / f"policy.{fmt}", fmt)
    obs, inputs, masks = observations(agent, 1000)
    inputs += [masks.astype(np.float32)] if masks is not None else []
    expected, state = predicted(agent, obs, masks)
    if agent.actor.cell is not None:  # a step from the zero state, then one from the state it returned
        outs = run_exported(path, fmt, [*inputs, np.zeros((1000, agent.actor.cell.state_dim), np.float32)])
        np.testing.assert_array_equal(outs[0], expected)  # discrete actions: equal whatever the rounding
        np.testing.assert_allclose(outs[1], state, rtol=1e-5, atol=1e-6)
        obs, inputs, _ = observations(agent, 1000, seed=1)
        again, _ = agent.predict(obs, state=state)
        outs = run_exported(path, fmt, [*inputs, outs[1]])
        np.testing.assert_array_equal(outs[0], again)
    else:
        (actions,) = run_exported(path, fmt, inputs)
        assert actions.dtype == expected.dtype and actions.shape == expected.shape
        if fmt == "onnx" and actions.dtype.kind == "f":  # onnxruntime's matmuls round otherwise than torch's
            np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(actions, expected)
    agent.close()


def test_cli_exports_a_run_and_refuses_what_it_cannot(tmp_path: Path) -> None:
    run = trained_run(tmp_path, "Pendulum-v1", 512, "--num-envs", "2")
    out = tmp_path / "pendulum.onnx"
    res = cli("export", str(run), "--checkpoint", "final", "--format", "onnx", "--out", str(out))
    assert res.returncode == 0 and out.is_file() and "exported as onnx" in res.stdout, res.stderr
    agent = TRPO.load(run)
    obs = np.random.default_rng(0).uniform(-1, 1, (50, 3)).astype(np.float32)
    np.testing.assert_allclose(run_exported(out, "onnx", [obs])[0], agent.predict(obs)[0], rtol=1e-5, atol=1e-6)
    agent.close()
    # Without --format, the name says which: .onnx is ONNX (it was TorchScript under an .onnx name), else TorchScript.
    by_name = cli("export", str(run), "--checkpoint", "final", "--out", str(tmp_path / "named.ONNX"))
    assert by_name.returncode == 0 and "exported as onnx" in by_name.stdout, by_name.stderr
    np.testing.assert_allclose(run_exported(tmp_path / "named.ONNX", "onnx", [obs])[0],
                               run_exported(out, "onnx", [obs])[0])
    other = cli("export", str(run), "--checkpoint", "final", "--out", str(tmp_path / "policy.pt"))
    assert other.returncode == 0 and "exported as torchscript" in other.stdout, other.stderr
    bad = cli("export", str(run), "--format", "tflite", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    agent = TRPO(lambda: SpacesEnv(spaces.Discrete(5), spaces.Discrete(2)), config=SMALL)
    with pytest.raises(ExportError, match="format must be one of torchscript, onnx"):
        export(agent, tmp_path / "d.pt", "tflite")
    agent.close()


def test_dict_inputs_are_named_by_their_keys(tmp_path: Path) -> None:
    agent = TRPO(lambda: SpacesEnv(DICT_OBS, spaces.Discrete(3)), config=SMALL.replace(recurrent="gru"))
    session = ort.InferenceSession(str(export(agent, tmp_path / "p.onnx", "onnx")))
    # In the space's order (Gymnasium sorts a Dict's keys), then the state.
    assert [i.name for i in session.get_inputs()] == ["obs.inner.mode", "obs.inner.v", "obs.pos", "state"]
    assert [o.name for o in session.get_outputs()] == ["action", "next_state"]
    agent.close()


def test_a_file_that_cannot_be_written_is_one_line_in_both_formats(tmp_path: Path) -> None:
    run = trained_run(tmp_path, "CartPole-v1")
    unwritable = Path("/sys/policy") if os.geteuid() == 0 else tmp_path / "read-only" / "policy"  # root writes anywhere
    if os.geteuid() != 0:
        unwritable.parent.mkdir(mode=0o555)
    cases = [(tmp_path / "no-such-dir" / "policy", "No such file or directory"), (tmp_path, "Is a directory"),
             (unwritable, "Permission denied")]
    for fmt, suffix in (("torchscript", ".pt"), ("onnx", ".onnx")):
        for out, why in cases:
            target = out if out.is_dir() else out.with_suffix(suffix)
            res = cli("export", str(run), "--format", fmt, "--out", str(target))
            assert res.returncode == 2 and res.stderr == f"trpo: error: {why}: {str(target)!r}\n", (fmt, res.stderr)
