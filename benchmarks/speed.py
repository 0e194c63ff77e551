"""Speed benchmark: trpo against sb3-contrib's TRPO in the same invocation, on the same settings.

    pip install -e ".[bench]"          # sb3-contrib and MuJoCo
    .venv/bin/python benchmarks/speed.py                    # all scenarios
    .venv/bin/python benchmarks/speed.py --scenario cartpole --updates 20

For each scenario, each library trains in a fresh subprocess (so imports, memory and threads do not leak between
them) and the benchmark prints: env steps/s end to end (construction excluded, everything inside learn()
included), mean seconds per update phase (rollout, policy step = gradient + CG + line search, value fit), peak
resident memory of the process tree, and the ratio trpo / sb3-contrib. It also prints the bare env-step rate
with both cores stepping random actions: the physical limit, and the fraction of it each library reaches.

sb3-contrib's phases are timed by wrapping its collect_rollouts() and train(); the value fit starts at the
first predict_values() call inside train(). Both libraries run with torch.set_num_threads(1), on the CPU. With
worker processes trpo collects the next batch during its value fit, so its "rollout" is the time left waiting.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trpo.peers import ZOO, ZOO_MUJOCO  # rl-zoo's sb3-contrib TRPO settings

SB3_MUJOCO, SB3_CARTPOLE = ZOO_MUJOCO, ZOO["CartPole"]


@dataclass
class Scenario:
    name: str
    env_id: str
    sb3: dict[str, Any]
    trpo: dict[str, Any]  # overrides on top of trpo's preset for env_id
    note: str
    updates: int
    extra: dict[str, Any] = field(default_factory=dict)


def hopper_like_for_like() -> dict[str, Any]:
    # The same settings as sb3 (rl-zoo). sb3-contrib's KL is a mean over Hopper's 3 action dimensions, so its
    # Fisher matrix is F / 3 and it solves (F / 3 + 0.1 I) x = g, i.e. (F + 0.3 I) x = 3 g: on trpo's joint KL
    # that is max_kl 0.01 x 3 and cg_damping 0.1 x 3. Everything else as sb3: sync envs in one process.
    return dict(num_envs=2, steps_per_env=1024, value_minibatch=128, gamma=0.99, gae_lambda=0.95, cg_iters=25,
                cg_damping=0.3, value_epochs=20, value_lr=1e-3, max_kl=0.03, normalize_obs=True,
                normalize_reward=True, vector_mode="sync", fisher_subsample=1)


SCENARIOS = {
    "hopper-preset": Scenario("Hopper-v5, trpo's shipped preset vs sb3-contrib rl-zoo settings", "Hopper-v5",
                              SB3_MUJOCO, {}, "trpo: its Hopper preset as shipped", updates=15),
    "hopper-like": Scenario("Hopper-v5, like for like (rl-zoo MuJoCo settings on both)", "Hopper-v5", SB3_MUJOCO,
                            hopper_like_for_like(),
                            "trpo: same settings; max_kl 0.03 and cg_damping 0.3 on the joint KL = sb3's 0.01 and "
                            "0.1 on the per-dimension mean",
                            updates=15),
    "hopper-like-workers": Scenario("Hopper-v5, like for like, trpo's envs in worker processes", "Hopper-v5",
                                    SB3_MUJOCO, {**hopper_like_for_like(), "vector_mode": "subprocess"},
                                    "trpo: the settings above; its 2 envs in 2 worker processes, which collect the "
                                    "next batch during the value fit", updates=15),
    "hopper-preset-1worker": Scenario("Hopper-v5, trpo's shipped preset with both envs in one worker process",
                                      "Hopper-v5", SB3_MUJOCO, {"num_workers": 1},
                                      "trpo: its Hopper preset, num_workers 1 (the preset: one worker per env, at most "
                                      "one per core)", updates=15),
    "halfcheetah-preset": Scenario("HalfCheetah-v5, trpo's shipped preset vs sb3-contrib rl-zoo settings",
                                   "HalfCheetah-v5", ZOO["HalfCheetah"], {}, "trpo: its HalfCheetah preset as shipped",
                                   updates=15),
    "cartpole-preset": Scenario("CartPole-v1, trpo's shipped preset vs sb3-contrib rl-zoo settings", "CartPole-v1",
                                SB3_CARTPOLE, {}, "trpo: its CartPole preset as shipped", updates=40),
    "cartpole-like": Scenario("CartPole-v1, like for like (rl-zoo CartPole settings on both)", "CartPole-v1",
                              SB3_CARTPOLE, dict(num_envs=2, steps_per_env=512, value_minibatch=512, gae_lambda=0.98,
                                                 cg_damping=1e-3, value_epochs=20, cg_iters=15, vector_mode="sync",
                                                 num_workers=0, fisher_subsample=1),
                              "trpo: same settings", updates=40),
}


# --- measurement helpers ---------------------------------------------------------------------------------


class PeakRSS:
    """Samples the memory of this process and all its descendants every 250 ms; keeps the peak. Memory is the
    proportional set size (PSS: each shared page divided among the processes sharing it), so forked env
    workers are not charged again for the pages they share with their parent; RSS where PSS is unavailable."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _tree_rss(pid: int) -> int:
        total, stack = 0, [pid]
        while stack:
            p = stack.pop()
            try:
                total += PeakRSS._pss(p)
                for task in os.listdir(f"/proc/{p}/task"):
                    with open(f"/proc/{p}/task/{task}/children") as fh:
                        stack.extend(int(c) for c in fh.read().split())
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        return total

    @staticmethod
    def _pss(pid: int) -> int:
        for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
            try:
                with open(path) as fh:
                    for line in fh:
                        if line.startswith(key):
                            return int(line.split()[1]) * 1024
            except FileNotFoundError:
                continue
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss(os.getpid()))
            time.sleep(0.25)  # reading smaps_rollup walks page tables: sample rarely so as not to slow the run

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._tree_rss(os.getpid()))


