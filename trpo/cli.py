"""Command line: `trpo train`, `eval`, `export`, `bench`, `tune`, `presets`, `plot`.

Every field of TRPOConfig is a flag (`max_kl` -> `--max-kl`); booleans take `--x / --no-x`, tuples `64,64`.
Errors the user can fix print one line and exit with status 2; `--debug` shows the traceback instead. Ctrl-C and
SIGTERM stop a run with one line saying what is saved and how to resume it.
"""

from __future__ import annotations

import sys

try:  # Only the standard library here; torch and gymnasium load in main(), where Ctrl-C is reported as usual.
    import argparse
    import contextlib
    import difflib
    import json
    import os
    import signal
    import time
    from dataclasses import fields
    from pathlib import Path
    from typing import Any, Literal, get_args, get_origin, get_type_hints
except KeyboardInterrupt:  # Ctrl-C in the first instants: no traceback either
    sys.stderr.write("\ntrpo: interrupted; nothing was written\n")
    raise SystemExit(130) from None

DEFAULT_ENV = "CartPole-v1"
# `trpo eval`'s episodes: recording a video renders every frame (a few a second for MuJoCo without a GPU), so one.
EVAL_EPISODES, VIDEO_EPISODES = 10, 1
# `trpo eval RUN --checkpoint NAME`: the run directory's files.
CHECKPOINTS = {"best": "best.pt", "latest": "checkpoints/latest.pt", "final": "final.pt"}
# A resumed run takes these from its own run directory (--env only where it was trained on an env without an id).
RESUME_FIXED = ("seed", "config", "preset", "run_dir", "overwrite")
TRUST_HELP = ("import the modules and join the Ray cluster that the run or checkpoint names and this command does not "
              "(refused otherwise, with a line naming them: docs/security.md)")


