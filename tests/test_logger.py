"""Metrics log and progress display."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

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