def run_trpo(env_id: str, overrides: dict[str, Any], updates: int, seed: int) -> dict[str, Any]:
    import torch

    from trpo import TRPO
    from trpo.resolve import resolve_config

    torch.set_num_threads(1)
    config, _ = resolve_config(env_id, "auto", overrides=overrides)
    steps = config.batch_size * updates
    with PeakRSS() as mem:
        agent = TRPO(env_id, config=config, seed=seed)
        start = time.perf_counter()
        agent.learn(steps)
        seconds = time.perf_counter() - start
        agent.close()
    hist = agent.history
    # Steady state: the updates after the first three (worker start-up, first batches, allocator warm-up).
    steady = hist[3:] or hist
    return {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds, "peak_rss": mem.peak,
            "steady_steps_per_s": len(steady) / sum(1 / r["fps"] for r in steady),
            "rollout": sum(r["time_rollout"] for r in hist) / len(hist),
            "policy": sum(r["time_policy"] for r in hist) / len(hist),
            "value": sum(r["time_value"] for r in hist) / len(hist),
            "config": {k: v for k, v in config.to_dict().items() if k in (
                "num_envs", "steps_per_env", "vector_mode", "cg_iters", "value_epochs", "value_minibatch",
                "max_kl", "fisher_product", "fisher_subsample", "num_workers")}}


def run_sb3(env_id: str, settings: dict[str, Any], updates: int, seed: int) -> dict[str, Any]:
    import torch
    from sb3_contrib import TRPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)
    s = dict(settings)
    n_envs, normalize = s.pop("n_envs"), s.pop("normalize")
    steps = n_envs * s["n_steps"] * updates
    with PeakRSS() as mem:
        env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
        if normalize:
            env = VecNormalize(env, gamma=s["gamma"])
        model = TRPO("MlpPolicy", env, seed=seed, device="cpu", **s)
        phases = {"rollout": 0.0, "policy": 0.0, "value": 0.0}
        marks: dict[str, float] = {}
        collect, train, predict_values = model.collect_rollouts, model.train, model.policy.predict_values

        def timed_collect(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = collect(*args, **kwargs)
            phases["rollout"] += time.perf_counter() - t
            return out

        def timed_train() -> None:
            marks.pop("value_start", None)
            t = time.perf_counter()
            train()
            end = time.perf_counter()
            v0 = marks.get("value_start", end)
            phases["policy"] += v0 - t
            phases["value"] += end - v0

        def marked_predict_values(obs: Any) -> Any:
            marks.setdefault("value_start", time.perf_counter())
            return predict_values(obs)

        model.collect_rollouts, model.train = timed_collect, timed_train
        model.policy.predict_values = marked_predict_values
        start = time.perf_counter()
        model.learn(steps)
        seconds = time.perf_counter() - start
        env.close()
    n_updates = steps // (n_envs * s["n_steps"])
    return {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds, "peak_rss": mem.peak,
            **{k: v / n_updates for k, v in phases.items()}}


def _bare_worker(env_id: str, seconds: float, seed: int, out: Any) -> None:
    import gymnasium as gym

    env = gym.make(env_id)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(1000)]
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for a in actions:
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset()
        steps += len(actions)
    out.put(steps / (time.perf_counter() - start))


