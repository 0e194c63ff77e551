"""`trpo plot` on real run directories made by `trpo train`, through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_cli import FAST, trpo

from trpo.plot import curves, load_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plot")
    for name, args in [("cp-s0", ["--seed", "0"]), ("cp-s1", ["--seed", "1"]),
                       ("pend-ppo-s0", ["--env", "Pendulum-v1", "--update-rule", "ppo"])]:
        res = trpo("train", "--total-steps", "768", "--run-dir", str(root / "runs" / name), *args, *FAST)
        assert res.returncode == 0, res.stderr
    return root


def test_plot_groups_runs_by_env_and_label(runs: Path) -> None:
    res = trpo("plot", "runs/*", "--out", "curves.png", cwd=runs)
    assert res.returncode == 0, res.stderr
    assert "3 runs in 2 groups" in res.stdout
    assert (runs / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = curves(load_runs([str(runs / "runs")]), "episode_return_mean")
    assert set(data) == {"CartPole-v1", "Pendulum-v1"} and set(data["CartPole-v1"]) == {"cp"}
    grid, values = data["CartPole-v1"]["cp"]
    assert list(grid) == [256, 512, 768] and values.shape == (2, 3)  # two seeds, one value per update each
    assert np.isfinite(values).all()


def test_plot_any_metric_and_labels_by_config_fields(runs: Path) -> None:
    res = trpo("plot", str(runs / "runs"), "--metric", "kl_max", "--label-by", "update_rule", "--out",
               str(runs / "kl.pdf"))
    assert res.returncode == 0, res.stderr
    assert (runs / "kl.pdf").read_bytes()[:4] == b"%PDF"
    labels = {run.label for run in load_runs([str(runs / "runs")], ["update_rule"])}
    assert labels == {"update_rule=trpo", "update_rule=ppo"}


@pytest.mark.parametrize("args,message", [
    (["nothing-*"], "no run directories (with a metrics.jsonl) match nothing-*"),
    (["runs", "--metric", "no_such_metric"], "no run logs the metric 'no_such_metric'; logged: "),
    (["runs", "--out", "x.nope"], "cannot write x.nope"),
])
def test_plot_errors_are_one_line(runs: Path, args: list[str], message: str) -> None:
    res = trpo("plot", *args, cwd=runs)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("trpo: error:")]
    assert message in line
