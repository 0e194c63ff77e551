"""benchmarks/suite.py: runs are ordinary run directories; finished ones are skipped, started ones resumed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
SMALL = ["--set", "steps_per_env=128", "value_epochs=2", "eval_episodes=2"]


def suite(tmp: Path, *args: str) -> str:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--env", "CartPole-v1",
                          "--seeds", "0", "1", "--out", str(tmp), *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_suite_runs_skips_and_resumes(tmp_path: Path) -> None:
    out = suite(tmp_path, "--steps", "512", *SMALL)
    runs = [tmp_path / "CartPole-v1" / f"trpo-s{s}" for s in (0, 1)]
    for run in runs:
        assert json.loads((run / "eval.json").read_text())["step"] == 512
        assert (run / "checkpoints" / "latest.pt").is_file()
    assert "| CartPole-v1 | trpo | 512 | 0 1 |" in out
    again = suite(tmp_path, "--steps", "512", *SMALL)
    assert again.count("done already") == 2
    # A larger budget continues both runs from their checkpoints: rows 1-2 kept, 3-4 added.
    more = suite(tmp_path, "--steps", "1024", *SMALL)
    for run in runs:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["update"] for r in rows] == [1, 2, 3, 4]
    assert "| CartPole-v1 | trpo | 1,024 | 0 1 |" in more
    assert "| 500 |" in more  # rl-zoo's CartPole figure beside ours


def test_suite_sets_any_field_booleans_included(tmp_path: Path) -> None:
    suite(tmp_path, "--steps", "256", "--label", "vine", "--set", "steps_per_env=128", "value_epochs=1",
          "eval_episodes=1", "normalize_advantages=false", "sampling=vine", "vine_states=4")
    config = (tmp_path / "CartPole-v1" / "vine-s0" / "config.yaml").read_text()
    assert "normalize_advantages: false" in config and "sampling: vine" in config and "vector_mode: sync" in config
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--env", "CartPole-v1", "--set",
                          "max_kl=big", "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--set: max_kl: cannot read 'big' as float" in bad.stderr