def bare_rate(env_id: str, seconds: float = 5.0, cores: int = 2) -> float:
    """Random-action env steps per second with `cores` processes stepping at once: the physical limit."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_bare_worker, args=(env_id, seconds, i, out)) for i in range(cores)]
    for p in procs:
        p.start()
    total = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    return total


def in_subprocess(fn: Any, *args: Any) -> dict[str, Any]:
    # ProcessPoolExecutor's workers are not daemonic, so trpo's own env workers may start inside them.
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def returns_trpo(env_id: str, steps: int, seed: int) -> dict[str, Any]:
    import torch

    from trpo import TRPO
    from trpo.resolve import resolve_config

    torch.set_num_threads(1)
    # The shipped preset, with its envs stepped in this process: the same run as with its worker processes
    # (tested bit for bit), on one core, so that two trainings at a time do not overload a 2-core machine.
    config, _ = resolve_config(env_id, "auto", overrides={"vector_mode": "sync"})
    agent = TRPO(env_id, config=config, seed=seed)
    start = time.perf_counter()
    agent.learn(steps)
    seconds = time.perf_counter() - start
    result = agent.evaluate(10)
    agent.close()
    return {"lib": "trpo", "seed": seed, "mean_return": result["mean_return"], "seconds": seconds}


def returns_sb3(env_id: str, steps: int, seed: int) -> dict[str, Any]:
    import tempfile

    from trpo.peers import run

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(env_id, seed, steps, Path(tmp), checkpoint_every=steps)
    return {"lib": "sb3-contrib", "seed": seed, "mean_return": result["mean_return"],
            "seconds": time.perf_counter() - start}


def returns_check(env_id: str, steps: int, seeds: list[int], libs: list[str], json_path: str | None) -> None:
    """Train trpo's shipped preset and sb3-contrib's rl-zoo settings on the same seeds and budget; compare the
    final deterministic 10-episode evaluations. Runs two single-process trainings at a time."""
    import numpy as np
    from learning import iqm  # benchmarks/learning.py, beside this script

    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        jobs = [pool.submit(returns_trpo, env_id, steps, seed) for seed in seeds if "trpo" in libs]
        jobs += [pool.submit(returns_sb3, env_id, steps, seed) for seed in seeds if "sb3" in libs]
        results = [job.result() for job in jobs]
    print(f"\n## Returns at {steps:,} steps on {env_id} (deterministic, 10 episodes; trpo preset vs sb3 rl-zoo)")
    print("| library | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | IQM |")
    print("|---|" + "---|" * (len(seeds) + 2))
    for lib in ("trpo", "sb3-contrib"):
        rets = [r["mean_return"] for r in results if r["lib"] == lib]
        if rets:
            print(f"| {lib} | " + " | ".join(f"{x:.0f}" for x in rets) + f" | {np.mean(rets):.0f} | {iqm(rets):.0f} |")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(results, fh, indent=1)


# --- measurements beyond one update: start-up, whole processes, the CNN's policy step ------------------------

BENCH = Path(__file__).resolve().parent


def _wall(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def startup() -> dict[str, Any]:
    """Seconds, best of 3, for `trpo --help` and `trpo presets` (no torch import), and from launching `trpo train`
    (the Hopper preset) to its first env step (first_step_probe.py writes the time)."""
    import tempfile

    trpo_cmd = [sys.executable, "-m", "trpo.cli"]
    out = {"help": min(_wall([*trpo_cmd, "--help"]) for _ in range(3)),
           "presets": min(_wall([*trpo_cmd, "presets"]) for _ in range(3))}
    firsts = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as tmp:
            stamp = Path(tmp) / "first_step"
            env = dict(os.environ, TRPO_FIRST_STEP=str(stamp),
                       PYTHONPATH=os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]))
            start = time.time()
            subprocess.run([*trpo_cmd, "train", "--env", "first_step_probe:ProbeHopper-v5", "--preset", "Hopper",
                            "--total-steps", "2048", "--eval-episodes", "0", "--no-progress", "--run-dir",
                            str(Path(tmp) / "run")], check=True, capture_output=True, env=env)
            firsts.append(float(stamp.read_text()) - start)
    out["first_env_step"] = min(firsts)
    return out


def whole(env_id: str, steps: int, seed: int) -> dict[str, Any]:
    """Whole processes as users run them, one after the other: `trpo train` (the env's preset) and sb3-contrib's
    TRPO with rl-zoo's settings (`python -m trpo.peers sb3-contrib`), each from launch to exit: imports, start-up,
    training, checkpoints and the final 10-episode evaluation; with their final returns."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ours = _wall([sys.executable, "-m", "trpo.cli", "train", "--env", env_id, "--total-steps", str(steps),
                      "--seed", str(seed), "--no-progress", "--run-dir", f"{tmp}/trpo"])
        peer = _wall([sys.executable, "-m", "trpo.peers", "sb3-contrib", "--env", env_id, "--seed", str(seed),
                      "--steps", str(steps), "--run-dir", f"{tmp}/sb3"])
        ret = {lib: json.loads((Path(tmp) / lib / "eval.json").read_text())["mean_return"] for lib in ("trpo", "sb3")}
    return {"steps": steps, "trpo_s": ours, "sb3_s": peer, "trpo_return": ret["trpo"], "sb3_return": ret["sb3"]}


