"""A fast learning test. The multi-seed check at full budgets is benchmarks/learning.py (see the README)."""

from __future__ import annotations

from trpo import TRPO


def test_cartpole_learns_within_20k_steps() -> None:
    # Calibration (CartPole preset, deterministic 10-episode evaluation after 20,480 steps, seeds 0-5, on the
    # 2-core development machine, 2026-11-22): 392.3, 500, 491.7, 270.2, 461.1, 437.6; every step accepted.
    # (Before the preset's Fisher subsampling: 441.4, 402.6, 494.9, 500, 441.4, 235.7 here, and 478.7, 370.1,
    # 478.8, 500, 452.2, 243.4 on another machine: float rounding differs across CPUs.) A random policy scores
    # about 20. Threshold 100 leaves margin below the worst seed while failing any broken update (sign errors, a
    # step rejected every time).
    agent = TRPO("CartPole-v1", seed=0)
    agent.learn(20_000)
    result = agent.evaluate(10)
    agent.close()
    assert sum(row["step_accepted"] for row in agent.history) >= 0.8 * len(agent.history)
    assert result["mean_return"] >= 100, result
