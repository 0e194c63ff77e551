"""trpo bench --peer tianshou: Tianshou's TRPO as its MuJoCo example runs it, recorded as a run directory that the
bench table and `trpo plot` read, continued from its checkpoint, evaluated as the other peers are."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from clitools import run_cli_output

from trpo.peer_tianshou import _Episodes, tianshou_settings

NEEDS_TIANSHOU = pytest.mark.skipif(importlib.util.find_spec("tianshou") is None,
                                    reason="tianshou is not installed (pip install -e '.[bench]'; not in the test "
                                    "extra: its pandas<3 pin would change the test set's)")


def bench(out: Path, steps: int, *more: str) -> tuple[int, str, str]:
    return run_cli_output(["bench", "--env", "InvertedPendulum-v5", "--peer", "tianshou", "--seeds", "0",
                           "--steps", str(steps), "--jobs", "1", "--out", str(out), *more])


@NEEDS_TIANSHOU
def test_the_tianshou_peer_is_a_run_directory_that_continues(tmp_path: Path) -> None:
    # The example's settings (16 envs x 64 steps per update), 2 updates. reset_noise_scale 0 (the env's own option)
    # makes every reset the same state: the 10 deterministic evaluation episodes are then one episode 10 times,
    # which they are only if the option reached the evaluation env.
    kwargs = ["--set", 'env_kwargs={"reset_noise_scale": 0.0}']
    code, out, err = bench(tmp_path, 2048, *kwargs)
    run = tmp_path / "InvertedPendulum-v5" / "tianshou-s0"
    assert code == 0, out + err + (tmp_path / "InvertedPendulum-v5" / "tianshou-s0.log").read_text()
    assert "| InvertedPendulum-v5 | tianshou | 2,048 | 0 |" in out
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["version"] == importlib.metadata.version("tianshou") and config["library"] == "tianshou"
    assert {k: config[k] for k in ("num_training_envs", "collection_step_num_env_steps", "max_kl", "lr",
                                   "optim_critic_iters", "hidden_sizes", "max_epochs")} == \
        {"num_training_envs": 16, "collection_step_num_env_steps": 1024, "max_kl": 0.01, "lr": 1e-3,
         "optim_critic_iters": 20, "hidden_sizes": [64, 64], "max_epochs": 100}
    assert config["env_kwargs"] == {"reset_noise_scale": 0.0}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["update"], r["step"]) for r in rows] == [(1, 1024), (2, 2048)]
    assert all(r["episodes"] > 0 and r["episode_length_mean"] >= 1 and r["kl"] > 0 for r in rows)
    assert rows[1]["lr"] < rows[0]["lr"] == 1e-3  # the example's linear decay, per update
    result = json.loads((run / "eval.json").read_text())
    assert set(result) == {"mean_return", "std_return", "episodes", "mean_length", "returns", "lengths", "step"}
    assert result["step"] == 2048 and result["episodes"] == 10 and len(set(result["returns"])) == 1
    assert (run / "checkpoints" / "tianshou.pt").is_file()
    # Killed after its checkpoint at 2048: a row written after it (and one cut short) is dropped, the run goes on
    # from the checkpoint's weights, statistics and learning rate, and is evaluated again at the new budget.
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"update": 3, "step": 3072, "episodes": 1, "stale": True}) + '\n{"update": 4, "st')
    (run / "eval.json").unlink()
    code, out, err = bench(tmp_path, 3072, *kwargs)
    assert code == 0, out + err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1024, 2048, 3072] and "stale" not in rows[2]
    assert rows[2]["lr"] < rows[1]["lr"]
    assert json.loads((run / "eval.json").read_text())["step"] == 3072
    assert "| InvertedPendulum-v5 | tianshou | 3,072 | 0 |" in out
    code, out, err = bench(tmp_path, 3072, *kwargs)
    assert code == 0 and "skipped: InvertedPendulum-v5 seed 0 (tianshou): done already" in out, out + err
    png = tmp_path / "curves.png"
    assert run_cli_output(["plot", str(tmp_path / "InvertedPendulum-v5"), "--out", str(png)])[0] == 0
    assert png.stat().st_size > 0


def test_the_tianshou_peer_refuses_an_env_its_example_does_not_cover(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run_cli_output(["bench", "--env", "CartPole-v1", "--peer", "tianshou", "--out", str(tmp_path)])
    assert code == 2 and ("--peer tianshou: Tianshou's MuJoCo TRPO example has no run for CartPole-v1: it covers "
                          "Ant-v5, HalfCheetah-v5, Hopper-v5, Walker2d-v5") in err
    assert not (tmp_path / "CartPole-v1").exists()
    if importlib.util.find_spec("tianshou"):
        assert tianshou_settings("Hopper-v4")["num_training_envs"] == 16  # the example's default task's version
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ValueError, match=r"the tianshou peer needs tianshou: .*pip install"):
        tianshou_settings("Hopper-v5")


def test_episode_lengths_span_the_collects() -> None:
    # Two envs, three steps: env 0 ends at its third step (return 1 + 2 + 3), env 1 goes on, and its steps so far
    # count towards the episode it ends later, whatever was collected in between.
    episodes = _Episodes(2)
    for t, done in ((1, False), (2, False), (3, True)):
        batch = SimpleNamespace(rew=np.array([t, 10.0]), terminated=np.array([done, False]),
                                truncated=np.array([False, False]))
        episodes(None, batch)
    assert episodes.take() == [(6.0, 3)] and episodes.take() == []
    episodes(None, SimpleNamespace(rew=np.array([1.0, 10.0]), terminated=np.array([False, False]),
                                   truncated=np.array([False, True])))
    assert episodes.take() == [(40.0, 4)]
