"""Every fenced code block of README.md and docs/ (docs/results/ holds run records, not pages) runs as a reader
runs it, so that a wrong example fails here and not for a user.

How a page runs (one test per page, or per block for the pages in BY_BLOCK, so that pytest-xdist spreads them):
- in a fresh directory (tmp_path) holding a copy of benchmarks/ and, where the page reads records, docs/results/
  (copies: a command that writes there must not touch the repository); `trpo` and `python` are this interpreter's,
  its directory first on PATH; the page's blocks in order, so a line may use what an earlier one made;
- ```bash: each command (a trailing backslash joins lines; `#` lines are comments), rewritten by the rules below,
  through bash, or a plain `trpo ARGS` line through trpo's main() in this process (`trpo_argv`): it must exit 0.
  ```console: the same for its `$ ` lines;
- ```python: run in this process as a script of its own (`exec`, in the page's directory): it must not raise.
  README.md's runs twice (a second run must not trip over the run directory of the first);
- ```yaml title="NAME": a file the page's commands use, written to NAME before they run; any other yaml must parse;
- ```text: output or a layout, not run. A block of any other language, or none, fails: say which it is;
- a command or block in SKIPPED does not run; each entry says why, and a test fails on an entry that names nothing;
- the pages in RECIPES (how recorded results were made) are marked `docs_recipes`: about half of the time.

Rewrite rules: budgets only, so that a page runs in seconds (the docs keep their real budgets):
- `.venv/bin/PROGRAM` -> `PROGRAM` (this interpreter's directory is first on PATH); `pip install` lines do not run:
  this environment holds every extra (scripts/dev.py's set-up is tests/test_setup.py's);
- `trpo train`: --total-steps at most STEPS (added where missing, except with --resume, which keeps its run's);
  --eval-every and --save-every at most STEPS; --eval-episodes at most EPISODES (added where missing);
- `trpo eval`: --episodes at most EPISODES (added where missing);
- `trpo tune`: --trials 1 and --total-steps at most STEPS (both added where missing), --jobs 1;
- `trpo bench`: --steps at most STEPS, --seeds the first given (both added where missing: 0), --jobs 1; its own
  runs (not a --peer's) eval_episodes=EPISODES, first in --set (a value the line sets itself wins);
- `benchmarks/NAME.py`: of the flags the script defines, --steps at most STEPS, --updates at most UPDATES, --seeds
  the first given, --jobs 1 (each added where missing), --returns at most STEPS;
- `trpo bench` and `benchmarks/NAME.py`: --env trains its first id only (every env id a page names is checked to be
  registered, without training: test_every_env_id_is_registered);
- not with --summary (`trpo bench`, `trpo tune`): it trains nothing, and reads records at their real budgets;
- Python: `learn(N)` learns at most STEPS steps, `episodes=N` at most EPISODES.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from clitools import cli

ROOT = Path(__file__).resolve().parent.parent
STEPS = 2048  # one batch of the presets' usual 2 envs x 1024 steps
EPISODES = 1
UPDATES = 2  # the benchmarks time the updates after the first
TIMEOUT = 600  # seconds per command: a hung command fails instead of stalling the suite

# (page, text in the command or the Python block) -> why it does not run here. Only what cannot: a reader's own
# files, a cluster, a set-up from the network, a benchmark whose minutes or hours no budget flag shortens.
SKIPPED: dict[tuple[str, str], str] = {
    **{(page, "python3 scripts/dev.py setup"): "creates .venv and installs PyTorch and trpo from the network "
       "(minutes); its choices are tested in tests/test_setup.py" for page in ("README.md", "docs/index.md",
                                                                                 "docs/install.md")},
    **{(page, "python3 scripts/dev.py test"): "runs ruff and this whole test suite after a set-up"
       for page in ("README.md", "docs/index.md", "docs/install.md")},
    ("docs/train.md", "my_package.envs:MyEnv-v0"): "a placeholder for the reader's own package",
    ("docs/ray.md", "--ray-address auto"): "joins the Ray cluster this machine is in: there is none",
    ("docs/results.md", "--peer tianshou"): "Tianshou is in the bench extra, not the test one (it pins pandas<3 and "
    "an older filelock; docs/bench.md): its peer runs end to end in tests/test_peer_tianshou.py where installed",
    ("docs/recurrent.md", "benchmarks/recurrent.py"): "no budget flag: each task's budget is fixed (100k-1M steps) and "
    "RecurrentPPO runs with it, 7-90 minutes a run",
    ("docs/speed.md", "benchmarks/memory.py --base /tmp/base"): "compares with a checkout of another commit in "
    "/tmp/base (git worktree add), every preset 3 times: tens of minutes",
    ("docs/speed.md", "benchmarks/speed.py"): "its whole-process scenarios have fixed budgets (Hopper 200k and "
    "CartPole 100k steps, trpo and sb3-contrib each) and its CNN step times autograd's products (30 s and more): "
    "10 minutes and more at any --updates",
    ("docs/ray.md", "benchmarks/rollout_modes.py --updates 16"): "2 envs x 7 modes, 4 of them starting a Ray runtime: "
    "minutes at any --updates (the modes' runs are tested equal in tests/test_ray.py and tests/test_envpool.py); "
    "docs/speed.md's line runs the same script",
}
# Pages whose blocks are independent and heavy enough to run as separate tests.
BY_BLOCK = {"docs/results.md"}
# Pages whose blocks are the recipes of recorded results (benchmarks, bench suites): about half of this file's time,
# marked `docs_recipes` so that a quicker lane can leave them out (`-m "not docs_recipes"`).
RECIPES = {"docs/results.md", "docs/speed.md", "docs/family.md", "docs/vine.md", "docs/masking.md"}
PYTHON_TWICE = {"README.md"}  # its example writes runs/cartpole: run again, it must still work
RUNNABLE = {"bash", "console", "python", "yaml", "text"}


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    title: str | None
    text: str


def pages() -> list[str]:
    docs = sorted(p for p in (ROOT / "docs").rglob("*.md") if "results" not in p.relative_to(ROOT / "docs").parts)
    return ["README.md", *(p.relative_to(ROOT).as_posix() for p in docs)]


def blocks(page: str) -> list[Block]:
    """The fenced code blocks of a page (``` or ~~~, at any indent), in order."""
    lines = (ROOT / page).read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = re.match(r"^ *(`{3,}|~{3,})\s*([\w+-]*)(.*)$", lines[i])
        if not m:
            i += 1
            continue
        fence, start, body = m.group(1), i, []
        i += 1
        while i < len(lines) and not re.match(rf"^ *{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        title = re.search(r'title="([^"]+)"', m.group(3))
        found.append(Block(page, start + 1, m.group(2).lower(), title and title.group(1), "\n".join(body)))
        i += 1
    return found


def commands(block: Block) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines dropped."""
    text = block.text.replace("\\\n", " ")
    if block.lang == "console":
        return [line[2:] for line in text.splitlines() if line.startswith("$ ")]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def split_comment(command: str) -> tuple[str, str]:
    """(the command, its trailing comment): a # after whitespace, outside quotes."""
    quote = None
    for i, char in enumerate(command):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i].rstrip(), command[i:]
    return command, ""


def _has(command: str, flag: str) -> bool:
    return re.search(rf"(?<!\S){flag}(?=[\s=]|$)", command) is not None


def _cap(command: str, flag: str, limit: int, add: bool = False) -> str:
    if not _has(command, flag):
        return f"{command} {flag} {limit}" if add else command
    return re.sub(rf"(?<!\S)({flag}[ =])(\d[\d_]*)",
                  lambda m: f"{m.group(1)}{min(int(m.group(2).replace('_', '')), limit)}", command)


def _first_seed(command: str) -> str:
    if not _has(command, "--seeds"):
        return f"{command} --seeds 0"
    return re.sub(r"(?<!\S)--seeds((?:\s+\d+)+)", lambda m: f"--seeds {m.group(1).split()[0]}", command)


def rewrite(command: str) -> str | None:
    """The command with the budgets above, or None where it does not run (pip install)."""
    command, _ = split_comment(re.sub(r"(?<!\S)\.venv/bin/", "", command))
    if re.match(r"(python3? -m )?pip3? install\b", command):
        return None
    sub = re.search(r"(?<!\S)trpo\s+(\w+)", command)
    script = re.search(r"(?<!\S)benchmarks/(\w+)\.py", command)
    summary = _has(command, "--summary")
    if sub and sub.group(1) == "train":
        if not _has(command, "--resume"):
            command = _cap(command, "--total-steps", STEPS, add=True)
        command = _cap(_cap(command, "--eval-every", STEPS), "--save-every", STEPS)
        command = _cap(command, "--eval-episodes", EPISODES, add=not _has(command, "--help"))
    elif sub and sub.group(1) == "eval":
        command = _cap(command, "--episodes", EPISODES, add=True)
    elif sub and sub.group(1) == "tune" and not summary:
        command = _cap(_cap(_cap(command, "--trials", 1, add=True), "--total-steps", STEPS, add=True), "--jobs", 1)
    elif sub and sub.group(1) == "bench" and not summary:
        command = _first_seed(_cap(_cap(command, "--steps", STEPS, add=True), "--jobs", 1))
        if not _has(command, "--peer"):  # trpo's runs: one final evaluation episode (the peers evaluate their own way)
            episodes = f"eval_episodes={EPISODES}"
            command = re.sub(r"(?<!\S)--set(?=\s|$)", f"--set {episodes}", command) if _has(command, "--set") \
                else f"{command} --set {episodes}"
    elif script:
        source = (ROOT / "benchmarks" / f"{script.group(1)}.py").read_text()
        defines = set(re.findall(r'add_argument\(\s*"(--[\w-]+)"', source))
        for flag, limit in (("--steps", STEPS), ("--updates", UPDATES), ("--jobs", 1), ("--returns", STEPS)):
            if flag in defines:
                command = _cap(command, flag, limit, add=flag != "--returns")
        if "--seeds" in defines:
            command = _first_seed(command)
    if (script or (sub and sub.group(1) == "bench")) and not summary:
        command = re.sub(r"(?<!\S)--env\s+(\S+)(?:\s+(?!-)\S+)+", r"--env \1", command)
    return command


def env_ids(command: str) -> list[str]:
    """The ids a command's --env names (one for trpo train, several for trpo bench and the benchmarks)."""
    m = re.search(r"(?<!\S)--env((?:\s+(?!-)\S+)+)", split_comment(command)[0])
    return m.group(1).split() if m else []


def rewrite_python(code: str) -> str:
    code = re.sub(r"\blearn\((\d[\d_]*)", lambda m: f"learn({min(int(m.group(1).replace('_', '')), STEPS)}", code)
    return re.sub(r"\bepisodes=(\d+)", lambda m: f"episodes={min(int(m.group(1)), EPISODES)}", code)


def skip_reason(page: str, text: str) -> str | None:
    return next((reason for (where, snippet), reason in SKIPPED.items() if where == page and snippet in text), None)


def environment() -> dict[str, str]:
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               MPLBACKEND="Agg")
    env.pop("PYTHONPATH", None)  # as a reader's shell: trpo from its install, nothing of the tests'
    return env


def prepare(workdir: Path, page_blocks: list[Block], run: list[Block]) -> None:
    """The directory the blocks `run` of a page run in: what they read of the repository, copied; the files the
    page's commands use."""
    everything = "\n".join(b.text for b in run)
    (workdir / "docs").mkdir()
    if "benchmarks/" in everything:
        shutil.copytree(ROOT / "benchmarks", workdir / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    if "docs/results" in everything:
        shutil.copytree(ROOT / "docs" / "results", workdir / "docs" / "results")
    for block in page_blocks:
        if block.lang == "yaml" and block.title:
            (workdir / block.title).parent.mkdir(parents=True, exist_ok=True)
            (workdir / block.title).write_text(block.text + "\n")


def run_block(block: Block, workdir: Path, env: dict[str, str]) -> None:
    where = f"{block.page}:{block.line}"
    if block.lang == "yaml":
        yaml.safe_load(block.text)  # a file written by prepare(), or an example that must at least parse
    elif block.lang in ("bash", "console"):
        for command in commands(block):
            if skip_reason(block.page, command):
                continue
            line = rewrite(command)
            if line is None:
                continue
            argv = trpo_argv(line)
            if argv is not None:
                res = cli(*argv, cwd=workdir)
            else:
                res = subprocess.run(["bash", "-c", line], cwd=workdir, env=env, capture_output=True, text=True,
                                     timeout=TIMEOUT)
            assert res.returncode == 0, (f"{where}: `{command}`\nran as `{line}`, exit {res.returncode}:\n"
                                         f"{(res.stdout + res.stderr)[-3000:]}")
    elif block.lang == "python" and not skip_reason(block.page, block.text):
        code = compile(rewrite_python(block.text), where, "exec")
        for _ in range(2 if block.page in PYTHON_TWICE else 1):
            before = os.getcwd()
            try:
                os.chdir(workdir)
                exec(code, {"__name__": "__main__"})  # a script of its own: nothing of this module's in scope
            finally:
                os.chdir(before)


def trpo_argv(line: str) -> list[str] | None:
    """The arguments of a plain `trpo ARGS` line, which runs through trpo's main() in this process (an interpreter
    start is 2-3 s of importing torch, and a page holds dozens of commands); None for a line that needs the shell
    (pipes, redirections, variables, globs, other programs), which bash runs."""
    if re.search(r"[|&;<>$`*?\[\]{}()]", line):
        return None
    argv = shlex.split(line)
    return argv[1:] if argv and argv[0] == "trpo" else None


def check_recurrent(workdir: Path) -> None:
    """The memory task's feed-forward comparison trains a feed-forward policy (the preset is an LSTM)."""
    kinds = sorted(yaml.safe_load(p.read_text())["recurrent"] for p in workdir.glob("runs/*CueMemory*/config.yaml"))
    assert kinds == ["lstm", "none"], kinds


# Assertions beyond exit codes, after a page ran.
CHECKS: dict[str, Callable[[Path], None]] = {"docs/recurrent.md": check_recurrent}


def units() -> list[tuple[str, int | None]]:
    """(page, None): the whole page; (page, i): its i-th block alone (BY_BLOCK). The longest first (the most
    commands that run), so that pytest-xdist does not start one last while the other worker idles."""
    def cost(b: Block) -> int:
        if b.lang == "python":
            return 2
        runs = [c for c in commands(b) if not skip_reason(b.page, c) and rewrite(c) is not None]
        return len(runs) if b.lang in ("bash", "console") else 0

    out: dict[tuple[str, int | None], int] = {}
    for page in pages():
        # A block whose every command is SKIPPED has nothing to run (a test of it could not fail).
        found = {i: cost(b) for i, b in enumerate(blocks(page)) if cost(b) or b.lang == "yaml"}
        if page in BY_BLOCK:
            out.update({(page, i): size for i, size in found.items()})
        elif found:
            out[(page, None)] = sum(found.values())
    return sorted(out, key=lambda unit: -out[unit])


@pytest.mark.parametrize("page,index", [
    pytest.param(page, index, marks=[pytest.mark.docs_recipes] if page in RECIPES else [],
                 id=page if index is None else f"{page}-{index}") for page, index in units()])
def test_the_page_runs_as_written(page: str, index: int | None, tmp_path: Path) -> None:
    page_blocks = blocks(page)
    run = page_blocks if index is None else [page_blocks[index]]
    prepare(tmp_path, page_blocks, run)
    env = environment()
    for block in run:
        run_block(block, tmp_path, env)
    if index is None and page in CHECKS:
        CHECKS[page](tmp_path)


def test_every_block_says_what_it_is() -> None:
    unknown = [f"{b.page}:{b.line} ```{b.lang}" for page in pages() for b in blocks(page) if b.lang not in RUNNABLE]
    assert not unknown, f"blocks this test cannot run or leave alone (say bash, python, yaml or text): {unknown}"


def test_every_env_id_is_registered() -> None:
    # The rewrite trains only the first id of an --env list: the others are checked here, as gym.make finds them.
    import gymnasium as gym

    named = {(page, env_id) for page in pages() for b in blocks(page) if b.lang in ("bash", "console")
             for command in commands(b) if not skip_reason(page, command) for env_id in env_ids(command)}
    unknown = []
    for page, env_id in sorted(named):
        module, _, name = env_id.rpartition(":")
        try:
            if module:
                importlib.import_module(module)
            if name.startswith("MinAtar/"):  # MinAtar registers its ids when asked, as make_env asks it
                from trpo.envs import _register_minatar

                _register_minatar()
            gym.spec(name)
        except Exception as exc:
            unknown.append(f"{page}: {env_id} ({type(exc).__name__}: {exc})")
    assert not unknown, unknown


def test_every_skipped_entry_names_a_command_that_exists() -> None:
    texts: dict[str, list[str]] = {}
    for page in pages():
        for b in blocks(page):
            texts.setdefault(page, []).extend(commands(b) if b.lang in ("bash", "console") else [b.text])
    stale = [key for key in SKIPPED if not any(key[1] in text for text in texts.get(key[0], []))]
    assert not stale, f"SKIPPED entries that name no command or block of their page: {stale}"


@pytest.mark.parametrize("command,expected", [
    ("trpo train --env Hopper-v5   # the preset", "trpo train --env Hopper-v5 --total-steps 2048 --eval-episodes 1"),
    ("trpo train --total-steps 1_000_000 --eval-every 50000",
     "trpo train --total-steps 2048 --eval-every 2048 --eval-episodes 1"),
    ("trpo train --resume runs/pend --eval-episodes 5", "trpo train --resume runs/pend --eval-episodes 1"),
    ("trpo eval runs/hopper --episodes 20 --json", "trpo eval runs/hopper --episodes 1 --json"),
    ("trpo bench --env Hopper-v5 --seeds 3 4 --jobs 2",
     "trpo bench --env Hopper-v5 --seeds 3 --jobs 1 --steps 2048 --set eval_episodes=1"),
    ("trpo bench --env A-v0 B-v1 m.n:C-v0 --jobs 1 --seeds 0",
     "trpo bench --env A-v0 --jobs 1 --seeds 0 --steps 2048 --set eval_episodes=1"),
    ("trpo bench --env A-v0 --set max_kl=0.02 eval_episodes=3 --label x",
     "trpo bench --env A-v0 --set eval_episodes=1 max_kl=0.02 eval_episodes=3 --label x --steps 2048 --seeds 0"),
    ("trpo bench --env A-v0 --peer sb3-contrib", "trpo bench --env A-v0 --peer sb3-contrib --steps 2048 --seeds 0"),
    ("trpo bench --env A-v0 --steps 100000 --summary", "trpo bench --env A-v0 --steps 100000 --summary"),
    ("trpo tune --env P-v1 --trials 50 --jobs 2", "trpo tune --env P-v1 --trials 1 --jobs 1 --total-steps 2048"),
    (".venv/bin/python benchmarks/replay.py runs/x --updates 5", "python benchmarks/replay.py runs/x --updates 2"),
    ("pip install -e '.[bench]'", None),
    ("trpo plot 'runs/a-*' runs/b --out c.png  # curves", "trpo plot 'runs/a-*' runs/b --out c.png"),
])
def test_the_rewrite_rules(command: str, expected: str | None) -> None:
    assert (STEPS, EPISODES, UPDATES) == (2048, 1, 2)  # the values the cases spell out
    assert rewrite(command) == expected
    if expected is not None:
        shlex.split(expected)  # still one well-formed command
