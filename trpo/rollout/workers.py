"""vector_mode 'subprocess': the envs split over worker processes, each an `EnvRunner`; one message each way per
batch, not per step. A worker gets only the env spec, the frozen acting policy and its share of the pre-drawn noise
(and vine plan): never the learner's actor, critic, optimizer or statistics, nor the run directory, and it draws
no random numbers of its own (its envs are seeded by the main process's reset)."""

from __future__ import annotations

import contextlib
import gc
import itertools
import multiprocessing as mp
import pickle
import signal
import traceback
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, SpawnContext
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from trpo.checkpoint import interrupts_deferred
from trpo.config import TRPOConfig, available_cores
from trpo.distributions import ActionDistribution
from trpo.envs import EnvError, EnvSpec, close_env, make_env
from trpo.observations import ObsEncoder
from trpo.policy import Acting
from trpo.rollout.runner import BatchNoise, EnvRunner, Segment
from trpo.vine import VinePlan


def _worker(conn: Connection, spec: EnvSpec, count: int, first_index: int, encoder: ObsEncoder,
            dist: ActionDistribution, inherited: list[Connection]) -> None:
    """A worker process: owns `count` envs and answers ('reset', seed), ('run', args) and ('close', None)."""
    # A forked worker holds copies of the main process's ends of the pipes made so far, its own included: close
    # them, or a main process that dies (SIGKILL, out of memory) would leave this worker waiting forever on a
    # pipe that never reports end-of-file.
    for end in inherited:
        end.close()
    # Ctrl-C reaches the whole process group: the main process handles it and closes this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the handlers of the parent, forked with it
    torch.set_num_threads(1)
    runner: EnvRunner | None = None
    try:
        try:
            runner = EnvRunner([make_env(spec) for _ in range(count)], encoder, dist, first_index)
        except Exception as exc:  # making the envs failed: report it, then end
            _send_error(conn, exc)
            return
        while True:
            command, payload = conn.recv()
            if command == "close":
                break
            try:
                result = runner.reset(payload) if command == "reset" else runner.run(*payload)
            except Exception as exc:  # report to the main process, which raises it there
                _send_error(conn, exc)
            else:
                conn.send(("ok", result))
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the main process went away (EOF, reset or broken pipe): end quietly, it reports what happened
    finally:
        if runner is not None:
            with contextlib.suppress(Exception):  # the main process reports a close() that raises: its own env's
                runner.close()
        conn.close()


def worker_error(exc: Exception) -> Exception:
    """An exception raised in a worker, ready to send to the main process: with the worker's traceback as a note
    (shown by --debug), or as a RuntimeError carrying its text if it does not pickle."""
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note("in an env worker process:\n" + "".join(traceback.format_exception(exc)))
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _send_error(conn: Connection, exc: Exception) -> None:
    conn.send(("error", worker_error(exc)))


def check_remote_spec(spec: EnvSpec, mode: str) -> None:
    """What worker processes and Ray actors need: an env they can make themselves, tried here first so that a
    failure is said in this process."""
    if isinstance(spec, gym.Env):
        raise EnvError(f"an env instance cannot be sent to {mode} workers; pass an id or a factory")
    close_env(make_env(spec))


def worker_count(cfg: TRPOConfig) -> int:
    """num_workers, or one per env and at most one per core this process may use."""
    return cfg.num_workers or min(cfg.num_envs, available_cores())


def subprocess_backend(spec: EnvSpec, cfg: TRPOConfig, encoder: ObsEncoder, dist: ActionDistribution) -> WorkerPool:
    """vector_mode 'subprocess': the envs split over worker processes."""
    if mp.current_process().daemon:
        raise EnvError("vector_mode 'subprocess' cannot start env workers inside a daemonic process "
                       "(e.g. a multiprocessing.Pool worker); use vector_mode 'sync' there")
    check_remote_spec(spec, "subprocess")
    return WorkerPool(spec, cfg.num_envs, encoder, dist, worker_count(cfg))


class WorkerPool:
    """Envs split over worker processes (one per core at most); one message each way per batch, not per step."""

    restarts = 0

    def __init__(self, spec: EnvSpec, num_envs: int, encoder: ObsEncoder, dist: ActionDistribution,
                 workers: int) -> None:
        methods = mp.get_all_start_methods()
        ctx: ForkContext | SpawnContext = mp.get_context("fork") if "fork" in methods else mp.get_context("spawn")
        sizes = [len(part) for part in np.array_split(np.arange(num_envs), workers)]
        self.conns: list[Connection] = []
        self.procs = []
        first = 0
        forked = ctx.get_start_method() == "fork"
        self.froze_gc = forked
        if self.froze_gc:
            # As Python's gc docs advise before fork(): move every object alive now out of the collector's reach,
            # so that neither side's collections write to the pages they share (copy-on-write would duplicate
            # them; ~15 MiB less memory in all here). close() hands them back to the collector.
            gc.freeze()
        with interrupts_deferred():
            for size in sizes:
                parent, child = ctx.Pipe()
                inherited = [*self.conns, parent] if forked else []
                proc = ctx.Process(target=_worker, args=(child, spec, size, first, encoder, dist, inherited),
                                   daemon=True)
                proc.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(proc)
                first += size
        self.slices = np.cumsum([0, *sizes])

    def _died(self, k: int) -> EnvError:
        self.procs[k].join(timeout=1)
        return EnvError(f"env worker process {k} (envs {self.slices[k]}-{self.slices[k + 1] - 1}) died "
                        f"(exit code {self.procs[k].exitcode}); the latest checkpoint is intact")

    def _send(self, k: int, message: tuple[str, Any]) -> None:
        try:
            self.conns[k].send(message)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise self._died(k) from exc

    def _gather(self) -> list[Any]:
        results = []
        for k, conn in enumerate(self.conns):
            try:
                results.append(conn.recv())
            except (EOFError, ConnectionResetError) as exc:
                raise self._died(k) from exc
        for status, value in results:
            if status == "error":
                raise value
        return [value for _, value in results]

    def reset(self, seed: int) -> np.ndarray:
        for k in range(len(self.conns)):
            self._send(k, ("reset", seed))
        return np.concatenate(self._gather())

    def start(self, acting: Acting, noise: BatchNoise, plan: VinePlan | None = None) -> None:
        """Set every worker collecting its envs' share of the batch; returns at once (see `finish`)."""
        for k, (lo, hi) in enumerate(itertools.pairwise(self.slices)):
            share = None if plan is None else plan.envs(lo, hi)
            self._send(k, ("run", (acting, noise[:, lo:hi], share)))

    def finish(self) -> list[Segment]:
        """Wait for the segments of the batch that `start` set going."""
        return self._gather()

    def drop(self) -> None:
        """Read the batch in flight and forget it."""
        self._gather()

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(BrokenPipeError, OSError):  # a worker that already died
                conn.send(("close", None))
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        if self.froze_gc:
            gc.unfreeze()  # so that objects frozen at start can be collected once garbage
            self.froze_gc = False

