"""Rollouts on Ray actors (vector_mode 'ray'): the subprocess workers' protocol, with Ray placing the workers on
this machine or across a cluster, and a worker whose process dies replaced instead of ending the run.

Each actor owns a contiguous share of the envs and collects that share of every batch with a copy of the frozen
acting policy (policy.py) and its slice of the pre-drawn noise: one task each way per batch. The envs are seeded as
in the local modes, so a run without restarts is bit-identical to 'sync'. A restarted actor makes its envs afresh
(reset with a new seed) and collects its share of the batch in flight again with the same policy and noise.

Actors get what subprocess workers get (the env spec, the frozen acting policy, their share of the noise and vine
plan), never the learner's objects or the run directory. A Ray runtime it did not start is joined but never shut
down, and whether a stored run's ray_address may be joined at all is trust.py's decision (through loading.py).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from trpo.config import ConfigError, TRPOConfig
from trpo.distributions import ActionDistribution
from trpo.envs import EnvError, EnvSpec, make_env
from trpo.extras import install_hint
from trpo.observations import ObsEncoder
from trpo.policy import Acting
from trpo.rollout.runner import BatchNoise, EnvRunner, Segment
from trpo.rollout.workers import check_remote_spec, worker_count, worker_error
from trpo.vine import VinePlan

START_TIMEOUT_S = 120.0  # for Ray to place the actors (a cluster without free CPUs would wait forever)
# For a cluster at ray_address to accept a connection; then Ray tries its GCS once (about 40 s) instead of 20 times
# (over ten minutes against an address that answers but is no Ray cluster).
CONNECT_TIMEOUT_S = 30.0
RESTART_SEED = 1_000_003  # a restarted actor's envs are seeded seed + RESTART_SEED * restarts + index


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"vector_mode 'ray' needs Ray: {install_hint('ray')}") from exc
    return ray


def ray_backend(spec: EnvSpec, cfg: TRPOConfig, encoder: ObsEncoder, dist: ActionDistribution) -> RayPool:
    """vector_mode 'ray': the envs on Ray actors (on this machine, or the cluster at cfg.ray_address)."""
    check_remote_spec(spec, "ray")
    return RayPool(spec, cfg.num_envs, encoder, dist, worker_count(cfg), cfg.ray_address, cfg.max_worker_restarts)


class RayWorker:
    """The body of one Ray actor: `count` envs from global index `first_index`, made on the first reset. Every
    answer is ('ok', value) or ('error', exception), as from a subprocess worker."""

    def __init__(self, spec: EnvSpec, count: int, first_index: int, encoder: ObsEncoder,
                 dist: ActionDistribution) -> None:
        torch.set_num_threads(1)
        self.args = (spec, count, first_index, encoder, dist)
        self.runner: EnvRunner | None = None

    def where(self) -> tuple[int, str]:
        """(process id, Ray node id): for fault tests and for checking placement across nodes."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def reset(self, seed: int) -> tuple[str, Any]:
        try:
            if self.runner is None:
                spec, count, first, encoder, dist = self.args
                self.runner = EnvRunner([make_env(spec) for _ in range(count)], encoder, dist, first)
            return "ok", self.runner.reset(seed)
        except Exception as exc:
            return "error", worker_error(exc)

    def run(self, acting: Acting, noise: BatchNoise, plan: VinePlan | None = None) -> tuple[str, Any]:
        try:
            assert self.runner is not None, "run() before reset()"
            return "ok", self.runner.run(acting, noise, plan)
        except Exception as exc:
            return "error", worker_error(exc)

    def reset_and_run(self, seed: int, acting: Acting, noise: BatchNoise,
                      plan: VinePlan | None = None) -> tuple[str, Any]:
        """A replacement actor's first task: fresh envs, then its share of the batch in flight."""
        status, value = self.reset(seed)
        return (status, value) if status == "error" else self.run(acting, noise, plan)


