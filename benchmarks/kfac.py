"""K-FAC against conjugate gradient: the policy step's time per update (the `time_policy` metric) of TRPO with
natural_gradient 'cg', 'kfac' and 'kfac_cg' (trpo/kfac.py), on the paper's CNN (MinAtar/Breakout-v1) and a deep
MLP (Hopper-v5 with actor_hidden 256,256,256), each on its preset otherwise.

    pip install -e ".[bench]"                                  # MinAtar and MuJoCo
    .venv/bin/python benchmarks/kfac.py                        # both scenarios, 6 updates each, all methods
    .venv/bin/python benchmarks/kfac.py --scenario breakout --updates 10 --seed 1
    .venv/bin/python benchmarks/kfac.py --scenario breakout --methods cg kfac --rounds 5   # on a busy machine
    .venv/bin/python benchmarks/kfac.py --scenario humanoid-deep --methods cg kfac kfac-s1 kfac-s4 --rounds 3

Each (scenario, method) trains in a fresh subprocess (one torch thread, envs stepped in that process). The first
update is left out of the means (imports, allocator warm-up). Printed per method: mean and median seconds of the
policy step, the ratio cg / method, CG's iterations, the `cg_residual` metric over ||g|| (for kfac, of the
direction alone: min_c ||g - c (F + lambda I) x|| / ||g||; how far from the damped natural gradient it points),
the accepted share and mean KL of the steps, and the mean episode return over the updates (a few updates: a smoke
figure, not a learning curve; returns need benchmarks/learning.py). The timings are only comparable within one
invocation on one machine: run it on an otherwise idle one, or with --rounds R, which runs the methods R times in
turn (cg, kfac, ..., cg, kfac, ...) and prints the median over rounds of each round's ratio cg / method, so that a
load that drifts during the invocation falls on every method alike; the other columns are then means over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "breakout": ("MinAtar/Breakout-v1", {}),
    "hopper-deep": ("Hopper-v5", {"actor_hidden": (256, 256, 256), "vector_mode": "sync"}),
    "humanoid-deep": ("Humanoid-v5", {"actor_hidden": (256, 256, 256), "critic_hidden": (256, 256, 256),
                                      "vector_mode": "sync"}),
}
# method -> overrides: the three directions at the preset's cg_iters, K-FAC-preconditioned CG cut to 8 iterations
# (does the preconditioner buy the same residual for fewer products?), and K-FAC with sampled G factors
# (kfac_samples: 1 and 4 random projections of the metric's root instead of one backward pass per head output),
# and CG (plain, and K-FAC-preconditioned) on exact products from K-FAC's kept output gradients (fisher_product
# 'layerwise': the same steps as cg's and kfac_cg's, to float rounding)
METHODS: dict[str, dict[str, Any]] = {
    "cg": {"natural_gradient": "cg"},
    "cg-lw": {"natural_gradient": "cg", "fisher_product": "layerwise"},
    "kfac_cg-lw": {"natural_gradient": "kfac_cg", "fisher_product": "layerwise"},
    "kfac": {"natural_gradient": "kfac"},
    "kfac_cg": {"natural_gradient": "kfac_cg"},
    "kfac_cg8": {"natural_gradient": "kfac_cg", "cg_iters": 8},
    "kfac-s1": {"natural_gradient": "kfac", "kfac_samples": 1},
    "kfac-s4": {"natural_gradient": "kfac", "kfac_samples": 4},
}


def run(env_id: str, overrides: dict[str, Any], method: str, updates: int, seed: int) -> list[dict[str, Any]]:
    """One training run of `updates` updates in this process; its metrics rows."""
    from trpo import TRPO

    agent = TRPO(env_id, seed=seed, **overrides, **METHODS[method])  # the env's preset, then the overrides
    agent.learn(updates * agent.config.batch_size)
    rows = list(agent.history)
    agent.close()
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rows = rows[1:] if len(rows) > 1 else rows
    times = [r["time_policy"] for r in rows]
    returns = [r["episode_return_mean"] for r in rows if r["episode_return_mean"] is not None]
    return {"mean": statistics.fmean(times), "median": statistics.median(times),
            "cg_iterations": statistics.fmean(r["cg_iterations"] for r in rows),
            "relative_residual": statistics.fmean(r["cg_residual"] / r["grad_norm"] for r in rows if r["grad_norm"]),
            "accepted": statistics.fmean(float(r["step_accepted"]) for r in rows),
            "kl": statistics.fmean(r["kl"] for r in rows),
            "return": statistics.fmean(returns) if returns else float("nan"), "updates": len(rows)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=list(SCENARIOS), action="append")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="run the methods this many times in turn")
    parser.add_argument("--child", nargs=2, metavar=("SCENARIO", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        scenario, method = args.child
        env_id, overrides = SCENARIOS[scenario]
        print(json.dumps(summary(run(env_id, overrides, method, args.updates, args.seed))))
        return
    for scenario in args.scenario or list(SCENARIOS):
        print(f"{scenario} ({SCENARIOS[scenario][0]}), {args.updates} updates, seed {args.seed}:")
        rounds: list[dict[str, dict[str, Any]]] = []
        for _ in range(args.rounds):
            rounds.append({})
            for method in args.methods:
                out = subprocess.run([sys.executable, __file__, "--child", scenario, method, "--updates",
                                      str(args.updates), "--seed", str(args.seed)], capture_output=True, text=True,
                                     check=True)
                rounds[-1][method] = json.loads(out.stdout.strip().splitlines()[-1])
        results = {m: {k: statistics.fmean(r[m][k] for r in rounds) for k in rounds[0][m]} for m in args.methods}
        print(f"  {'method':8} {'policy s':>9} {'median':>8} {'cg/this':>8} {'CG its':>7} {'|r|/|g|':>8} "
              f"{'accepted':>8} {'KL':>8} {'return':>8}")
        for method, r in results.items():
            ratios = [one["cg"]["mean"] / one[method]["mean"] for one in rounds if "cg" in one]
            ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
            print(f"  {method:8} {r['mean']:9.3f} {r['median']:8.3f} {ratio:>8} {r['cg_iterations']:7.1f} "
                  f"{r['relative_residual']:8.3f} {r['accepted']:8.2f} {r['kl']:8.4f} {r['return']:8.1f}")


if __name__ == "__main__":
    main()
