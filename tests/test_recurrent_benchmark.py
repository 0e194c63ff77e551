"""benchmarks/recurrent.py runs RecurrentPPO with rl-zoo's own ppo_lstm.yml entries, read from the installed
rl_zoo3 (a hand copy had lost their normalization and network before)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_recurrent_ppo_takes_rl_zoos_entries_as_they_are() -> None:
    if importlib.util.find_spec("rl_zoo3") is None:
        pytest.skip("rl_zoo3 is not installed")
    import gymnasium
    import recurrent
    from torch import nn

    cart = recurrent.zoo_lstm_settings(recurrent.TASKS["CartPoleNoVel-v1"][3])
    assert cart["normalize"] is True and cart["n_envs"] == 8 and cart["n_steps"] == 32
    assert cart["policy_kwargs"] == {"ortho_init": False, "activation_fn": nn.ReLU, "lstm_hidden_size": 64,
                                     "enable_critic_lstm": True, "net_arch": {"pi": [64], "vf": [64]}}
    car = recurrent.zoo_lstm_settings(recurrent.TASKS["MountainCarContinuousNoVel-v0"][3])
    assert car["n_envs"] == 8 and car["n_steps"] == 1024 and car["policy_kwargs"]["lstm_hidden_size"] == 32
    for entry in {task[3] for task in recurrent.TASKS.values()}:
        settings = recurrent.zoo_lstm_settings(entry)
        assert "policy" not in settings and "n_timesteps" not in settings and isinstance(settings["normalize"], bool)
    # Reading rl-zoo's files does not import rl_zoo3, whose import patches Gymnasium's TimeLimit in the whole
    # process (the vine tests that ran after it in one worker failed on the patched wrapper).
    assert gymnasium.wrappers.TimeLimit.__name__ == "TimeLimit"