def cnn_step(cg_iters: int, jacobian: bool, seed: int = 0, samples: int = 1024) -> float:
    """Seconds of one TRPO policy step (TrustRegionRule.update: gradient, CG, line search) of the paper's CNN on
    `samples` random 84 x 84 x 4 frames with 6 actions, one torch thread, with the CNN's Jacobian built once
    (trpo.conv_jacobian) or with autograd's Fisher-vector products."""
    import torch
    from gymnasium import spaces

    import trpo.update_rules as rules
    from trpo.config import TRPOConfig
    from trpo.distributions import Categorical
    from trpo.encoders import ImageLayout
    from trpo.networks import Actor

    torch.set_num_threads(1)
    if not jacobian:
        rules.conv_linearization = lambda *args: None  # this subprocess only
    cfg = TRPOConfig(cg_iters=cg_iters, cg_tol=1e-30)  # every CG iteration runs
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layout = ImageLayout(4, 84, 84, False, 1 / 255)
    dist = Categorical(spaces.Discrete(6))
    actor = Actor(layout.size, dist, cfg.actor_hidden, cfg.activation, cfg.init_log_std, image=layout,
                  image_encoder="paper")
    obs = torch.randint(0, 256, (samples, layout.size), generator=gen).to(torch.uint8)
    with torch.no_grad():
        actions = dist.sample(actor(obs), gen)
        log_probs = dist.log_prob(actor(obs), actions)
    batch = rules.PolicyBatch.of(actor, obs, actions, log_probs, torch.randn(samples, generator=gen))
    start = time.perf_counter()
    rules.TrustRegionRule(cfg, dist).update(actor, batch)
    return time.perf_counter() - start


def recurrent_fit(kind: str, sequences: int = 4, length: int = 32, reps: int = 5, calls: int = 30) -> dict[str, float]:
    """Milliseconds of one minibatch of the value fit of a recurrent critic (MLP 64-64, a 64-unit cell, `sequences`
    sequences of `length` steps with episode starts and padding), backpropagation through time written out
    (Critic.mse_backward) against autograd through `unroll`, alternated, best of `reps`; one torch thread."""
    import torch

    from trpo.networks import Critic
    from trpo.sequences import Sequences

    torch.set_num_threads(1)
    torch.manual_seed(0)
    critic = Critic(3, (64, 64), "tanh", recurrent=kind, recurrent_hidden=64)
    assert critic.cell is not None
    steps, envs = 1000, 2
    seq, _ = Sequences.of(torch.randn(steps, envs, 3), torch.rand(steps, envs) < 0.005,
                          torch.randn(steps, envs, critic.cell.state_dim), length)
    part, rows = seq.subset(torch.arange(seq.size - sequences, seq.size))
    targets = torch.randn(steps * envs)[rows]

    def autograd() -> None:
        for p in critic.parameters():
            p.grad = None
        (critic(part) - targets).pow(2).mean().backward()

    timings: dict[str, list[float]] = {"written_out": [], "autograd": []}
    for _ in range(reps):
        for name, fit in (("written_out", lambda: critic.mse_backward(part, targets)), ("autograd", autograd)):
            fit()
            start = time.perf_counter()
            for _ in range(calls):
                fit()
            timings[name].append((time.perf_counter() - start) / calls * 1e3)
    return {name: min(values) for name, values in timings.items()}


