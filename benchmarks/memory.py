"""Peak memory of every preset, this checkout against another commit's, by the same command line.

    git worktree add /tmp/base 7e89de4                      # the commit to compare with
    .venv/bin/python benchmarks/memory.py --base /tmp/base  # every preset, 4 updates each
    .venv/bin/python benchmarks/memory.py --preset Hopper CartPole --updates 8 --repeats 3
    .venv/bin/python benchmarks/memory.py --preset Walker2d --flags=--num-workers=1     # extra flags for both runs

For each preset, `trpo train --env ENV --total-steps STEPS --checkpoint-every 1` runs as a fresh process, once with
this checkout's package and once with the base checkout's (PYTHONPATH, same interpreter and installed libraries),
alternately, `--repeats` times; the median peak of each is reported. STEPS is `--updates` batches of the preset's
batch size here. A run ends as users' runs do: a checkpoint after every update, the final save and the final
evaluation. Two figures: the peak proportional set size (PSS) of the process and all its descendants (env workers
included, the pages they share with their parent counted once), sampled every 50 ms, which can miss a short peak;
and the kernel's exact peak resident size of the largest process, the learner (ru_maxrss). Memory does not depend on CPU
load the way timings do, so other jobs may run meanwhile. A preset the base commit did not have is run there all
the same (the env at that commit's defaults, or whatever preset it chose), and marked; an env whose module the base
checkout lacks (trpo.pomdp's tasks before they existed) is not run there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import PeakRSS  # the same PSS reading as the speed benchmark

from trpo.resolve import PRESET_ENVS

ROOT = Path(__file__).resolve().parent.parent


def peak_of(command: list[str], checkout: Path, cwd: Path) -> tuple[int, int, int]:
    """Run `command` with `checkout` first on the import path; (peak PSS of its process tree sampled every 50 ms,
    the kernel's exact peak RSS of its largest process (the learner), both in bytes; exit code)."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        peak, done = 0, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, PeakRSS._tree_rss(proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)  # ru_maxrss: the largest RSS the process or a descendant reached
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
        if code:
            err.seek(0)
            print(f"    exit {code}: {err.read().decode(errors='replace').strip().splitlines()[-1:]}", flush=True)
    return peak, usage.ru_maxrss * 1024, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="a checkout of the commit to compare with")
    parser.add_argument("--preset", nargs="+", choices=list(PRESET_ENVS), default=list(PRESET_ENVS))
    parser.add_argument("--updates", type=int, default=4, help="updates per run (default 4)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each command per checkout (median kept)")
    parser.add_argument("--flags", default="", help="extra `trpo train` flags for both checkouts, space-separated")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    from trpo.resolve import resolve_config

    def commit(path: Path) -> str:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()

    checkouts = {"head": ROOT, "base": args.base.resolve()}
    base_presets = set(json.loads(subprocess.run(
        [sys.executable, "-c", "import json; from trpo.resolve import PRESETS; print(json.dumps(list(PRESETS)))"],
        env={**os.environ, "PYTHONPATH": str(checkouts["base"])}, cwd=tempfile.gettempdir(),  # not this checkout's
        capture_output=True, text=True, check=True).stdout))
    head_id, base_id = commit(ROOT), commit(args.base)
    print(f"head {head_id} against base {base_id}, {args.updates} updates a run, {args.repeats} "
          f"run(s) each, extra flags: {args.flags or 'none'}", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.preset:
            env_id = PRESET_ENVS[preset]
            config, _ = resolve_config(env_id, preset)
            steps = config.batch_size * args.updates
            row: dict[str, Any] = {"preset": preset, "env": env_id, "steps": steps,
                                   "new": preset not in base_presets}
            peaks: dict[str, dict[str, list[int]]] = {name: {"pss": [], "maxrss": []} for name in checkouts}
            module = env_id.split(":")[0] if ":" in env_id else None
            for repeat, (name, checkout) in ((r, c) for r in range(args.repeats) for c in checkouts.items()):
                if module and not (checkout / (module.replace(".", "/") + ".py")).is_file():
                    row[name] = None  # the module came later
                    continue
                run_dir = Path(tmp) / f"{preset}-{name}-{repeat}"
                command = [sys.executable, "-m", "trpo.cli", "train", "--env", env_id, "--total-steps", str(steps),
                           "--run-dir", str(run_dir), "--checkpoint-every", "1", "--no-progress", *args.flags.split()]
                pss, maxrss, code = peak_of(command, checkout, Path(tmp))
                if code:
                    row[name] = None
                    break
                peaks[name]["pss"].append(pss)
                peaks[name]["maxrss"].append(maxrss)
                row[name] = {key: int(statistics.median(values)) for key, values in peaks[name].items()}
                row[name]["runs"] = peaks[name]
            head, base = row["head"], row["base"]
            row["ratio"] = {key: head[key] / base[key] for key in ("pss", "maxrss")} if head and base else None
            rows.append(row)
            said = [f"{name} " + (f"{v['pss'] / 2**20:6.1f} MiB PSS {v['maxrss'] / 2**20:6.1f} MiB RSS" if v
                                  else "not run") for name, v in (("head", head), ("base", base))]
            print(f"  {preset:28s} " + "  ".join(said) + ("  (a new preset)" if row["new"] else ""), flush=True)
    print()
    print(f"| preset | env | steps | peak PSS, process tree, {head_id} / {base_id} | ratio | peak RSS, learner, "
          f"{head_id} / {base_id} | ratio |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        head, base, name = row["head"], row["base"], row["preset"] + (" (new)" if row["new"] else "")
        cells = [f"{head[key] / 2**20:.0f} / " + (f"{base[key] / 2**20:.0f} MiB | {row['ratio'][key]:.2f}" if base
                                                   else "not run |") for key in ("pss", "maxrss")]
        print(f"| {name} | {row['env']} | {row['steps']:,} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps({"head": head_id, "base": base_id, "updates": args.updates,
                                        "repeats": args.repeats, "flags": args.flags,
                                        "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