class RayPool:
    """Envs split over `workers` Ray actors (1 CPU each, spread over the cluster's nodes); the same interface as
    `rollout.WorkerPool` (the `rollout.Backend` protocol): reset, start (returns at once), finish, drop, close.
    `restarts` counts replaced actors."""

    def __init__(self, spec: EnvSpec, num_envs: int, encoder: ObsEncoder, dist: ActionDistribution, workers: int,
                 address: str | None, max_restarts: int) -> None:
        ray = self.ray = import_ray()
        self.started_runtime = not ray.is_initialized()
        if self.started_runtime:
            init: dict[str, Any] = dict(include_dashboard=False, address=address or "local")
            if not address:
                # A new runtime on this machine ("local": not one that another program runs here, which ray.init
                # would otherwise join): a CPU per actor even if that oversubscribes, and the driver's import
                # path for the actors, so env modules importable here (e.g. 'my_pkg:MyEnv-v0') import there too.
                init["num_cpus"] = max(os.cpu_count() or 1, workers)
                init["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
            else:
                _check_reachable(address)
            try:
                with _bounded_join(bool(address)), _sigterm_kept():
                    ray.init(**init)
            except Exception as exc:  # e.g. no cluster at that address
                waited = " (Ray waited about 40 s for it)" if address else ""
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                raise EnvError(f"cannot start or join Ray (ray_address={address!r}): {first}{waited}") from exc
        self.actor_class = ray.remote(num_cpus=1, max_restarts=0)(RayWorker)
        self.spec, self.encoder, self.dist = spec, encoder, dist
        self.max_restarts = max_restarts
        sizes = [len(part) for part in np.array_split(np.arange(num_envs), workers)]
        self.slices = np.cumsum([0, *sizes])
        self.actors = [self._new_actor(k) for k in range(workers)]
        self.restarts = 0
        self.seed = 0
        self.refs: list[Any] = []
        self.pending: tuple[Any, BatchNoise, VinePlan | None] | None = None
        try:  # wait until Ray has placed every actor, or say why it cannot
            ray.get([a.where.remote() for a in self.actors], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as exc:
            free = ray.available_resources().get("CPU", 0)
            self.close()
            raise EnvError(f"Ray could not place {workers} env actors (1 CPU each) within {START_TIMEOUT_S:.0f} s; "
                           f"the cluster has {free:g} CPUs free") from exc
        except ray.exceptions.RayActorError as exc:  # e.g. the env's module does not import where Ray runs it
            self.close()
            cause = [line.strip() for line in str(exc).splitlines() if line.strip()][-1]
            raise EnvError(f"a Ray env actor could not start: {cause}; the env (and the module that registers it) "
                           "must import where Ray runs the actors (see Ray's runtime_env)") from exc

    def _new_actor(self, k: int) -> Any:
        lo, hi = self.slices[k], self.slices[k + 1]
        return self.actor_class.options(scheduling_strategy="SPREAD").remote(
            self.spec, int(hi - lo), int(lo), self.encoder, self.dist)

    def _envs(self, k: int) -> str:
        return f"envs {self.slices[k]}-{self.slices[k + 1] - 1}"

    def _get(self, k: int, resubmit: Any) -> Any:
        """Actor k's answer to self.refs[k]; if its process died, a new actor takes its envs and `resubmit(actor)`
        asks it again, up to max_restarts times."""
        died = 0
        while True:
            try:
                status, value = self.ray.get(self.refs[k])
            except self.ray.exceptions.RayActorError as exc:
                died += 1
                if died > self.max_restarts:
                    raise EnvError(f"Ray env actor {k} ({self._envs(k)}) died {died} times in one batch (max_worker_"
                                   f"restarts={self.max_restarts}); the latest checkpoint is intact") from exc
                self.ray.kill(self.actors[k], no_restart=True)
                self.actors[k] = self._new_actor(k)
                self.restarts += 1
                self.refs[k] = resubmit(self.actors[k])
                continue
            if status == "error":
                raise value
            return value

    def reset(self, seed: int) -> np.ndarray:
        self.seed = seed
        self.refs = [a.reset.remote(seed) for a in self.actors]
        again = lambda actor: actor.reset.remote(self._restart_seed())  # noqa: E731
        return np.concatenate([self._get(k, again) for k in range(len(self.actors))])

    def _restart_seed(self) -> int:
        return self.seed + RESTART_SEED * self.restarts

    def start(self, acting: Acting, noise: BatchNoise, plan: VinePlan | None = None) -> None:
        """Set every actor collecting its envs' share of the batch; returns at once (see `finish`)."""
        acting_ref = self.ray.put(acting)  # one copy in the object store, read by every actor
        self.pending = (acting_ref, noise, plan)
        self.refs = [a.run.remote(acting_ref, noise[:, lo:hi], _share(plan, lo, hi))
                     for a, (lo, hi) in zip(self.actors, itertools.pairwise(self.slices), strict=True)]

    def finish(self) -> list[Segment]:
        """Wait for the segments of the batch that `start` set going, collecting a dead actor's share again."""
        assert self.pending is not None, "finish() before start()"
        acting_ref, noise, plan = self.pending
        segments = []
        for k, (lo, hi) in enumerate(itertools.pairwise(self.slices)):
            share, vine = noise[:, lo:hi], _share(plan, lo, hi)
            segments.append(self._get(k, lambda a, s=share, v=vine: a.reset_and_run.remote(
                self._restart_seed(), acting_ref, s, v)))
        self.pending = None
        return segments

    def drop(self) -> None:
        """Read the batch in flight (collecting a dead actor's share again, as `finish`) and forget it."""
        self.finish()

    def placement(self) -> list[tuple[int, str]]:
        """(process id, node id) of each actor."""
        places: list[tuple[int, str]] = self.ray.get([a.where.remote() for a in self.actors])
        return places

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already dead, or Ray already shut down
                self.ray.kill(actor, no_restart=True)
        self.actors = []
        if self.started_runtime and self.ray.is_initialized():
            self.ray.shutdown()
            self.started_runtime = False


def _check_reachable(address: str) -> None:
    """EnvError, within CONNECT_TIMEOUT_S, where nothing accepts a connection at a HOST:PORT (or ray://HOST:PORT)
    ray_address, instead of Ray's own wait of over ten minutes. Other addresses ('auto') are Ray's to find."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:  # refused, timed out, an unknown host
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise EnvError(f"cannot join Ray at ray_address={address!r}: nothing accepts connections there ({reason}; "
                       f"waited at most {CONNECT_TIMEOUT_S:.0f} s); start the cluster (ray start --head) or fix the "
                       "address") from exc


@contextlib.contextmanager
def _bounded_join(joining: bool) -> Iterator[None]:
    """Ray tries a cluster's GCS once (RAY_gcs_server_port_wait_time_s, unless the user set it) while joining."""
    key = "RAY_gcs_server_port_wait_time_s"
    set_here = joining and key not in os.environ
    if set_here:
        os.environ[key] = "1"
    try:
        yield
    finally:
        if set_here:
            os.environ.pop(key, None)


@contextlib.contextmanager
def _sigterm_kept() -> Iterator[None]:
    """ray.init replaces the SIGTERM handler with one that exits at once (status 15, no line): trpo's, which stops
    the run at its checkpoint and says so (cli.py), is put back. Ray is shut down by the run's close()."""
    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGTERM")
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if previous is not None and previous is not signal.SIG_DFL:  # a library user's default: Ray's stays
            signal.signal(signal.SIGTERM, previous)


def _share(plan: VinePlan | None, lo: int, hi: int) -> VinePlan | None:
    return None if plan is None else plan.envs(lo, hi)