def print_targets(results: dict[str, Any]) -> None:
    """The speed issue's targets, from what this invocation measured."""
    rows = []
    if "hopper-whole" in results:
        r = results["hopper-whole"]
        rows.append((f"Hopper-v5 preset, {r['steps']:,} steps, whole process, >= 5x sb3-contrib",
                     f"{r['sb3_s'] / r['trpo_s']:.2f}x ({r['trpo_s']:.1f} s vs {r['sb3_s']:.1f} s; returns "
                     f"{r['trpo_return']:.0f} vs {r['sb3_return']:.0f})", r["sb3_s"] / r["trpo_s"] >= 5))
    if "cartpole-whole" in results:
        r = results["cartpole-whole"]
        rows.append((f"CartPole-v1 preset, {r['steps']:,} steps, whole process, >= 8x sb3-contrib",
                     f"{r['sb3_s'] / r['trpo_s']:.2f}x ({r['trpo_s']:.1f} s vs {r['sb3_s']:.1f} s; returns "
                     f"{r['trpo_return']:.0f} vs {r['sb3_return']:.0f})", r["sb3_s"] / r["trpo_s"] >= 8))
    for key in ("hopper-preset", "halfcheetah-preset"):
        if key in results:
            r = results[key]
            frac = r["trpo"]["steady_steps_per_s"] / r["bare_2core"]
            rows.append((f"{SCENARIOS[key].env_id} preset, steady state >= 75% of the bare 2-core env rate",
                         f"{frac:.0%} ({r['trpo']['steady_steps_per_s']:,.0f} of {r['bare_2core']:,.0f} steps/s)",
                         frac >= 0.75))
    if "cnn-step" in results:
        for iters, r in results["cnn-step"].items():
            ratio = r["autograd"] / r["jacobian"]
            rows.append((f"paper's CNN policy step, 1,024 frames, {iters} CG iterations, >= 10x autograd's",
                         f"{ratio:.1f}x ({r['jacobian']:.1f} s vs {r['autograd']:.1f} s)", ratio >= 10))
    if "startup" in results:
        r = results["startup"]
        rows.append(("`trpo --help`, `trpo presets` under 0.5 s", f"{r['help']:.2f} s, {r['presets']:.2f} s",
                     max(r["help"], r["presets"]) < 0.5))
        rows.append(("`trpo train` (Hopper preset): first env step within 2 s", f"{r['first_env_step']:.2f} s",
                     r["first_env_step"] < 2))
    if rows:
        print("\n## Targets of the speed issue, from this run")
        print("| target | measured | met? |")
        print("|---|---|---|")
        for target, measured, met in rows:
            print(f"| {target} | {measured} | {'yes' if met else 'no'} |")


def run_extra(key: str, seed: int) -> Any:
    if key == "startup":
        r = startup()
        print("\n## Start-up (best of 3)")
        print(f"trpo --help {r['help']:.2f} s; trpo presets {r['presets']:.2f} s; trpo train (Hopper preset) to its "
              f"first env step {r['first_env_step']:.2f} s")
        return r
    if key in ("hopper-whole", "cartpole-whole"):
        env_id, steps = ("Hopper-v5", 200_000) if key == "hopper-whole" else ("CartPole-v1", 100_000)
        r = whole(env_id, steps, seed)
        print(f"\n## {env_id}, whole processes, {steps:,} steps (trpo train with its preset; sb3-contrib with "
              "rl-zoo's settings)")
        print("| | trpo | sb3-contrib | ratio |")
        print("|---|---|---|---|")
        print(f"| seconds, launch to exit | {r['trpo_s']:.1f} | {r['sb3_s']:.1f} | {r['sb3_s'] / r['trpo_s']:.2f}x |")
        print(f"| env steps/s | {steps / r['trpo_s']:,.0f} | {steps / r['sb3_s']:,.0f} | |")
        print(f"| final return (10 episodes, deterministic) | {r['trpo_return']:.1f} | {r['sb3_return']:.1f} | |")
        return r
    if key == "recurrent-fit":
        print("\n## A recurrent critic's value fit: one minibatch of 4 sequences x 32 steps (ms), one torch thread")
        print("| cell | written out | autograd | ratio |")
        print("|---|---|---|---|")
        fits = {}
        for kind in ("lstm", "gru"):
            fits[kind] = r = in_subprocess(recurrent_fit, kind)
            ratio = r["autograd"] / r["written_out"]
            print(f"| {kind} | {r['written_out']:.2f} | {r['autograd']:.2f} | {ratio:.2f}x |")
        return fits
    assert key == "cnn-step"
    out = {}
    print("\n## The paper's CNN: one policy step on 1,024 random 84 x 84 x 4 frames, 6 actions, one torch thread")
    print("| CG iterations | Jacobian built once (s) | autograd's products (s) | ratio |")
    print("|---|---|---|---|")
    for iters in (9, 15):
        fast = in_subprocess(cnn_step, iters, True, seed)
        slow = in_subprocess(cnn_step, iters, False, seed)
        out[iters] = {"jacobian": fast, "autograd": slow}
        print(f"| {iters} | {fast:.2f} | {slow:.2f} | {slow / fast:.1f}x |")
    return out


