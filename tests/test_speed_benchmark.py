"""benchmarks/speed.py's own pieces, at toy sizes (the figures themselves come from running it, never from tests):
the CNN policy step runs with and without the Jacobian, the recurrent value fit both ways, and the start-up probe stamps
the first env step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.mark.parametrize("jacobian", [True, False])
def test_the_cnn_policy_step_runs_either_way(jacobian: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import speed

    import trpo.update_rules as rules

    monkeypatch.setattr(rules, "conv_linearization", rules.conv_linearization)  # cnn_step may replace it
    seconds = speed.cnn_step(2, jacobian, samples=4)
    assert 0 < seconds < 60


def test_the_probe_stamps_its_first_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mujoco")
    import first_step_probe  # noqa: F401  (registers ProbeHopper-v5)
    import gymnasium as gym

    stamp = tmp_path / "first"
    monkeypatch.setenv("TRPO_FIRST_STEP", str(stamp))
    env = gym.make("ProbeHopper-v5")
    env.reset(seed=0)
    assert not stamp.exists()
    env.step(env.action_space.sample())
    first = float(stamp.read_text())
    env.step(env.action_space.sample())
    assert float(stamp.read_text()) == first  # only the first step writes
    env.close()


def test_the_recurrent_fit_runs_both_ways() -> None:
    import speed

    for kind in ("lstm", "gru"):
        r = speed.recurrent_fit(kind, sequences=2, length=4, reps=1, calls=1)
        assert set(r) == {"written_out", "autograd"} and all(v > 0 for v in r.values())