class UsageError(ValueError):
    """A bad command-line value (reported like the other user errors)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that name the (sub)command's own help, and no abbreviated flags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.subcommands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser, preset: tuple[str, str | None] | None = None) -> None:
    """One flag per TRPOConfig field. `preset`: (what chose it, its name) for `trpo train --env X --help`, whose
    flags then show the values that run would take from the preset."""
    from trpo.config import PRESETS, TRPOConfig, field_docs

    title = "hyperparameters (TRPOConfig fields; default: preset, else the field default)"
    preset_values: dict[str, Any] = {}
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
        default_text = ",".join(map(str, f.default)) if get_origin(hint) is tuple else f.default
        help_text = f"{docs.get(f.name, '')} (default {default_text})"
        if f.name in preset_values and preset_values[f.name] != defaults[f.name]:
            value = _show(preset_values[f.name]).replace("%", "%%")  # argparse %-formats help texts
            help_text = f"{docs.get(f.name, '')} (preset {preset[1]}: {value}; field default {default_text})"
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
    ex.add_argument("--format", default="torchscript", choices=["torchscript", "onnx"],
                    help="torchscript (torch.jit.load) or onnx (onnxruntime; pip install 'trpo[export]')")
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
                    help="run a peer instead of trpo: sb3-contrib (its TRPO with rl-zoo's settings) or rl-zoo "
                    "(rl_zoo3's own train script and hyperparameter file)")
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
                    help="the search space (default: trpo/tune.py's DEFAULT_SPACE): field: [choices] or "
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
    from trpo.config import resolve_config

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


def cmd_train(args: argparse.Namespace) -> int:
    from trpo.config import (
        PRESET_STEPS,
        RUN_RECORD_KEYS,
        ConfigError,
        TRPOConfig,
        check_seed,
        load_yaml,
        resolve_config,
    )

    overrides = {f.name: getattr(args, f.name) for f in fields(TRPOConfig) if getattr(args, f.name) is not None}
    if args.resume:
        from trpo import checkpoint

        given = [_flag(name) for name in RESUME_FIXED if getattr(args, name) not in (None, False)]
        if given:
            raise UsageError(f"--resume continues the run as it was set up; drop {', '.join(given)}")
        # A path that holds no run is answered before torch loads; TRPO.resume reads the record again, locked.
        checkpoint.read_run_record(Path(args.resume))
        from trpo.agent import TRPO

        _RUN["dir"] = Path(args.resume)
        agent = TRPO.resume(args.resume, progress=not args.no_progress, env=args.env, trust=args.trust, **overrides)
        total_steps = _positive_int("total-steps", args.total_steps or agent.total_steps)
        agent.total_steps = total_steps
        if agent.finished:
            agent.close()
            print(f"trpo: {agent.run_dir} already reached {agent.num_steps} of {total_steps} steps; pass a larger "
                  "--total-steps to train further", file=sys.stderr)
            return 0
        if agent.num_steps >= total_steps:
            print(f"trpo: {agent.run_dir} reached {agent.num_steps} steps but stopped before writing its final.pt "
                  "and evaluation; writing them", file=sys.stderr)
        else:
            start = f"at step {agent.num_steps}" if agent.num_updates else "from the start (no checkpoint yet)"
            print(f"trpo: resuming {agent.env_id} {start} of {total_steps} -> {agent.run_dir}", file=sys.stderr)
        settings = _settings(agent.config, agent.preset, [("flags", overrides)], rest="the run's own")
        print(f"trpo: {settings}", file=sys.stderr)
        return _train_and_report(agent, max(total_steps, agent.num_steps))

    if args.trust:  # a new run imports only what its flags and --config name
        raise UsageError("--trust is for --resume: a new run's env and wrappers are the ones you name")
    file_values = load_yaml(args.config) if args.config else {}
    run_values = {k: file_values.pop(k) for k in RUN_RECORD_KEYS if k in file_values}
    env_id = args.env if args.env is not None else run_values.get("env") or DEFAULT_ENV
    if not isinstance(env_id, str) or not env_id.strip():
        raise ConfigError(f"env must be a non-empty env id, got {env_id!r}")
    preset_arg = args.preset or run_values.get("preset") or "auto"
    if not isinstance(preset_arg, str):
        raise ConfigError(f"preset must be a preset name, 'auto' or 'none', got {preset_arg!r}")
    # Flags and files checked before torch and gymnasium load (2-3 s): a mistyped value is answered at once.
    resolve_config(env_id, preset_arg, file_values, overrides)
    seed = check_seed(args.seed if args.seed is not None else run_values.get("seed", 0))
    given_steps = args.total_steps or run_values.get("total_steps")
    total_steps = None if given_steps is None else _positive_int("total-steps", given_steps)

    from trpo.agent import TRPO
    from trpo.checkpoint import unique_run_dir
    from trpo.envs import resolve_env_config
    from trpo.rollout.collector import layout

    config, preset = resolve_env_config(env_id, env_id, preset_arg, file_values, overrides)
    total_steps = total_steps or PRESET_STEPS.get(preset or "", 1_000_000)

    agent = TRPO(env_id, config=config, seed=seed, progress=not args.no_progress, overwrite=args.overwrite)
    agent.preset = preset
    if args.run_dir:
        agent.run_dir = Path(args.run_dir)
    else:
        safe_id = env_id.replace(":", "_").replace("/", "_")
        agent.run_dir = unique_run_dir(Path(f"runs/{safe_id}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"))
    _RUN["dir"] = agent.run_dir
    print(f"trpo: training {env_id} (preset {preset or 'none'}) for {total_steps} steps, seed {seed} -> "
          f"{agent.run_dir}", file=sys.stderr)
    print(f"trpo: {layout(config)}", file=sys.stderr)
    layers = [(f"--config {args.config}", file_values), ("flags", overrides)]
    print(f"trpo: {_settings(config, preset, layers)}", file=sys.stderr)
    return _train_and_report(agent, total_steps)


def _settings(config: Any, preset: str | None, layers: list[tuple[str, dict[str, Any]]],
              rest: str = "preset") -> str:
    """The run's hyperparameters in a line: those off their field defaults and those the user gave, by where each
    comes from (the preset, then `layers` in rising precedence: --config, flags). A value no layer gave and the
    preset does not hold is `rest`'s (a resumed run's own, set when it started); one a layer changed from the
    preset's shows the preset's too."""
    from trpo.config import PRESETS, TRPOConfig

    defaults = TRPOConfig().to_dict()
    preset_values = {**defaults, **(TRPOConfig(**PRESETS[preset]).to_dict() if preset in PRESETS else {})}
    groups: dict[str, list[str]] = {}
    for name, value in config.to_dict().items():
        source = next((label for label, given in reversed(layers) if name in given), None)
        if source is None and value == defaults[name] == preset_values[name]:
            continue
        if source is None:
            source = f"preset {preset}" if value == preset_values[name] and preset else rest
        note = f" (preset {_show(preset_values[name])})" if preset_values[name] not in (value, defaults[name]) else ""
        groups.setdefault(source, []).append(f"{name}={_show(value)}{note}")
    order = [f"preset {preset}", rest, *(label for label, _ in layers)]
    said = "; ".join(f"{label}: {' '.join(groups[label])}" for label in dict.fromkeys(order) if label in groups)
    return f"settings (the others at their field defaults): {said}" if said else "settings: the field defaults"


def _show(value: Any) -> str:
    """A config value as the flags take it: 64,64 for a tuple of numbers, JSON for a mapping or list."""
    if isinstance(value, list) and all(isinstance(v, int | float) for v in value):
        return ",".join(map(str, value))
    return json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else str(value)


def _train_and_report(agent: Any, total_steps: int) -> int:
    from trpo.checkpoint import write_text_atomic

    try:
        agent.train_until(total_steps, callback=_stop_if_signalled)
        if agent.config.eval_episodes > 0:
            result = agent.evaluate(agent.config.eval_episodes, progress=agent.progress)
            result["step"] = agent.num_steps
            write_text_atomic(agent.run_dir / "eval.json", json.dumps(result) + "\n")
            _print(f"trpo: evaluation over {result['episodes']} episodes: mean return {result['mean_return']:.2f} "
                   f"+/- {result['std_return']:.2f}{_capped_note(result)}")
        print(f"trpo: done; outputs in {agent.run_dir}", file=sys.stderr)
    finally:
        agent.close()
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _capped_note(result: dict[str, Any]) -> str:
    """Said where evaluation episodes were cut at eval_max_steps (an env without a time limit of its own)."""
    if not result["capped"]:
        return ""
    return (f" ({result['capped']} of {result['episodes']} episodes cut at eval_max_steps={result['max_steps']}: "
            "the env has no time limit of its own)")


def cmd_eval(args: argparse.Namespace) -> int:
    from trpo.config import check_seed

    default = VIDEO_EPISODES if args.video else EVAL_EPISODES
    episodes = default if args.episodes is None else _positive_int("episodes", args.episodes)
    seed = None if args.seed is None else check_seed(args.seed)
    path = _checkpoint_path(args)
    from trpo.agent import TRPO

    agent = TRPO.load(path, env=args.env, device=args.device, trust=args.trust)  # reads only: no run dir lock
    try:
        if args.video:
            why = " (the default with --video; --episodes N for more)" if args.episodes is None else ""
            print(f"trpo: recording {_count(episodes, 'episode')} of {agent.env_id or 'the env'} to "
                  f"{args.video}{why}", file=sys.stderr)
        result = agent.evaluate(episodes, deterministic=not args.stochastic, seed=seed, video=args.video,
                                render=args.render, progress=True)
    finally:
        agent.close()
    result["env"] = agent.env_id
    result["step"] = agent.num_steps
    if args.json:
        _print(json.dumps(result))
    else:
        _print(f"{agent.env_id}: mean return {result['mean_return']:.2f} +/- {result['std_return']:.2f} over "
               f"{_count(episodes, 'episode')} (checkpoint at step {agent.num_steps}){_capped_note(result)}")
        if args.video:
            _print(f"trpo: video of {result['frames']} frames written to {args.video}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    path = _checkpoint_path(args)
    from trpo.agent import TRPO
    from trpo.export import export

    agent = TRPO.load(path, device="cpu", trust=args.trust)  # reads only: no run dir lock
    try:
        out = export(agent, args.out, args.format)
    finally:
        agent.close()
    _print(f"trpo: {agent.env_id} policy (checkpoint at step {agent.num_steps}) exported as {args.format} to {out}")
    return 0


def _checkpoint_path(args: argparse.Namespace) -> Path:
    """The file a command reads: PATH, or with --checkpoint that checkpoint of the run directory PATH; a path
    without one is answered here, before torch loads."""
    from trpo import checkpoint

    path = Path(args.path)
    if args.checkpoint is not None:
        if not path.is_dir():
            raise UsageError(f"--checkpoint picks a checkpoint of a run directory; {path} is not one")
        path = path / CHECKPOINTS[args.checkpoint]
    return checkpoint.resolve(path)


def cmd_bench(args: argparse.Namespace) -> int:
    from trpo.bench import bench, summary
    from trpo.config import check_seed

    seeds = [check_seed(seed) for seed in args.seeds]
    steps = _positive_int("steps", args.steps) if args.steps is not None else None
    if args.summary:
        _print(summary(Path(args.out), args.env, steps))
        return 0
    _RUN["note"] = ("finished runs are kept; the same command skips them and continues the others from their "
                    "checkpoints")
    table, failed = bench(args.env, seeds, steps, label=args.label, peer=args.peer, sets=args.set,
                          preset=args.preset, jobs=_positive_int("jobs", args.jobs), shard=args.shard,
                          out=Path(args.out), say=_print)
    _print(table)
    if failed:  # the table of the others first; then status 1, as a test runner with failed tests
        print(f"trpo: {_count(len(failed), 'run')} failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from trpo.bench import field_values
    from trpo.config import check_seed
    from trpo.tune import open_study, report, settings_for, tune

    settings = settings_for(
        args.env, _positive_int("trials", args.trials), space_file=args.space, sets=field_values(args.set),
        study=args.study,
        storage=args.storage, out=Path(args.out), seed=check_seed(args.seed),
        total_steps=_positive_int("total-steps", args.total_steps) if args.total_steps else None,
        evaluations=_positive_int("evaluations", args.evaluations),
        startup_trials=_positive_int("startup-trials", args.startup_trials), pruner=args.pruner,
        sampler=args.sampler)
    if args.summary:
        _print(report(settings, open_study(settings, create=False)))
        return 0
    _RUN["note"] = (f"study {settings.study!r} in {settings.storage} keeps its finished trials (the one in progress "
                    "is marked failed); the same command goes on")
    _print(tune(settings, jobs=_positive_int("jobs", args.jobs), say=lambda line: print(line, file=sys.stderr)))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from trpo.plot import load_runs, plot

    label_by = [name.strip() for name in args.label_by.split(",") if name.strip()] if args.label_by else []
    runs = load_runs(args.runs, label_by)
    out = plot(runs, args.out, args.metric)
    groups = len({(run.env, run.label) for run in runs})
    _print(f"trpo: plotted {args.metric} of {len(runs)} runs in {groups} groups -> {out}")
    return 0


def cmd_presets() -> int:
    import yaml

    from trpo.config import PRESET_STEPS, PRESETS

    for name, values in PRESETS.items():
        _print(yaml.safe_dump({name: {"total_steps": PRESET_STEPS.get(name), **values}}, sort_keys=False), end="")
    return 0


# The run directory of the `trpo train` in progress (or, as 'note', what another command keeps), for the line
# printed when it is interrupted.
_RUN: dict[str, Any] = {}


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that both stop a run the same way."""


