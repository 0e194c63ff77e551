"""`trpo plot` on real run directories made by `trpo train` (through the CLI's main(), in this process), and on
damaged hand-made ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from clitools import cli, error_lines, run_cli, run_cli_output
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import FAST
from test_logger import json_values, lines, lines_of

from trpo.plot import PlotError, curves, load_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plot")
    for name, args in [("cp-s0", ["--seed", "0"]), ("cp-s1", ["--seed", "1"]),
                       ("pend-ppo-s0", ["--env", "Pendulum-v1", "--update-rule", "ppo"])]:
        res = cli("train", "--total-steps", "768", "--run-dir", str(root / "runs" / name), *args, *FAST)
        assert res.returncode == 0, res.stderr
    return root


def test_plot_groups_runs_by_env_and_label(runs: Path) -> None:
    res = cli("plot", "runs/*", "--out", "curves.png", cwd=runs)
    assert res.returncode == 0, res.stderr
    assert "3 runs in 2 groups" in res.stdout
    assert (runs / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = curves(load_runs([str(runs / "runs")]), "episode_return_mean")
    assert set(data) == {"CartPole-v1", "Pendulum-v1"} and set(data["CartPole-v1"]) == {"cp"}
    grid, values = data["CartPole-v1"]["cp"]
    assert list(grid) == [256, 512, 768] and values.shape == (2, 3)  # two seeds, one value per update each
    assert np.isfinite(values).all()


def test_plot_any_metric_and_labels_by_config_fields(runs: Path) -> None:
    res = cli("plot", str(runs / "runs"), "--metric", "kl_max", "--label-by", "update_rule", "--out",
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
    res = cli("plot", *args, cwd=runs)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("trpo: error:")]
    assert message in line


# Hand-made run directories: what a damaged or hand-edited one gives.

def make_run(run_dir: Path, metrics: bytes, config: bytes | None = b"env: CartPole-v1\n") -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_bytes(metrics)
    if config is not None:
        (run_dir / "config.yaml").write_bytes(config)
    return run_dir


GOOD = lines_of('{"step": 100, "m": 1.0}', '{"step": 200, "m": 2}')


@pytest.mark.parametrize("bad", [
    "7", "[1, 2]", '"text"', "null", "{not json", '{"m": 5}', '{"step": null, "m": 5}', '{"step": "150", "m": 5}',
    '{"step": true, "m": 5}', '{"step": NaN, "m": 5}', '{"step": Infinity, "m": 5}', '{"step": 1e400, "m": 5}',
    '{"step": [150], "m": 5}', "[" * 100_000, b"\xff\xfe", b'{"step": 150, "m": 5, "note": "\xff"}',
    # a usable step (200, already on the grid) with no usable value: the row adds no point
    '{"step": 200, "m": "5"}', '{"step": 200, "m": null}', '{"step": 200, "m": true}', '{"step": 200, "m": NaN}',
    '{"step": 200, "m": [5]}', '{"step": 200, "m": ' + "9" * 400 + "}",
])
def test_plot_skips_rows_without_a_numeric_step_or_value(tmp_path: Path, bad: str | bytes) -> None:
    make_run(tmp_path / "r-s0", lines_of(bad) + GOOD + lines_of(bad))
    data = curves(load_runs([str(tmp_path / "r-s0")]), "m")
    grid, values = data["CartPole-v1"]["r"]
    assert list(grid) == [100, 200] and values.tolist() == [[1.0, 2.0]]


def test_plot_sorts_a_runs_rows_by_step(tmp_path: Path) -> None:
    make_run(tmp_path / "r", lines_of('{"step": 300, "m": 3}', '{"step": 100, "m": 1}', '{"step": 200.0, "m": 2}'))
    grid, values = curves(load_runs([str(tmp_path / "r")]), "m")["CartPole-v1"]["r"]
    assert list(grid) == [100, 200, 300] and values.tolist() == [[1.0, 2.0, 3.0]]


@pytest.mark.parametrize("metrics,message", [
    (lines_of("7", '{"step": "x", "m": 1}', b"\xff"), "hold no metrics rows yet"),
    (lines_of('{"step": 100, "m": "x"}', '{"step": 200, "m": null}'), "no run has a value of 'm' to plot"),
])
def test_plot_with_nothing_left_after_skipping_says_so(tmp_path: Path, metrics: bytes, message: str) -> None:
    make_run(tmp_path / "r", metrics)
    with pytest.raises(PlotError, match=message):
        curves(load_runs([str(tmp_path / "r")]), "m")


def test_plot_lists_hand_edited_metric_names_on_one_line(tmp_path: Path) -> None:
    make_run(tmp_path / "r", lines_of('{"step": 100, "a\\nb": 1, "\\u001b[2J": 2}'))
    with pytest.raises(PlotError) as info:
        curves(load_runs([str(tmp_path / "r")]), "m")
    assert str(info.value) == "no run logs the metric 'm'; logged: '\\x1b[2J', 'a\\nb', step"


@pytest.mark.parametrize("config,message", [
    (b"env: [CartPole-v1\n", "config.yaml is not valid YAML (line 2)"),
    (b"env: CartPole-v1\n  seed: 0\n", "config.yaml is not valid YAML (line 2)"),
    (b"env: x\x00\n", "config.yaml is not valid YAML"),
    (b"started: 2024-13-45\n", "config.yaml is not valid YAML"),
    (b"!!python/object:os.system {}\n", "config.yaml is not valid YAML (line 1)"),
    (b"- CartPole-v1\n- 0\n", "config.yaml is not a YAML mapping"),
    (b"CartPole-v1\n", "config.yaml is not a YAML mapping"),
    (b"env: CartPole-v1\xff\n", "config.yaml is not UTF-8"),
    (b"env: 3\n", "config.yaml: env is not a string"),
    (b"env: [CartPole-v1]\n", "config.yaml: env is not a string"),
    (b"env: {id: CartPole-v1}\n", "config.yaml: env is not a string"),
])
def test_plot_of_a_run_whose_config_is_no_mapping_names_the_file(tmp_path: Path, config: bytes, message: str) -> None:
    run = make_run(tmp_path / "r", GOOD, config)
    with pytest.raises(PlotError) as info:
        load_runs([str(tmp_path)])
    assert str(info.value) == str(run / "config.yaml") + message.removeprefix("config.yaml")


@pytest.mark.parametrize("config", [None, b"", b"# only a comment\n", b"env:\n", b"seed: 0\n"])
def test_plot_of_a_run_without_an_env_uses_unknown_env(tmp_path: Path, config: bytes | None) -> None:
    make_run(tmp_path / "r", GOOD, config)
    assert [run.env for run in load_runs([str(tmp_path / "r")])] == ["unknown env"]


def test_plot_of_an_unreadable_metrics_log_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "runs" / "r" / "metrics.jsonl").mkdir(parents=True)
    for pattern in ("runs", "runs/r", "runs/*"):  # found through its parent, by name and by glob alike
        with pytest.raises(PlotError, match=r"^cannot read .*metrics\.jsonl: Is a directory$"):
            load_runs([str(tmp_path / pattern)])
    # Root reads any file whatever its mode, so the permission error is made, not set up with chmod.
    make_run(tmp_path / "locked", GOOD)
    read_bytes = Path.read_bytes

    def no_permission(path: Path) -> bytes:
        if path.name == "metrics.jsonl":
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", no_permission)
    with pytest.raises(PlotError, match=r"^cannot read .*locked/metrics\.jsonl: Permission denied$"):
        load_runs([str(tmp_path / "locked")])


def test_plot_labels_by_config_fields_holding_lists_and_mappings(tmp_path: Path) -> None:
    make_run(tmp_path / "a", GOOD, b"env: CartPole-v1\nhidden_sizes: [64, 64]\nextra: {k: 1}\n")
    make_run(tmp_path / "b", GOOD, b"env: CartPole-v1\nhidden_sizes: [32]\n")
    runs = load_runs([str(tmp_path)], ["hidden_sizes", "extra"])
    assert [run.label for run in runs] == ["hidden_sizes=[64, 64] extra={'k': 1}", "hidden_sizes=[32] extra=None"]
    assert set(curves(runs, "m")["CartPole-v1"]) == {run.label for run in runs}


def test_plot_of_a_damaged_run_is_one_error_line(tmp_path: Path) -> None:
    make_run(tmp_path / "r", GOOD, b"- not a mapping\n")
    res = cli("plot", str(tmp_path / "r"), "--out", str(tmp_path / "c.png"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"trpo: error: {tmp_path / 'r' / 'config.yaml'} is not a YAML mapping"]


# Rows with a step, and configs that are mappings, more often than chance would draw them: many examples then get
# as far as curves().
plot_rows = st.fixed_dictionaries({"step": st.integers(-5, 1000) | st.floats() | json_values,
                                   "kl": st.floats(-1, 1) | st.floats() | json_values}).map(
    lambda v: (json.dumps(v).encode(), v))
metrics_logs = st.lists(st.booleans().flatmap(lambda row: plot_rows if row else lines), min_size=1, max_size=8)
configs = st.one_of(
    st.none(),
    st.binary(max_size=30),
    st.text(max_size=30).map(str.encode),
    json_values.map(lambda v: yaml.safe_dump(v).encode()),
    st.dictionaries(st.sampled_from(["env", "seed", "update_rule"]) | st.text(max_size=5), json_values, max_size=4)
    .map(lambda v: yaml.safe_dump(v).encode()),
    st.fixed_dictionaries({"env": st.sampled_from(["CartPole-v1", "Pendulum-v1"])}, optional={"seed": json_values})
    .map(lambda v: yaml.safe_dump(v).encode()),
)


@settings(max_examples=100, deadline=None)
@given(runs=st.lists(st.tuples(metrics_logs, configs), min_size=1, max_size=3),
       label_by=st.lists(st.sampled_from(["env", "seed", "kl", "update_rule"]), max_size=2),
       metric=st.sampled_from(["kl", "step", "m"]))
def test_plot_of_any_run_directories_plots_or_raises_a_plot_error(
        tmp_path_factory: pytest.TempPathFactory, runs: list[tuple[list[tuple[bytes, Any]], bytes | None]],
        label_by: list[str], metric: str) -> None:
    root = tmp_path_factory.mktemp("runs")
    for i, (drawn, config) in enumerate(runs):
        make_run(root / f"r{i}", b"\n".join(line for line, _ in drawn), config)
    try:
        data = curves(load_runs([str(root)], label_by), metric)
    except PlotError as exc:
        assert "\n" not in str(exc)  # one line
        return
    for groups in data.values():
        for grid, values in groups.values():
            assert np.isfinite(grid).all() and values.shape[1] == len(grid)


def test_plot_draws_the_periodic_evaluations_as_eval_metrics(runs: Path, tmp_path: Path) -> None:
    evaluated = [tmp_path / "runs" / f"ev-s{seed}" for seed in (0, 1)]
    for seed, run in enumerate(evaluated):
        code, err = run_cli(["train", "--total-steps", "512", "--run-dir", str(run), "--seed", str(seed),
                             "--eval-every", "256", "--vector-mode", "sync", *FAST])
        assert code == 0, err
    code, out, err = run_cli_output(["plot", str(tmp_path / "runs"), "--metric", "eval/mean_return", "--out",
                                     str(tmp_path / "eval.png")])
    assert code == 0 and out == f"trpo: plotted eval/mean_return of 2 runs in 1 groups -> {tmp_path / 'eval.png'}\n"
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The curve is evaluations.jsonl's, not metrics.jsonl's: one point per evaluation, each run's own values.
    grid, values = curves(load_runs([str(tmp_path / "runs")]), "eval/mean_length")["CartPole-v1"]["ev"]
    logged = [[json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()] for run in evaluated]
    assert list(grid) == [256, 512] and values.tolist() == [[row["mean_length"] for row in rows] for rows in logged]
    # Runs that never evaluated: one line saying where evaluations come from.
    code, err = run_cli(["plot", str(runs / "runs"), "--metric", "eval/mean_return"])
    (line,) = error_lines(err)
    assert code == 2 and line == ("trpo: error: 'eval/mean_return' comes from periodic evaluations, and none of "
                                  "these runs has any (evaluations.jsonl: trpo train --eval-every N)")
    with pytest.raises(PlotError, match="no run logs the metric 'eval/returns'") as error:
        curves(load_runs([str(tmp_path / "runs")]), "eval/returns")  # lists of returns are no curve
    assert ", episodes, eval/capped, eval/mean_length, eval/mean_return, eval/std_return, expected_gain, " in str(
        error.value)
