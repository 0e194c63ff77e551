#!/usr/bin/env python3
"""The bad-input fuzz tests (tests/test_fuzz.py) with many more examples than the suite runs, random each time.

    .venv/bin/python benchmarks/fuzz.py              # 1000 examples per property, both cores
    .venv/bin/python benchmarks/fuzz.py --examples 200 -k odd

Prints each property's outcome and the time taken; exits with pytest's status. A failure prints the smallest
falsifying example Hypothesis found (add it to the suite as a named case).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="examples per property (default 1000)")
    parser.add_argument("-k", default=None, help="pytest -k expression: run only these properties")
    parser.add_argument("--workers", default="2", help="pytest-xdist workers (default 2)")
    args = parser.parse_args()
    env = dict(os.environ, TRPO_FUZZ_EXAMPLES=str(args.examples))
    cmd = [sys.executable, "-m", "pytest", "tests/test_fuzz.py", "-n", args.workers, "-p", "no:cacheprovider",
           "-rA", "-q", "--hypothesis-show-statistics", *(["-k", args.k] if args.k else [])]
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    print(f"fuzz: {args.examples} examples per property, exit status {code}, "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
