"""Do recorded runs still stand for this code? Each run directory's first updates are trained again from its own
config.yaml (env, seed, every field) with the code here, and the metrics rows compared with the record's.

    .venv/bin/python benchmarks/replay.py docs/results/suite/Walker2d-v5/trpo-s0 --updates 20
    .venv/bin/python benchmarks/replay.py docs/results/suite/*/kl02-s0 docs/results/box2d/*/adam-eps-s0

Each line also says whether the env's preset here gives the record's config (fields a resumed run may change,
which only place the work, such as vector_mode, aside): identical rows and the preset's config mean the preset
trains those runs today.
Identical rows (every key but the timings) mean this code trains those runs as recorded, on this machine: the
records' returns are then this code's. Runs are bit-identical on one machine, not across CPUs, so a record made
elsewhere can differ from the first row without any change in the code; and a resumed run's envs start from fresh
seeds (docs/runs.md), so a record is compared only up to its first resume. A peer's run (sb3-contrib, rl-zoo) has no
trpo config and is skipped. Exit status 1 where a record differs or could not be trained again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

# Timing keys differ between any two runs; the fields a resumed run may change only place the work (runs are
# bit-identical across them: tests), so a preset that differs from a record only there gives the same runs.
from trpo.config import RESUME_SAFE_FIELDS
from trpo.logger import TIMING_FIELDS


def rows(metrics: Path, count: int) -> list[dict[str, Any]]:
    out = []
    for line in metrics.read_text().splitlines()[:count]:
        row = json.loads(line)
        out.append({k: v for k, v in row.items() if k not in TIMING_FIELDS})
    return out


def first_difference(recorded: list[dict[str, Any]], replayed: list[dict[str, Any]]) -> str | None:
    """None where the replayed rows hold the recorded ones, else where they first part. Keys the log gained since
    the record was made are not compared."""
    if len(replayed) < len(recorded):
        return f"replay wrote {len(replayed)} rows, the record {len(recorded)}"
    for i, (old, new) in enumerate(zip(recorded, replayed, strict=False)):
        for key in sorted(old):
            if key not in new or old[key] != new[key]:
                return f"update {i + 1}, {key}: recorded {old[key]!r}, replayed {new.get(key, 'nothing')!r}"
    return None


def preset_difference(record: dict[str, Any]) -> str:
    """Whether the env's preset here (`auto`, as `trpo train --env ENV` takes it) gives the record's config."""
    from trpo.config import RUN_RECORD_KEYS, TRPOConfig
    from trpo.resolve import resolve_config

    fields = {k: v for k, v in record.items() if k not in RUN_RECORD_KEYS}
    recorded = TRPOConfig.from_dict(fields).to_dict()
    preset_config, name = resolve_config(record["env"], "auto")
    now = preset_config.to_dict()
    differ = [f"{k} {recorded[k]!r} (preset {now[k]!r})" for k in recorded if k not in RESUME_SAFE_FIELDS
              and recorded[k] != now[k]]
    return f"the {name or 'no'} preset gives " + ("this config" if not differ else "another: " + ", ".join(differ))


def replay(run_dir: Path, updates: int) -> str:
    record = yaml.safe_load((run_dir / "config.yaml").read_text())
    if "library" in record:
        return "skipped (a peer's run)"
    recorded = rows(run_dir / "metrics.jsonl", updates)
    batch = int(record["num_envs"]) * int(record["steps_per_env"])
    with tempfile.TemporaryDirectory(prefix="trpo-replay-") as tmp:
        cmd = [sys.executable, "-m", "trpo.cli", "train", "--config", str(run_dir / "config.yaml"),
               "--total-steps", str(len(recorded) * batch), "--eval-episodes", "0", "--no-progress",
               "--run-dir", str(Path(tmp) / "run")]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            return f"replay failed: {res.stderr.strip().splitlines()[-1]}"
        difference = first_difference(recorded, rows(Path(tmp) / "run" / "metrics.jsonl", updates))
    rows_said = f"differs at {difference}" if difference else f"identical over {len(recorded)} updates"
    return f"{rows_said}; {preset_difference(record)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories holding config.yaml and metrics.jsonl")
    parser.add_argument("--updates", type=int, default=10, help="updates to train again per run (default 10)")
    args = parser.parse_args()
    failed = 0
    for run_dir in args.runs:
        said = replay(run_dir, args.updates)
        failed += said.startswith(("differs", "replay failed"))
        print(f"{run_dir}: {said}", flush=True)
    if failed:  # a check that says "differs" must not pass a script or CI that runs it
        print(f"{failed} of {len(args.runs)} records not trained again as recorded", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
