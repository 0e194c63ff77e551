"""vector_mode 'ray': the same runs as 'sync', a killed actor replaced, a dying worker ending the run cleanly,
a two-node cluster, and the CLI. Ray runtimes are started with few CPUs; tests share one where they can."""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import metrics, strip_timing, trpo
from trpo_testenvs import DiesEnv

from trpo import TRPO, TRPOConfig
from trpo.config import ConfigError
from trpo.envs import EnvError
from trpo.extras import install_hint
from trpo.rollout.ray_actors import RayPool

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.xdist_group("ray")  # one xdist worker: one Ray runtime at a time
# Ray starts its workers at nice 15; on a 2-core machine busy with other jobs their start-up (importing torch)
# then takes a minute. Only the tests' scheduling priority changes.
os.environ.setdefault("RAY_worker_niceness", "0")

SMALL = TRPOConfig(num_envs=4, steps_per_env=128, num_workers=2)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    if ray.is_initialized():
        ray.shutdown()
    # Actors import the test envs' module as a user's actors would import theirs: through the runtime_env.
    tests = str(Path(__file__).parent)
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": tests}})
    yield
    ray.shutdown()


def pool_of(agent: TRPO) -> RayPool:
    assert agent.learner.collector is not None and isinstance(agent.learner.collector.runner, RayPool)
    return agent.learner.collector.runner


@pytest.mark.parametrize("sampling", ["single_path", "vine", "recurrent", "sde"])
def test_ray_runs_are_bit_identical_to_sync(local_ray: None, sampling: str) -> None:
    """Feed-forward (single paths, vine), recurrent (the LSTM state carried on the actors) and gSDE (the exploration
    matrices shared out) alike."""
    extra: dict = dict(sampling=sampling)
    if sampling == "recurrent":
        extra = dict(recurrent="lstm", recurrent_hidden=8)
    elif sampling == "sde":
        extra = dict(use_sde=True, sde_sample_freq=4, steps_per_env=64)
    histories = []
    for mode in ("sync", "ray"):
        env = "Pendulum-v1" if sampling == "sde" else "CartPole-v1"
        agent = TRPO(env, SMALL.replace(vector_mode=mode, vine_states=8, **extra), seed=5)
        agent.train_until(3 * 512)
        histories.append(strip_timing(agent.history))
        agent.close()
    assert histories[0] == histories[1]
    assert len(histories[1]) >= 2 and all(row["worker_restarts"] == 0 for row in histories[1])


def test_a_killed_actor_is_replaced_and_its_share_collected_again(local_ray: None) -> None:
    pytest.importorskip("mujoco")
    agent = TRPO("Hopper-v5", seed=0, steps_per_env=256, value_epochs=1, vector_mode="ray", num_workers=2)
    agent.learn(512)  # one update; the next batch is now being collected, during the value fit
    pool = pool_of(agent)
    (pid, _), (other, _) = pool.placement()
    os.kill(pid, signal.SIGKILL)  # mid-batch: its share of the batch in flight is lost
    agent.train_until(3 * 512)
    assert [row["worker_restarts"] for row in agent.history] == [0, 1, 0]
    assert all(row["step"] == 512 * row["update"] for row in agent.history)  # full batches throughout
    new_pid, _ = pool.placement()[0]
    assert new_pid != pid and pool.placement()[1][0] == other and pool.restarts == 1
    agent.close()


def test_a_worker_that_keeps_dying_ends_the_run_with_a_clear_error_and_an_intact_checkpoint(
        local_ray: None, tmp_path: Path) -> None:
    flag = tmp_path / "die"
    env = functools.partial(DiesEnv, str(flag))
    run = tmp_path / "run"
    agent = TRPO(env, SMALL.replace(vector_mode="ray", checkpoint_every=1, max_worker_restarts=2), seed=0,
                 run_dir=run)
    agent.learn(2 * 512)
    flag.touch()  # from now on every actor dies at its next step, restarted or not
    with pytest.raises(EnvError, match=r"Ray env actor 0 \(envs 0-1\) died 3 times in one batch "
                                       r"\(max_worker_restarts=2\); the latest checkpoint is intact"):
        agent.train_until(6 * 512)
    agent.close()
    flag.unlink()
    done = len(metrics(run))
    assert done >= 2
    resumed = TRPO.load(run / "checkpoints" / "latest.pt", env=env, run_dir=run)  # a factory has no id to store
    assert resumed.num_updates == done
    resumed.train_until((done + 1) * 512)
    assert [row["update"] for row in metrics(run)] == list(range(1, done + 2))
    assert resumed.history[-1]["worker_restarts"] == 0
    resumed.close()


