"""Rollouts: N vectorized Gymnasium envs stepped by pi_old into a typed batch.

    runner.py      the `Backend` seam, and `EnvRunner` (k envs in one process: vector_mode 'sync')
    workers.py     'subprocess': envs split over worker processes
    ray_actors.py  'ray': envs on Ray actors, on this machine or a cluster
    sb3_vecenv.py  an SB3 VecEnv stepped as given (trpo.sb3's drop-in), chosen by its env spec
    collector.py   `RolloutCollector`: pi_old frozen per batch, the backend `BACKENDS` names, the `Batch`
Making envs and the errors of the user's env are trpo/envs.py's; vine sampling's branches, trpo/vine.py's.
The package hands batches to the learner and imports nothing above layer 3: no critic, advantages, update rule,
run directory or agent (learner.py owns the collector).
"""

from trpo.rollout.collector import BACKENDS, Batch, RolloutCollector
from trpo.rollout.runner import Backend, EnvRunner, Segment

__all__ = ["BACKENDS", "Backend", "Batch", "EnvRunner", "RolloutCollector", "Segment"]
