"""`trpo` run in this process through `main()`: what a subprocess would show (exit status, stderr) without the
2-3 s each one spends importing torch. Tests that need the process itself (signals, exit on a closed pipe, the
imports a command makes) start one instead (test_cli.py)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path

from trpo.cli import main


def run_cli(argv: list[str], cwd: Path | None = None) -> tuple[int, str]:
    """trpo's main() in this process, in `cwd` if given: its exit status and what it wrote to stderr. Anything it
    raises fails the test, as a traceback would."""
    code, _, err = run_cli_output(argv, cwd)
    return code, err


def run_cli_output(argv: list[str], cwd: Path | None = None) -> tuple[int, str, str]:
    """As run_cli, with what it wrote to stdout: (exit status, stdout, stderr)."""
    err, out = io.StringIO(), io.StringIO()
    before = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's --help and --version end the process, as they would there
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        os.chdir(before)
    return code, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("trpo: error:")]


def assert_normal_or_one_error_line(code: int, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = error_lines(stderr)
    if code == 0:
        assert not errors, stderr
    else:
        assert code == 2 and len(errors) == 1, (code, stderr)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`trpo ARGS` through main() in this process, answered as test_cli.trpo's subprocess is (returncode, stdout,
    stderr): for tests whose subject is what a command does, not the process it runs in."""
    code, out, err = run_cli_output(list(args), cwd)
    return subprocess.CompletedProcess(["trpo", *args], code, out, err)
