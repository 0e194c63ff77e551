"""The documentation: the site builds strictly, its references come from one source each (config fields, metrics,
commands, presets) and cover everything, the README is a short front page whose links resolve, and no page names
a file outside the repository."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import types
from dataclasses import fields
from pathlib import Path

import pytest

from trpo import TRPO, TRPOConfig
from trpo.config import field_docs
from trpo.metrics import EVALUATION_METRICS, METRICS
from trpo.resolve import PRESETS

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / "scripts" / "docs_hooks.py"


def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", HOOKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    # Strict: a broken link, a missing page, a symbol the algorithm page links that the code no longer has, or a
    # page left out of the navigation fails the build.
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    config = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    for f in fields(TRPOConfig):
        assert f"<code>--{f.name.replace('_', '-')}</code>" in config, f.name
    metrics = (tmp_path / "site" / "reference" / "metrics" / "index.html").read_text()
    assert all(f"<code>{key}</code>" in metrics for key in METRICS)
    algorithm = (tmp_path / "site" / "algorithm" / "index.html").read_text()
    assert 'href="../reference/api/#trpo.trust_region.conjugate_gradient"' in algorithm


def test_the_committed_reference_pages_are_what_the_code_generates_now() -> None:
    # The README says these pages read the same on GitHub: their generated text is committed, and must be current.
    module = hooks()
    stale = []
    for path in module.pages():
        text = path.read_text()
        fresh = module.regions(module.fill(text))
        for name, (attrs, body) in module.regions(text).items():
            if name in module.VERSIONED and attrs != f"python={module.python_version()}":
                continue  # argparse of another Python version lays out --help otherwise: checked on the one it names
            if body != fresh[name][1]:
                stale.append(f"{path.relative_to(ROOT)}: {name}")
    assert not stale, f"stale generated text, run `.venv/bin/python scripts/docs_hooks.py --write`: {stale}"
    generated = {path.relative_to(ROOT).as_posix(): set(module.regions(path.read_text())) for path in module.pages()}
    for page, name in [("cli", "cli"), ("config", "config"), ("presets", "presets"), ("metrics", "metrics")]:
        assert name in generated.get(f"docs/reference/{page}.md", set()), page


def test_a_link_to_a_file_the_site_excludes_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # MkDocs reports such a link only at INFO, even with --strict: a dead link on the site. The hook warns.
    from mkdocs.structure.files import File, Files, InclusionLevel

    files = Files([File("speed.md", "docs", "site", True),
                   File("speed-1.json", "docs", "site", True, inclusion=InclusionLevel.EXCLUDED),
                   File("results/run.json", "docs", "site", True, inclusion=InclusionLevel.EXCLUDED)])
    page = types.SimpleNamespace(url="speed/", file=types.SimpleNamespace(src_uri="speed.md"))
    html = ('<a href="../speed-1.json">json</a> <a href="../results/run.json">run</a> <a href="../speed/#x">here</a>'
            ' <a href="https://example.org/speed-1.json">elsewhere</a>')
    with caplog.at_level(logging.WARNING, logger="mkdocs"):
        assert hooks().on_page_content(html, page, None, files) == html
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("mkdocs.")]
    assert len(warned) == 2 and "speed-1.json" in warned[0] and "results/run.json" in warned[1], warned


def test_every_config_field_is_documented_once_in_the_code() -> None:
    docs = field_docs()
    missing = [f.name for f in fields(TRPOConfig) if len(docs.get(f.name, "").strip()) < 10]
    assert not missing, f"fields without a docstring: {missing}"
    table = hooks().config()
    assert all(f"| `{f.name}` | `--{f.name.replace('_', '-')}` |" in table for f in fields(TRPOConfig))


@pytest.mark.parametrize("rule,extra", [("trpo", {"holdout_fraction": 0.25}), ("npg", {}), ("pg", {}),
                                        ("penalty", {}), ("penalty", {"kl_penalty": "theory"}), ("ppo", {}),
                                        ("trpo", {"sampling": "vine"}), ("trpo", {"use_sde": True}),
                                        ("trpo", {"shared_trunk": True})])
def test_every_logged_metric_has_its_definition(tmp_path: Path, rule: str, extra: dict) -> None:
    config = TRPOConfig(num_envs=1, steps_per_env=64, value_epochs=1, update_rule=rule, eval_every=64,
                        eval_episodes=1, **extra)
    agent = TRPO("Pendulum-v1", config=config, seed=0, run_dir=tmp_path / "run")
    agent.learn(64)
    agent.close()
    logged = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    keys = set(agent.history[-1]) | {k for line in logged for k in json.loads(line)}
    assert keys <= set(METRICS), f"metrics without a definition in trpo/metrics.py: {sorted(keys - set(METRICS))}"
    evaluated = (tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()
    assert set(json.loads(evaluated[0])) <= set(EVALUATION_METRICS)


def test_references_cover_every_command_and_preset() -> None:
    from trpo.cli import build_parser

    page = hooks().cli()
    for name in build_parser().subcommands:
        assert f"## trpo {name}" in page and f"usage: trpo {name}" in page
    presets = hooks().presets()
    assert all(f"## {name}" in presets for name in PRESETS)


def test_readme_is_a_front_page_whose_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12_500, len(readme.encode())
    # The Quick start's two lines, as .ci/run and a new user run them.
    assert "python3 scripts/dev.py setup && .venv/bin/trpo train" in readme
    assert "python3 scripts/dev.py test " in readme
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
    # Every guide page of the site is one click away.
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in re.findall(r":\s+([\w/]+\.md)$", nav, re.MULTILINE):
        assert page == "index.md" or f"docs/{page}" in readme, page


def test_doc_files_have_one_name_on_every_filesystem_and_stay_inside_the_repository() -> None:
    files = [p for p in ROOT.joinpath("docs").rglob("*") if "results" not in p.parts]
    names = [str(p.relative_to(ROOT)).lower() for p in files]
    assert len(names) == len(set(names)), "doc files whose names differ only by case"
    texts = {p: p.read_text() for p in [*ROOT.joinpath("docs").rglob("*.md"), ROOT / "README.md",
                                          *ROOT.joinpath("trpo").rglob("*.py")]}
    for path, text in texts.items():
        assert "../shared" not in text and "ANCHORS.md" not in text, path  # the team's notes are not in the repository
        assert not re.search(r"\.py#L\d+", text), path  # line anchors go stale: link symbols
