"""MkDocs hook: the reference pages' tables, generated at build time from their one source in the code.

A page holds a marker line, `<!-- trpo:NAME -->`, replaced by: `cli` (each command's --help, from the parser),
`config` (TRPOConfig's fields, their flags, defaults and docstrings), `presets` (trpo.config.PRESETS),
`metrics` and `evaluations` (trpo.metrics). Nothing here is written twice.
"""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, fields
from typing import Any

MARKER = re.compile(r"^<!-- trpo:(\w+) -->$", re.MULTILINE)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(value: Any) -> str:
    if value is None or value == () or value == {}:
        return "empty"
    if isinstance(value, tuple):
        return f"`{','.join(map(str, value))}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def cli() -> str:
    from trpo.cli import build_parser

    os.environ["COLUMNS"] = "110"  # argparse wraps to the terminal's width: a fixed one here
    parser = build_parser()
    parts = ["```text", parser.format_help().rstrip(), "```"]
    for name, sub in parser.subcommands.items():
        parts += ["", f"## trpo {name}", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(parts)


def config() -> str:
    from trpo.config import RULE_DEFAULTS, TRPOConfig, field_docs

    docs = field_docs()
    per_rule = {name for values in RULE_DEFAULTS.values() for name in values}  # empty: each rule's own default
    rows = ["| field | flag | default | meaning |", "|---|---|---|---|"]
    for f in fields(TRPOConfig):
        default = None if f.default is MISSING else f.default
        shown = "none: the rule's" if f.name in per_rule and default is None else _default(default)
        rows.append(f"| `{f.name}` | `--{f.name.replace('_', '-')}` | {shown} | {_cell(docs[f.name])} |")
    return "\n".join(rows)


def presets() -> str:
    import yaml

    from trpo.config import PRESET_ENVS, PRESET_STEPS, PRESETS, VECTOR_PRESET

    parts = []
    for name, values in PRESETS.items():
        body = yaml.safe_dump({"total_steps": PRESET_STEPS.get(name), **values}, sort_keys=False).rstrip()
        env = f"`{PRESET_ENVS[name]}`"
        about = (f"Envs without a preset whose observations are a flat float vector; tested with {env}."
                 if name == VECTOR_PRESET else f"Tuned on and tested with {env}.")
        parts += [f"## {name}", "", about, "", "```yaml", body, "```", ""]
    return "\n".join(parts)


def _table(metrics: dict[str, str]) -> str:
    rows = ["| key | meaning |", "|---|---|"]
    rows += [f"| `{key}` | {_cell(meaning)} |" for key, meaning in metrics.items()]
    return "\n".join(rows)


def metrics() -> str:
    from trpo.metrics import METRICS

    return _table(METRICS)


def evaluations() -> str:
    from trpo.metrics import EVALUATION_METRICS

    return _table(EVALUATION_METRICS)


GENERATORS = {"cli": cli, "config": config, "presets": presets, "metrics": metrics, "evaluations": evaluations}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return MARKER.sub(lambda m: GENERATORS[m.group(1)](), markdown)