EXTRAS = ("startup", "hopper-whole", "cartpole-whole", "cnn-step", "recurrent-fit")


def main() -> None:
    parser = argparse.ArgumentParser(description="trpo vs sb3-contrib TRPO: speed and memory")
    parser.add_argument("--scenario", nargs="+", choices=[*SCENARIOS, *EXTRAS], default=[*SCENARIOS, *EXTRAS])
    parser.add_argument("--updates", type=int, default=None, help="policy updates per run (default per scenario)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--returns", type=int, default=0, metavar="STEPS",
                        help="instead: train both on Hopper-v5 for STEPS on --seeds and compare returns")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--libs", nargs="+", choices=["trpo", "sb3"], default=["trpo", "sb3"],
                        help="with --returns: which libraries to train")
    args = parser.parse_args()
    if args.returns:
        returns_check("Hopper-v5", args.returns, args.seeds, args.libs, args.json)
        return

    import sb3_contrib
    import torch

    import trpo

    print(f"# trpo speed benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
          f"trpo {trpo.__version__}, sb3-contrib {sb3_contrib.__version__}")
    results: dict[str, Any] = {}
    bare: dict[str, float] = {}
    for key in args.scenario:
        if key in EXTRAS:
            results[key] = run_extra(key, args.seed)
            continue
        sc = SCENARIOS[key]
        updates = args.updates or sc.updates
        if sc.env_id not in bare:
            bare[sc.env_id] = bare_rate(sc.env_id)
        ours = in_subprocess(run_trpo, sc.env_id, sc.trpo, updates, args.seed)
        peer = in_subprocess(run_sb3, sc.env_id, sc.sb3, updates, args.seed)
        results[key] = {"trpo": ours, "sb3": peer, "bare_2core": bare[sc.env_id]}
        limit = bare[sc.env_id]
        print(f"\n## {sc.name} ({updates} updates; {sc.note})")
        print(f"trpo config: {ours['config']}")
        print("| | trpo | sb3-contrib | trpo / sb3 |")
        print("|---|---|---|---|")
        print(f"| env steps/s end to end | {ours['steps_per_s']:,.0f} | {peer['steps_per_s']:,.0f} | "
              f"{ours['steps_per_s'] / peer['steps_per_s']:.2f}x |")
        for phase in ("rollout", "policy", "value"):
            print(f"| s per update: {phase} | {ours[phase]:.3f} | {peer[phase]:.3f} | "
                  f"{peer[phase] / ours[phase]:.2f}x faster |")
        mib = lambda x: f"{x / 2**20:,.0f} MiB"  # noqa: E731
        print(f"| peak memory (process tree, PSS) | {mib(ours['peak_rss'])} | {mib(peer['peak_rss'])} | "
              f"{ours['peak_rss'] / peer['peak_rss']:.2f} |")
        print(f"| fraction of the 2-core bare env rate ({limit:,.0f} steps/s) | {ours['steps_per_s'] / limit:.0%} | "
              f"{peer['steps_per_s'] / limit:.0%} | |")
        print(f"| steady state (updates 4 on): steps/s, fraction of bare | {ours['steady_steps_per_s']:,.0f}, "
              f"{ours['steady_steps_per_s'] / limit:.0%} | | |")
    print_targets(results)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
