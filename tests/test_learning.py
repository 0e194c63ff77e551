"""A fast learning test. The multi-seed check at full budgets is benchmarks/learning.py (see the README)."""

from __future__ import annotations

from trpo import TRPO


def test_cartpole_learns_within_20k_steps() -> None:
    # Calibration (CartPole preset, deterministic 10-episode evaluation after 20,480 steps, seeds 0-5):
    # 478.7, 370.1, 478.8, 500, 452.2, 243.4. A random policy scores about 20. Threshold 100 leaves margin below the
    # worst seed while failing any broken update (sign errors, a step rejected every time).
    agent = TRPO("CartPole-v1", seed=0)
    agent.learn(20_000)
    result = agent.evaluate(10)
    agent.close()
    assert sum(row["step_accepted"] for row in agent.history) >= 0.8 * len(agent.history)
    assert result["mean_return"] >= 100, result
