"""Metrics log and progress display."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trpo.logger import MetricsLog, Progress


def test_metrics_log_writes_json_lines_with_null_for_nan_and_truncates_on_resume(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, tensorboard=False)
    for update in (1, 2, 3):
        log.write({"update": update, "step": 100 * update, "episode_return_mean": math.nan, "kl": 0.005})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3] and rows[0]["episode_return_mean"] is None
    MetricsLog(tmp_path, tensorboard=False, keep_updates=2).close()  # resuming from update 2's checkpoint
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]


def test_progress_prints_plain_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(total_steps=1000, stream=stream, interval=3600)
    progress.update(500, 12.5)
    progress.update(600, None)  # within the interval: no new line
    progress.update(1000, 20.0)  # the end always prints
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "500/1000 steps" in lines[0] and "return 12.5" in lines[0] and "ETA" in lines[0]
    assert lines[1].startswith("100%") and "return 20.0" in lines[1]
    assert "\r" not in stream.getvalue()


def lines_of(*lines: str | bytes, end: bytes = b"\n") -> bytes:
    return b"".join((ln if isinstance(ln, bytes) else ln.encode()) + end for ln in lines)


def truncate(run_dir: Path, metrics: bytes, keep_updates: int) -> int:
    """What a resume from update `keep_updates` does to a metrics.jsonl holding `metrics`; returns the env step
    of the last row kept (TensorBoard's purge step is one past it)."""
    log = MetricsLog(run_dir, tensorboard=False)  # before metrics.jsonl exists: nothing to truncate yet
    log.close()
    log.path.write_bytes(metrics)
    return log._truncate(keep_updates)


@pytest.mark.parametrize("bad", [
    '{"update": null, "step": 900}', '{"update": "x", "step": 900}', '{"update": "1", "step": 900}',
    '{"update": 1, "step": "x"}', '{"update": 1, "step": null}', '{"update": 1, "step": 256.5}',
    '{"update": true, "step": 900}', '{"update": 1, "step": false}', '{"update": 1.0, "step": 900}',
    '{"update": 1e400, "step": 900}', '{"update": 1, "step": 1e400}', '{"update": 1, "step": -Infinity}',
    '{"update": NaN, "step": 900}', '{"update": 1, "step": NaN}', '{"step": 900}', '{"update": 1}',
    "7", "[1, 2]", '"text"', "true", "null", "1e400", "{not json", "[" * 100_000, "9" * 5000,
    b"\xff\xfe", b'{"update": 1, "step": 900, "note": "\xff"}',
])
def test_resume_drops_damaged_metrics_rows(tmp_path: Path, bad: str | bytes) -> None:
    good = ['{"update": 1, "step": 256}', '{"update": 2, "step": 512.0}']  # 512.0: an integer-valued step
    metrics = lines_of(good[0], bad, good[1], '{"update": 3, "step": 768}', '{"upda')
    # The damaged row's step (900) is not the last kept: TensorBoard's purge starts after 512.
    assert truncate(tmp_path, metrics, keep_updates=2) == 512
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == good


def test_resume_reads_crlf_lines_and_ends_every_kept_row_with_a_newline(tmp_path: Path) -> None:
    metrics = lines_of('{"update": 1, "step": 256}', '{"update": 2, "step": 512}', end=b"\r\n")
    assert truncate(tmp_path, metrics, keep_updates=5) == 512
    assert (tmp_path / "metrics.jsonl").read_bytes() == b'{"update": 1, "step": 256}\n{"update": 2, "step": 512}\n'


def test_resume_of_a_log_with_no_row_left_purges_all_tensorboard_events(tmp_path: Path) -> None:
    assert truncate(tmp_path, lines_of('{"update": "1", "step": 256}', b"\xff"), keep_updates=3) == 0
    assert (tmp_path / "metrics.jsonl").read_bytes() == b""


# Any JSON value; integers around keep_updates are drawn often so that both sides of it are seen.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 8) | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
any_rows = st.builds(
    lambda extra, fields: {**extra, **fields},
    st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    st.fixed_dictionaries({}, optional={"update": json_values, "step": json_values, "kl": json_values}),
)
well_formed_rows = st.fixed_dictionaries(
    {"update": st.integers(-2, 8), "step": st.integers(0, 10**6) | st.integers(0, 10**6).map(float)},
    optional={"kl": json_values},
)
no_line_break = st.characters(codec="utf-8", exclude_characters="\r\n")  # utf-8: no lone surrogates


def is_row(value: Any) -> bool:
    """The spec of a row this run wrote, stated apart from the logger's code."""
    if not isinstance(value, dict) or type(value.get("update")) is not int:
        return False
    step = value.get("step")
    return type(step) is int or (type(step) is float and math.isfinite(step) and step == int(step))


# (the line's bytes, its JSON value where it is one of the rows drawn). Text and bytes that are not rows: a line
# starting with "{" is left to the row strategies.
lines = st.one_of(
    st.tuples(any_rows | well_formed_rows, st.booleans()).map(
        lambda v: (json.dumps(v[0], ensure_ascii=v[1]).encode(), v[0])),
    st.text(no_line_break, max_size=20).filter(lambda s: not s.lstrip().startswith("{")).map(
        lambda s: (s.encode(), None)),
    st.binary(max_size=20).filter(lambda b: b"\n" not in b and b"\r" not in b and not b.lstrip().startswith(b"{"))
    .map(lambda b: (b, None)),
)


@settings(max_examples=100, deadline=None)
@given(drawn=st.lists(lines, max_size=12), keep_updates=st.integers(0, 6), final_newline=st.booleans())
def test_resume_keeps_exactly_the_well_formed_rows_up_to_the_checkpoint(
        tmp_path_factory: pytest.TempPathFactory, drawn: list[tuple[bytes, Any]], keep_updates: int,
        final_newline: bool) -> None:
    metrics = b"\n".join(line for line, _ in drawn) + b"\n" * final_newline
    kept_rows = [(line, value) for line, value in drawn if is_row(value) and value["update"] <= keep_updates]
    kept = b"".join(line + b"\n" for line, _ in kept_rows)
    run_dir = tmp_path_factory.mktemp("run")
    assert truncate(run_dir, metrics, keep_updates) == max((int(value["step"]) for _, value in kept_rows), default=0)
    assert (run_dir / "metrics.jsonl").read_bytes() == kept
    # and through the constructor, as a resume calls it
    (run_dir / "metrics.jsonl").write_bytes(metrics)
    MetricsLog(run_dir, tensorboard=False, keep_updates=keep_updates).close()
    assert (run_dir / "metrics.jsonl").read_bytes() == kept