# Signals received: Python drops the KeyboardInterrupt of one that arrives inside a finalizer ("Exception ignored
# in ..."), so the training loop also looks here after each update (`_stop_if_signalled`).
_SIGNALS: list[int] = []


def _on_signal(signum: int, frame: Any) -> None:
    _SIGNALS.append(signum)
    _stop_if_signalled()


def _stop_if_signalled(*_: Any) -> None:
    """Raise the interrupt of the last signal received, if any. Also learn()'s callback (agent, metrics): it stops
    the run after an update whose KeyboardInterrupt Python dropped."""
    if _SIGNALS:
        raise _Terminated if _SIGNALS[-1] == signal.SIGTERM else KeyboardInterrupt


def _install_signal_handlers() -> dict[int, Any]:
    """SIGTERM, and Ctrl-C unless ignored (nohup, a background job), to `_on_signal`; returns what they were."""
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
        if sig is None or (sig == signal.SIGINT and signal.getsignal(sig) is not signal.default_int_handler):
            continue
        # Not in the main thread (main() called from a thread), signal.signal raises: leave signals alone there.
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, _on_signal)
    return previous


def _closed_streams_to_devnull() -> None:
    """stdout or stderr closed by the caller (`trpo train 2>&-`) becomes /dev/null: Python leaves sys.stderr None,
    where every line would raise, and the next file opened (metrics.jsonl) would take the number 2, where env
    worker processes write what they say."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "w", closefd=False))  # noqa: SIM115 (the process's own, never closed)


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    _closed_streams_to_devnull()
    _RUN.clear()
    _SIGNALS.clear()
    previous = _install_signal_handlers()
    try:
        return _run(argv)
    except _StdoutClosedError:
        return 141  # as Unix tools do when their reader leaves: quietly, with 128 + SIGPIPE
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        print(f"\ntrpo: {what}; {_RUN.get('note') or _saved_state(_RUN.get('dir'))}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as exc:
        if debug or not _is_user_error(exc):
            raise
        print(f"trpo: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(argv: list[str] | None) -> int:
    args = parse(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    _refuse_non_utf8_run_dirs(args)
    commands = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "bench": cmd_bench, "tune": cmd_tune,
                "plot": cmd_plot, "presets": lambda _: cmd_presets()}
    return commands[args.command](args)


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


# The errors the user can fix besides UsageError and OSError, as (module, class).
USER_ERRORS = (("trpo.checkpoint", "CheckpointError"), ("trpo.checkpoint", "RunDirError"),
               ("trpo.errors", "ConfigError"), ("trpo.envs", "EnvError"), ("trpo.export", "ExportError"),
               ("trpo.plot", "PlotError"), ("trpo.observations", "UnsupportedSpaceError"), ("trpo.tune", "WorkerError"))


def _is_user_error(exc: BaseException) -> bool:
    """Errors the user can fix (flags, files, their env, the OS refusing a write): one line, no traceback."""
    if isinstance(exc, UsageError | OSError):
        return True
    # Only a loaded module can have raised its error: importing the others (trpo.distributions loads torch, 2-3 s)
    # would delay the one line a mistyped flag gets.
    return any(isinstance(exc, getattr(sys.modules[module], name)) for module, name in USER_ERRORS
               if module in sys.modules)


def _saved_state(run_dir: Path | None) -> str:
    """What an interrupted `trpo train` leaves, read from the disk: the newest checkpoint and its step, else
    whether the run can start again from its config.yaml."""
    if run_dir is None:
        return "nothing was written"
    from trpo import checkpoint

    resume = f"trpo train --resume {run_dir}"
    saved = checkpoint.newest(run_dir)
    if saved is not None:
        try:
            step = checkpoint.load(saved)["num_steps"]
        except (checkpoint.CheckpointError, KeyError):
            return f"{saved} is unreadable; {resume} starts over from the previous state"
        return f"the checkpoint {saved} (step {step}) is intact; continue with: {resume}"
    if (run_dir / "config.yaml").is_file():
        return f"no checkpoint was written yet; {resume} starts the run again from its first step"
    return f"nothing was written to {run_dir}"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:  # e.g. "Not a directory: 'runs/x/config.yaml'"
        where = f": {exc.filename!r}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return " ".join(str(exc).split())


class _StdoutClosedError(Exception):
    """The reader of our stdout went away (`trpo presets | head`)."""


def _print(text: str, end: str = "\n") -> None:
    """print() to stdout, telling a reader that went away from other broken pipes (a dead env worker's)."""
    try:
        print(text, end=end, flush=True)
    except BrokenPipeError:
        # Point stdout at devnull, so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise _StdoutClosedError from None


if __name__ == "__main__":
    sys.exit(main())
