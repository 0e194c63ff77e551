"""Command line: `trpo train`, `eval`, `export`, `bench`, `tune`, `presets`, `plot`.

Every field of TRPOConfig is a flag (`max_kl` -> `--max-kl`); booleans take `--x / --no-x`, tuples `64,64`.
Errors the user can fix print one line and exit with status 2; `--debug` shows the traceback instead. Ctrl-C and
SIGTERM stop a run with one line saying what is saved and how to resume it.

Owns: the commands (`cmd_train`, `cmd_eval`, ...: what each does with its parsed flags, and the lines it prints)
and main(), the entry point (`trpo = "trpo.cli:main"`, `python -m trpo.cli`), which turns errors and interrupts
into their line and exit status. Must not touch: the parser and the checks of flag values (trpo/cli_args.py), the
signal handlers, streams and which errors are the user's (trpo/cli_process.py); the library's internals beyond
calling them (trpo.agent, trpo.bench, trpo.tune, ...; imported inside the commands, never at start-up).
"""

from __future__ import annotations

import sys

# Only the standard library here (and in trpo.cli_args, trpo.cli_process); torch and gymnasium load in main(), where
# Ctrl-C is reported as usual.
try:
    import argparse
    import json
    import signal
    import time
    from dataclasses import fields
    from pathlib import Path
    from typing import Any

    from trpo.cli_args import (
        CHECKPOINTS,
        DEFAULT_ENV,
        EVAL_EPISODES,
        VIDEO_EPISODES,
        UsageError,
        _flag,
        _positive_int,
        _refuse_non_utf8_run_dirs,
        _show,
        build_parser,
        parse,
    )
    from trpo.cli_process import (
        _RUN,
        _SIGNALS,
        _closed_streams_to_devnull,
        _install_signal_handlers,
        _is_user_error,
        _one_line,
        _print,
        _saved_state,
        _StdoutClosedError,
        _stop_if_signalled,
        _Terminated,
    )
except KeyboardInterrupt:  # Ctrl-C in the first instants: no traceback either
    sys.stderr.write("\ntrpo: interrupted; nothing was written\n")
    raise SystemExit(130) from None

# A resumed run takes these from its own run directory (--env only where it was trained on an env without an id).
RESUME_FIXED = ("seed", "config", "preset", "run_dir", "overwrite")


def cmd_train(args: argparse.Namespace) -> int:
    from trpo.coerce import check_seed
    from trpo.config import RUN_RECORD_KEYS, TRPOConfig
    from trpo.errors import ConfigError
    from trpo.resolve import PRESET_STEPS, load_yaml, resolve_config

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
    steps_given = None if given_steps is None else _positive_int("total-steps", given_steps)

    from trpo.agent import TRPO
    from trpo.checkpoint import unique_run_dir
    from trpo.envs import resolve_env_config
    from trpo.rollout.collector import layout

    config, preset = resolve_env_config(env_id, env_id, preset_arg, file_values, overrides)
    total_steps = steps_given or PRESET_STEPS.get(preset or "", 1_000_000)

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
    from trpo.config import TRPOConfig
    from trpo.resolve import PRESETS

    defaults = TRPOConfig().to_dict()
    own = PRESETS[preset] if preset is not None and preset in PRESETS else None
    preset_values = {**defaults, **({} if own is None else TRPOConfig(**own).to_dict())}
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
    from trpo.coerce import check_seed

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

    # The format the file's name says, unless one is given: `--out policy.onnx` wrote TorchScript before.
    fmt = args.format or ("onnx" if str(args.out).lower().endswith(".onnx") else "torchscript")
    agent = TRPO.load(path, device="cpu", trust=args.trust)  # reads only: no run dir lock
    try:
        out = export(agent, args.out, fmt)
    finally:
        agent.close()
    _print(f"trpo: {agent.env_id} policy (checkpoint at step {agent.num_steps}) exported as {fmt} to {out}")
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
    from trpo.coerce import check_seed

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
    from trpo.coerce import check_seed
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

    from trpo.resolve import PRESET_STEPS, PRESETS

    for name, values in PRESETS.items():
        _print(yaml.safe_dump({name: {"total_steps": PRESET_STEPS.get(name), **values}}, sort_keys=False), end="")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
