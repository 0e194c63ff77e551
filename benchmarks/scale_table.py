"""The table of docs/scale.md from `trpo bench` run directories: per env and label, the final evaluation of each seed
and their mean, and the median per-update time split (collection, policy step, value fit; the metrics rows'
`time_rollout`, `time_policy`, `time_value`) over all updates of all seeds, with the policy step's speed-up
against the `cg` label of the same env.

    .venv/bin/python benchmarks/scale_table.py runs/minatar36
    .venv/bin/python benchmarks/scale_table.py runs/humanoid36 --baseline cg

Times are only comparable between runs made on the same machine under the same load (docs/scale.md says which).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def runs(out: Path) -> dict[tuple[str, str], list[Path]]:
    """(env, label) -> the finished run directories (those with an eval.json), seeds in order."""
    found: dict[tuple[str, str], list[Path]] = {}
    for evaluation in sorted(out.rglob("eval.json")):
        run = evaluation.parent
        label, _, seed = run.name.rpartition("-s")
        if not seed.isdigit():
            continue
        env = run.parent.relative_to(out).as_posix()
        found.setdefault((env, label), []).append(run)
    for key in found:
        found[key].sort(key=lambda run: int(run.name.rpartition("-s")[2]))
    return found


def split(run_dirs: list[Path]) -> dict[str, float]:
    """Median seconds per update of each phase, over every update of these runs."""
    rows = [json.loads(line) for run in run_dirs for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {phase: statistics.median(float(r[f"time_{phase}"]) for r in rows)
            for phase in ("rollout", "policy", "value")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the --out directory of trpo bench")
    parser.add_argument("--baseline", default="cg", help="the label the policy step's speed-up is measured against")
    args = parser.parse_args()
    table = runs(args.out)
    print("| env | label | seeds | final eval per seed | mean | collection s | policy step s | value fit s | "
          f"policy step: {args.baseline} / this |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (env, label), run_dirs in sorted(table.items()):
        finals = [json.loads((run / "eval.json").read_text())["mean_return"] for run in run_dirs]
        times = split(run_dirs)
        base = table.get((env, args.baseline))
        ratio = f"{split(base)['policy'] / times['policy']:.2f}x" if base else "-"
        seeds = " ".join(run.name.rpartition("-s")[2] for run in run_dirs)
        print(f"| {env} | {label} | {seeds} | {', '.join(f'{v:.1f}' for v in finals)} | "
              f"{statistics.mean(finals):.1f} | {times['rollout']:.3f} | {times['policy']:.3f} | "
              f"{times['value']:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
