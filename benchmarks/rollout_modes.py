"""Rollout backends side by side: env steps/s with sync, subprocess, Ray and envpool (1 and 2 workers or threads;
`--modes` picks some), the payload sent each way per update, and the numbers of the scaling model in docs/ray.md.

    pip install -e ".[ray,mujoco]"
    .venv/bin/python benchmarks/rollout_modes.py                   # Hopper-v5 and CartPole-v1 presets
    .venv/bin/python benchmarks/rollout_modes.py --env CartPole-v1 --updates 40 --json runs/modes.json
    .venv/bin/python benchmarks/rollout_modes.py --env ALE/Pong-v5 --modes subprocess:2 envpool:2 \
        --set num_envs=4 steps_per_env=256 --updates 4     # an env without preset: its settings here

Each run trains the env's preset (only the rollout backend changed) in a fresh subprocess for `--updates` policy
updates (every mode but envpool, whose envs are its own, gives the same run). Steps/s counts updates 2.. only, so
that process, worker and Ray start-up are left out; the phase times are the means of the same updates (with workers,
`rollout` is the time the learner waited for the batch, which was collected during the value fit). The payload is
what is pickled: to each worker the numpy policy, the frozen observation statistics and its share of the batch's
noise; back, its segment of the batch. The scaling model takes the sync run's phase times: collection c (all envs
stepped by one process), policy step p, value fit v; with N workers and the next batch collected during the value
fit, an update takes about p + max(v, c / N + transfer), so steps/s stops growing at N* = c / v workers.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

MODES = [("sync", 0), ("subprocess", 1), ("subprocess", 2), ("ray", 1), ("ray", 2), ("envpool", 1), ("envpool", 2)]


def run_mode(env_id: str, mode: str, workers: int, updates: int, seed: int,
             fields: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch

    from trpo import TRPO

    torch.set_num_threads(1)
    agent = TRPO(env_id, seed=seed, **(fields or {}), vector_mode=mode, num_workers=workers)
    batch = agent.config.num_envs * agent.config.steps_per_env
    agent.learn(updates * batch)
    rows = agent.history[1:]
    agent.close()
    seconds = sum(r["time_rollout"] + r["time_policy"] + r["time_value"] for r in rows)
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    return dict(steps_per_s=len(rows) * batch / seconds, rollout=mean("time_rollout"), policy=mean("time_policy"),
                value=mean("time_value"), batch=batch, return_last=rows[-1]["episode_return_mean"])


def payload(env_id: str, workers: int, seed: int, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pickled bytes per update to and from all workers, and the time one process takes to collect the batch."""
    import numpy as np
    import torch

    from trpo import TRPO

    torch.set_num_threads(1)
    agent = TRPO(env_id, seed=seed, **(fields or {}), vector_mode="sync")
    collector = agent.learner.collector_or_new()
    collector.start(agent.actor, agent.config.steps_per_env, agent.sample_gen)
    pending = collector._pending
    assert pending is not None
    shares = np.array_split(np.arange(agent.config.num_envs), workers)
    sent = sum(len(pickle.dumps((pending.acting, pending.noise[:, s[0]:s[-1] + 1]))) for s in shares)
    t0 = time.perf_counter()
    segment = collector.runner.run(pending.acting, pending.noise)  # type: ignore[attr-defined]
    collect = time.perf_counter() - t0
    back = len(pickle.dumps(segment))  # the shares' segments add up to about the whole batch's
    policy = len(pickle.dumps(pending.acting))
    agent.close()
    return dict(bytes_to_workers=sent, bytes_back=back, policy_bytes=policy, collect_one_process=collect)


def in_subprocess(fn: Any, *args: Any) -> Any:
    with ProcessPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description="steps/s and payload of the rollout backends")
    parser.add_argument("--env", nargs="+", default=["Hopper-v5", "CartPole-v1"])
    parser.add_argument("--updates", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--modes", nargs="+", default=[f"{m}:{w}" for m, w in MODES],
                        help="MODE:WORKERS (envpool: its threads), default all; the first is the baseline")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="config fields for every run, as for trpo train (num_envs=4 for an env without preset)")
    args = parser.parse_args()
    if args.updates < 2:  # steps/s counts updates 2.. (the first holds the start-up)
        parser.error(f"--updates must be at least 2, got {args.updates}")
    from trpo.bench import field_values
    from trpo.config import coerce_fields

    fields = coerce_fields(field_values(args.set))
    modes = [(m, int(w)) for m, w in (item.split(":") for item in args.modes)]
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}, "
          f"{args.updates} updates per run (steps/s over updates 2..)")
    results: dict[str, Any] = {}
    for env_id in args.env:
        runs = {f"{m}:{w}": in_subprocess(run_mode, env_id, m, w, args.updates, args.seed, fields)
                for m, w in modes}
        sizes = {w: in_subprocess(payload, env_id, w, args.seed, fields) for w in (1, 2)}
        base = runs[args.modes[0]]
        print(f"\n## {env_id} (batch {base['batch']})")
        print(f"{'mode':<14}{'steps/s':>9}{'x base':>8}{'rollout s':>11}{'policy s':>10}{'value s':>9}")
        for name, r in runs.items():
            print(f"{name:<14}{r['steps_per_s']:>9.0f}{r['steps_per_s'] / base['steps_per_s']:>8.2f}"
                  f"{r['rollout']:>11.4f}{r['policy']:>10.4f}{r['value']:>9.4f}")
        for w, s in sizes.items():
            print(f"payload, {w} worker(s): to workers {s['bytes_to_workers'] / 1e3:.1f} kB per update "
                  f"(policy {s['policy_bytes'] / 1e3:.1f} kB each), back {s['bytes_back'] / 1e3:.1f} kB")
        c, p, v = sizes[1]["collect_one_process"], base["policy"], base["value"]
        print(f"model: collection c = {c:.3f} s (one process), policy step p = {p:.3f} s, value fit v = {v:.3f} s; "
              f"N* = c / v = {c / v:.1f} workers; ceiling {base['batch'] / (p + v):.0f} steps/s")
        results[env_id] = dict(runs=runs, payload=sizes, model=dict(c=c, p=p, v=v))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