def test_an_env_that_does_not_import_on_the_actors_is_a_clear_error(
        local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "only_here.py").write_text("from trpo_testenvs import CounterEnv\n\nclass Env(CounterEnv): ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable in this process, not on the Ray runtime's path
    from only_here import Env  # type: ignore[import-not-found]

    agent = TRPO(Env, SMALL.replace(vector_mode="ray"), seed=0)
    with pytest.raises(EnvError, match=r"a Ray env actor could not start: .*No module named 'only_here'.*runtime_env"):
        agent.learn(512)
    agent.close()


def test_without_ray_the_mode_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from trpo.rollout.ray_actors import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigError, match=re.escape(f"vector_mode 'ray' needs Ray: {install_hint('ray')}")):
        import_ray()


def test_cli_without_ray_is_one_line_and_writes_no_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = ("import sys; sys.modules['ray'] = None; from trpo.cli import main; "  # as if Ray were not installed
            f"sys.exit(main(['train', '--env', 'CartPole-v1', '--vector-mode', 'ray', '--run-dir', {str(run)!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == f"trpo: error: vector_mode 'ray' needs Ray: {install_hint('ray')}"
    assert not run.exists()


def test_cli_ray_run_matches_sync_and_resumes(tmp_path: Path) -> None:
    common = ["--env", "CartPole-v1", "--total-steps", "2048", "--steps-per-env", "256", "--num-envs", "4",
              "--checkpoint-every", "1", "--eval-episodes", "1", "--no-progress", "--preset", "none"]
    sync, on_ray = tmp_path / "sync", tmp_path / "ray"
    assert trpo("train", *common, "--run-dir", str(sync)).returncode == 0
    res = trpo("train", *common, "--run-dir", str(on_ray), "--vector-mode", "ray", "--num-workers", "2")
    assert res.returncode == 0, res.stderr
    assert strip_timing(metrics(on_ray)) == strip_timing(metrics(sync))
    assert "vector_mode: ray" in (on_ray / "config.yaml").read_text()
    more = trpo("train", "--resume", str(on_ray), "--total-steps", "3072", "--no-progress")
    assert more.returncode == 0, more.stderr
    assert [row["update"] for row in metrics(on_ray)] == [1, 2, 3]


def test_a_two_node_cluster_with_an_actor_on_each_node_gives_the_same_run(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # The CartPole preset's run, bit for bit, with its batch collected across two nodes: what it learns is then
        # what tests/test_learning.py's CartPole test shows of the same run in one process.
        agent = TRPO("CartPole-v1", seed=0, vector_mode="ray", num_workers=2, ray_address=cluster.address)
        agent.learn(3 * agent.config.batch_size)
        nodes = {node for _, node in pool_of(agent).placement()}
        on_cluster = strip_timing(agent.history)
        agent.close()
        assert len(nodes) == 2  # one actor per node: the batch crossed nodes
        here = TRPO("CartPole-v1", seed=0, vector_mode="sync")
        here.learn(3 * here.config.batch_size)
        assert on_cluster == strip_timing(here.history) and len(on_cluster) == 3
        here.close()
        # With a cluster running here (as `ray start` leaves one), an empty ray_address still starts a runtime of
        # the run's own, as documented; ray.init's default joined the cluster and refused the run's num_cpus.
        ray.shutdown()
        run = tmp_path / "own"
        res = trpo("train", "--env", "CartPole-v1", "--total-steps", "256", "--steps-per-env", "128", "--num-envs",
                   "2", "--vector-mode", "ray", "--num-workers", "2", "--preset", "none", "--eval-episodes", "1",
                   "--no-progress", "--run-dir", str(run))
        assert res.returncode == 0, res.stderr
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_an_address_where_nothing_answers_is_one_line_at_once(tmp_path: Path) -> None:
    # Ray itself would try for over ten minutes; the address is asked first, for at most CONNECT_TIMEOUT_S.
    res = trpo("train", "--vector-mode", "ray", "--ray-address", "127.0.0.1:1", "--total-steps", "256",
               "--run-dir", str(tmp_path / "run"), "--no-progress", timeout=60)
    assert res.returncode == 2 and res.stderr.splitlines()[-1] == (
        "trpo: error: cannot join Ray at ray_address='127.0.0.1:1': nothing accepts connections there (Connection "
        "refused; waited at most 30 s); start the cluster (ray start --head) or fix the address"), res.stderr


def test_sigterm_under_ray_stops_the_run_with_its_line(tmp_path: Path) -> None:
    # ray.init puts in a SIGTERM handler that exits at once (status 15, no line); trpo's is put back after it.
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "trpo.cli", "train", "--vector-mode", "ray", "--num-envs", "2",
                             "--num-workers", "1", "--steps-per-env", "128", "--total-steps", "400000", "--run-dir",
                             str(run), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.time() + 180
    while time.time() < deadline and not ((run / "metrics.jsonl").is_file() and metrics(run)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 143, err
    assert err.splitlines()[-1].startswith("trpo: terminated (SIGTERM); "), err
