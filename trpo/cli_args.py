"""The command line's parser: every command's flags and their help, and the checks made on them before a command runs.

Owns: build_parser (one flag per TRPOConfig field, `trpo train --env X --help` showing that env's preset), parse
(unknown flags with a suggestion, blank values refused), the checks of plain values (`_positive_int`, run
directories' names as UTF-8), and the defaults the help names (DEFAULT_ENV, CHECKPOINTS, the eval episodes).
Must not touch: what a command does (trpo/cli.py), signals and error reporting (trpo/cli_process.py). Only the
standard library at import (trpo.config loads inside the functions that need it), as trpo/cli.py requires.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from trpo.cli_process import UsageError

DEFAULT_ENV = "CartPole-v1"
# `trpo eval`'s episodes: recording a video renders every frame (a few a second for MuJoCo without a GPU), so one.
EVAL_EPISODES, VIDEO_EPISODES = 10, 1
# `trpo eval RUN --checkpoint NAME`: the run directory's files.
CHECKPOINTS = {"best": "best.pt", "latest": "checkpoints/latest.pt", "final": "final.pt"}
TRUST_HELP = ("import the modules and join the Ray cluster that the run or checkpoint names and this command does not "
              "(refused otherwise, with a line naming them: docs/security.md)")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that name the (sub)command's own help, and no abbreviated flags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})
        self.subcommands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser, preset: tuple[str, str | None] | None = None) -> None:
    """One flag per TRPOConfig field. `preset`: (what chose it, its name) for `trpo train --env X --help`, whose
    flags then show the values that run would take from the preset."""
    from trpo.config import TRPOConfig, field_docs
    from trpo.resolve import PRESETS

    title = "hyperparameters (TRPOConfig fields; default: preset, else the field default)"
    preset_values: dict[str, Any] = {}
    name = None
    if preset is not None:
        chosen_by, name = preset
        if name is None:
            title = f"hyperparameters (TRPOConfig fields; {chosen_by} takes no preset: the field defaults)"
        else:
            title = f"hyperparameters (TRPOConfig fields; {chosen_by} takes preset {name}: its values, else the field "
            title += "default)"
            preset_values = TRPOConfig(**PRESETS[name]).to_dict()
    group = parser.add_argument_group(title)
    hints = get_type_hints(TRPOConfig)
    docs = field_docs()
    defaults = TRPOConfig().to_dict()
    for f in fields(TRPOConfig):
        hint = hints[f.name]
        default: Any = f.default  # every field has one
        default_text = ",".join(map(str, default)) if get_origin(hint) is tuple else default
        help_text = f"{docs.get(f.name, '')} (default {default_text})"
        if f.name in preset_values and preset_values[f.name] != defaults[f.name]:
            value = _show(preset_values[f.name]).replace("%", "%%")  # argparse %-formats help texts
            help_text = f"{docs.get(f.name, '')} (preset {name}: {value}; field default {default_text})"
        if hint is bool:
            group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif f.name == "env_wrappers":  # one flag per wrapper, in order
            group.add_argument(_flag(f.name), "--env-wrapper", dest=f.name, action="append", default=None,
                               metavar="MODULE:CLASS[=JSON]", help=help_text)
        else:
            # Literal fields show their choices; the config validates them (same message as for YAML files).
            choices = get_args(hint) if get_origin(hint) is Literal else ()
            metavar = "{" + ",".join(choices) + "}" if choices else f.name.upper()
            group.add_argument(_flag(f.name), dest=f.name, default=None, metavar=metavar, help=help_text)


def build_parser(train_preset: tuple[str, str | None] | None = None) -> _Parser:
    """The parser of every command; `train_preset` as for _add_config_flags (`trpo train --env X --help`)."""
    from trpo import __version__

    parser = _Parser(prog="trpo", description="Trust Region Policy Optimization for Gymnasium.")
    parser.add_argument("--version", action="version", version=f"trpo {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser,
                                metavar="{train,eval,export,bench,tune,presets,plot}")

    train = sub.add_parser("train", help="train an agent (default: CartPole-v1)",
                           usage="trpo train [--env ENV] [--total-steps N] [--run-dir DIR] [options]")
    train.add_argument("--env", default=None, help=f"Gymnasium env id or module:EnvId (default {DEFAULT_ENV})")
    train.add_argument("--total-steps", default=None, help="env steps to train for (default: the preset's budget)")
    train.add_argument("--seed", default=None, help="random seed, a non-negative integer (default 0)")
    train.add_argument("--run-dir", default=None,
                       help="output directory; refused if it holds a run (default runs/ENV-sSEED-TIME, never reused)")
    train.add_argument("--overwrite", action="store_true", help="remove the run in --run-dir first, then start anew")
    train.add_argument("--config", default=None, help="YAML file of config fields (and env, total_steps, seed)")
    train.add_argument("--preset", default=None, help="preset name (or an env id: its preset), 'auto' (by --env, the "
                       "default) or 'none'")
    train.add_argument("--resume", default=None, metavar="RUN_DIR",
                       help="continue a run: from its newest checkpoint (latest.pt, else final.pt), or from the start "
                       "if it wrote none; --env only for a run trained on an env without an id")
    train.add_argument("--trust", action="store_true", help="with --resume: " + TRUST_HELP)
    train.add_argument("--no-progress", action="store_true", help="no progress display")
    train.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    _add_config_flags(train, train_preset)

    ev = sub.add_parser("eval", help="evaluate a checkpoint or run directory")
    ev.add_argument("path", help="run directory (its newest checkpoint) or checkpoint file")
    ev.add_argument("--checkpoint", default=None, choices=CHECKPOINTS,
                    help="which of the run directory's checkpoints: best.pt (eval_every), checkpoints/latest.pt, "
                    "final.pt (default: the newest, latest.pt, else final.pt)")
    ev.add_argument("--episodes", default=None,
                    help=f"episodes to run (default {EVAL_EPISODES}; with --video {VIDEO_EPISODES}, as recording "
                    "renders every step)")
    ev.add_argument("--seed", default=None, help="evaluation seed")
    ev.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    ev.add_argument("--device", default=None, help="torch device")
    ev.add_argument("--env", default=None, help="env id to evaluate on (default: the one it was trained on)")
    ev.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ev.add_argument("--trust", action="store_true", help=TRUST_HELP)
    ev.add_argument("--video", default=None, metavar="FILE",
                    help="also record the episodes to FILE (.mp4, .gif; pip install 'trpo[video]'; MuJoCo without a "
                    "display: MUJOCO_GL=egl or osmesa)")
    ev.add_argument("--render", action="store_true", help="show the episodes in a window (needs a display)")
    ev.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")

    ex = sub.add_parser("export", help="the policy as one self-contained TorchScript or ONNX file (trpo/export.py)")
    ex.add_argument("path", help="run directory (its newest checkpoint) or checkpoint file")
    ex.add_argument("--checkpoint", default=None, choices=CHECKPOINTS, help="which of the run directory's checkpoints")
    ex.add_argument("--format", default=None, choices=["torchscript", "onnx"],
                    help="torchscript (torch.jit.load) or onnx (onnxruntime; pip install 'trpo[export]'); default: "
                    "onnx for an --out ending in .onnx, else torchscript")
    ex.add_argument("--out", required=True, help="file to write")
    ex.add_argument("--trust", action="store_true", help=TRUST_HELP)
    ex.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")

    be = sub.add_parser("bench", help="envs x seeds x a budget as run directories, resumable, and the results table",
                        description="Each run is `trpo train` in its own process, on one core (vector_mode sync "
                        "unless --set says otherwise); run it again to continue: finished runs are skipped, started "
                        "ones resumed. The table: final deterministic evaluation over 10 episodes per seed, mean, std, "
                        "IQM with rliable's 95% interval, beside the published TRPO figures (trpo/bench.py). Exit "
                        "status 1 where a run failed (after the table; a line names each, with its log), 2 for bad "
                        "arguments (an env or seed given twice too).")
    be.add_argument("--env", nargs="+", required=True, help="env ids")
    be.add_argument("--seeds", nargs="+", default=["0", "1", "2", "3", "4"], help="seeds (default 0 1 2 3 4)")
    be.add_argument("--steps", default=None, help="env steps per run (default: each env's preset budget, else 1M)")
    be.add_argument("--label", default=None, help="names this configuration's runs (default trpo, or the peer)")
    be.add_argument("--peer", default="", metavar="NAME",
                    help="run a peer instead of trpo: sb3-contrib (its TRPO with rl-zoo's settings), rl-zoo "
                    "(rl_zoo3's own train script and hyperparameter file) or tianshou (its TRPO as its MuJoCo "
                    "example runs it)")
    be.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config fields, as for trpo train")
    be.add_argument("--preset", default=None, help="as for trpo train (default: each env's own; 'none': the field "
                    "defaults)")
    be.add_argument("--jobs", default="2", help="runs at a time (default 2)")
    be.add_argument("--shard", default="1/1", metavar="I/K", help="run only every K-th run, from the I-th")
    be.add_argument("--out", default="runs/bench", help="directory of the runs (default runs/bench)")
    be.add_argument("--summary", action="store_true", help="print the table of finished runs, train nothing")
    be.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")

    tu = sub.add_parser("tune", help="hyperparameter search with Optuna (TPE, median pruning), resumable and shareable",
                        description="Each trial trains on top of the env's preset with periodic evaluations that the "
                        "median pruner reads; its value is the final deterministic evaluation. The study is stored "
                        "(a SQLite file by default): run again to go on, or from several processes or machines at "
                        "once; --trials counts the study's finished trials. The best trial's settings go to "
                        "OUT/STUDY/best.yaml, for trpo train --config (trpo/tune.py).")
    tu.add_argument("--env", default=DEFAULT_ENV, help=f"env id (default {DEFAULT_ENV})")
    tu.add_argument("--trials", default="50", help="finished trials the study should hold (default 50)")
    tu.add_argument("--jobs", default="1", help="trials at a time, each in its own process on one core (default 1)")
    tu.add_argument("--total-steps", default=None, help="env steps per trial (default: the preset's budget)")
    tu.add_argument("--space", default=None, metavar="FILE.yaml",
                    help="the search space (default: trpo/tune_space.py's DEFAULT_SPACE): field: [choices] or "
                    "field: {low: L, high: H, log: true}")
    tu.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config fields fixed for every trial")
    tu.add_argument("--study", default=None, help="study name (default: the env id)")
    tu.add_argument("--storage", default=None, metavar="URL",
                    help="Optuna storage URL (default sqlite:///OUT/STUDY.db; any SQLAlchemy URL to share a study)")
    tu.add_argument("--out", default="runs/tune", help="trial run directories and best.yaml (default runs/tune)")
    tu.add_argument("--seed", default="0", help="every trial's training seed (default 0)")
    tu.add_argument("--evaluations", default="10", help="periodic evaluations per trial, for pruning (default 10)")
    tu.add_argument("--startup-trials", default="5",
                    help="trials sampled at random before TPE, and finished before the pruner prunes (default 5)")
    tu.add_argument("--pruner", default="median", choices=["median", "none"], help="default median")
    tu.add_argument("--sampler", default="tpe", choices=["tpe", "random"], help="default tpe")
    tu.add_argument("--summary", action="store_true", help="print the study's table and write best.yaml, train nothing")
    tu.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")

    sub.add_parser("presets", help="list the presets and their settings")

    pl = sub.add_parser("plot", help="learning curves (or any metric) from run directories",
                        description="One panel per env, one line per label: the mean over its runs, with a band "
                        "from their min to their max, against env steps.")
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR_OR_GLOB",
                    help="run directories, glob patterns ('runs/ppo-*'), or directories holding run directories")
    pl.add_argument("--out", default="curves.png", help="image file to write (default curves.png; .pdf, .svg too)")
    pl.add_argument("--metric", default="episode_return_mean",
                    help="a metrics.jsonl key (default episode_return_mean), or eval/mean_return, eval/std_return, "
                    "eval/mean_length: the periodic evaluations of evaluations.jsonl (trpo train --eval-every N), "
                    "named as in TensorBoard")
    pl.add_argument("--label-by", default=None, metavar="FIELD[,FIELD]",
                    help="label runs by these config fields (default: the run directory's name without its seed)")
    pl.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    parser.subcommands = dict(sub.choices)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse, reporting a flag that no (sub)command knows against the subcommand's own flags."""
    parser = build_parser(_help_preset(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    if extra:
        target = parser.subcommands.get(args.command or "", parser)
        known = [opt for action in target._actions for opt in action.option_strings]
        hint = difflib.get_close_matches(extra[0].split("=", 1)[0], known, n=1)
        suggestion = f"; did you mean {hint[0]}?" if hint else ""
        target.error(f"unrecognized arguments: {' '.join(extra)}{suggestion}")
    _refuse_blank_values(parser.subcommands.get(args.command or "", parser), args)
    return args


def _help_preset(argv: list[str]) -> tuple[str, str | None] | None:
    """For `trpo train --env X [--preset P] --help`: (what chose the preset, its name), the preset that run would
    take, so that --help shows its values; None for any other command line (the plain help, or none)."""
    if "train" not in argv or not {"-h", "--help"} & set(argv[argv.index("train"):]):
        return None
    given: dict[str, str] = {}
    for i, token in enumerate(argv):
        for flag in ("--env", "--preset"):
            if token == flag and i + 1 < len(argv):
                given[flag] = argv[i + 1]
            elif token.startswith(flag + "="):
                given[flag] = token.split("=", 1)[1]
    if not given:
        return None
    from trpo.resolve import resolve_config

    env, preset = given.get("--env", DEFAULT_ENV), given.get("--preset", "auto")
    chosen_by = " ".join(f"{flag} {value}" for flag, value in given.items())
    try:
        _, name = resolve_config(env, preset)
        if name is None and preset == "auto":  # the vector preset goes by the env's observations: make it
            from trpo.envs import resolve_env_config

            _, name = resolve_env_config(env, env, preset)
    except (ValueError, OSError):  # ConfigError, EnvError: the plain help; training says what is wrong
        return None
    return chosen_by, name


def _refuse_blank_values(command: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A flag given an empty value (`--total-steps "$N"` with N unset) is an error, not the flag left out: read as
    absent, `--resume ""` would start a new run and `--total-steps ""` train the preset's full budget. Config fields
    are left to the config, where an optional field reads '' as its default (documented there)."""
    from trpo.config import TRPOConfig

    config_fields = {f.name for f in fields(TRPOConfig)}
    for action in command._actions:
        if action.dest in config_fields or action.default == "":
            continue
        value = getattr(args, action.dest, None)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and not item.strip():
                name = action.option_strings[0] if action.option_strings else action.metavar or action.dest
                raise UsageError(f"{name} needs a value, got {item!r}")


def _positive_int(name: str, value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a positive integer, got {value!r}") from None
    if not number.is_integer() or number <= 0:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return int(number)


def _show(value: Any) -> str:
    """A config value as the flags take it: 64,64 for a tuple of numbers, JSON for a mapping or list."""
    if isinstance(value, list) and all(isinstance(v, int | float) for v in value):
        return ",".join(map(str, value))
    return json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else str(value)


# The options that name where runs write (TensorBoard events among their files), by command.
RUN_DIR_OPTIONS = {"train": ("run_dir", "resume"), "bench": ("out",), "tune": ("out",)}


def _refuse_non_utf8_run_dirs(args: argparse.Namespace) -> None:
    """A run directory whose name is not UTF-8 (Linux names are any bytes) is refused before anything is written:
    TensorBoard's writer encodes its directory as UTF-8, and would fail once the run has started."""
    for name in RUN_DIR_OPTIONS.get(args.command, ()):
        value = getattr(args, name, None)
        try:
            (value or "").encode("utf-8")  # Python holds the bytes that are not UTF-8 as lone surrogates
        except UnicodeEncodeError:
            raise UsageError(f"{_flag(name)} {value!r} is not UTF-8 text, which TensorBoard's event files need in "
                             "their directory's name: give another") from None
