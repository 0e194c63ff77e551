"""Command line: `trpo train`, `trpo eval`, `trpo presets`.

Every field of TRPOConfig is a flag (`max_kl` -> `--max-kl`); booleans take `--x / --no-x`, tuples `64,64`.
Errors the user can fix print one line and exit with status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import yaml

from trpo.checkpoint import LATEST, CheckpointError
from trpo.config import PRESET_STEPS, PRESETS, ConfigError, TRPOConfig, field_docs, load_yaml, resolve_config
from trpo.rollout import EnvError
from trpo.spaces import UnsupportedSpaceError

USER_ERRORS = (ConfigError, EnvError, UnsupportedSpaceError, CheckpointError)
DEFAULT_ENV = "CartPole-v1"
RUN_KEYS = ("env", "total_steps", "seed", "preset")  # file keys that are not TRPOConfig fields
# Fields a resumed run may change: they do not alter the algorithm's math.
RESUME_SAFE = ("device", "torch_threads", "checkpoint_every", "eval_episodes", "vector_mode", "num_workers")


class UsageError(ValueError):
    """A bad command-line value (reported like the other user errors)."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hyperparameters (TRPOConfig fields; default: preset, else the field default)")
    hints = get_type_hints(TRPOConfig)
    docs = field_docs()
    for f in fields(TRPOConfig):
        hint = hints[f.name]
        default_text = ",".join(map(str, f.default)) if get_origin(hint) is tuple else f.default
        help_text = f"{docs.get(f.name, '')} (default {default_text})"
        if hint is bool:
            group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(_flag(f.name), dest=f.name, default=None, metavar=f.name.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trpo", description="Trust Region Policy Optimization for Gymnasium.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command")

    train = sub.add_parser("train", help="train an agent (default: CartPole-v1)")
    train.add_argument("--env", default=None, help=f"Gymnasium env id or module:EnvId (default {DEFAULT_ENV})")
    train.add_argument("--total-steps", default=None, help="env steps to train for (default: the preset's budget)")
    train.add_argument("--seed", default=None, help="random seed (default 0)")
    train.add_argument("--run-dir", default=None, help="output directory (default runs/ENV-sSEED-TIME)")
    train.add_argument("--config", default=None, help="YAML file of config fields (and env, total_steps, seed)")
    train.add_argument("--preset", default=None, help="preset name, 'auto' (by env id, the default) or 'none'")
    train.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress display")
    train.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    _add_config_flags(train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint or run directory")
    ev.add_argument("path", help="run directory or checkpoint file")
    ev.add_argument("--episodes", default="10", help="episodes to run (default 10)")
    ev.add_argument("--seed", default=None, help="evaluation seed")
    ev.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    ev.add_argument("--device", default=None, help="torch device")
    ev.add_argument("--env", default=None, help="env id to evaluate on (default: the one it was trained on)")
    ev.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ev.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")

    sub.add_parser("presets", help="list the presets and their settings")
    return parser


def _positive_int(name: str, value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a positive integer, got {value!r}") from None
    if not number.is_integer() or number <= 0:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return int(number)


def _int(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be an integer, got {value!r}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from trpo.agent import TRPO

    overrides = {f.name: getattr(args, f.name) for f in fields(TRPOConfig) if getattr(args, f.name) is not None}
    if args.resume:
        return _resume(args, overrides)

    file_values = load_yaml(args.config) if args.config else {}
    run_values = {k: file_values.pop(k) for k in RUN_KEYS if k in file_values}
    file_values.pop("versions", None)  # a config.yaml from an earlier run can be passed back in
    env_id = args.env or run_values.get("env") or DEFAULT_ENV
    preset_arg = args.preset or run_values.get("preset") or "auto"
    config, preset = resolve_config(env_id, preset_arg, file_values, overrides)
    seed = _int("seed", args.seed if args.seed is not None else run_values.get("seed", 0))
    default_steps = PRESET_STEPS.get(preset or "", 1_000_000)
    total_steps = _positive_int("total-steps", args.total_steps or run_values.get("total_steps", default_steps))
    safe_id = env_id.replace(":", "_").replace("/", "_")
    run_dir = Path(args.run_dir or f"runs/{safe_id}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}")

    agent = TRPO(env_id, config=config, seed=seed, run_dir=run_dir, progress=not args.no_progress)
    agent.preset = preset
    print(f"trpo: training {env_id} (preset {preset or 'none'}) for {total_steps} steps, seed {seed} -> {run_dir}",
          file=sys.stderr)
    return _train_and_report(agent, total_steps)


def _resume(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from trpo.agent import TRPO

    run_dir = Path(args.resume)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"cannot resume: {run_dir} is not a run directory (no config.yaml)")
    record = load_yaml(str(run_dir / "config.yaml"))
    fixed = [name for name in overrides if name not in RESUME_SAFE]
    if fixed:
        raise UsageError(f"--resume continues with the run's own config; drop {', '.join(map(_flag, fixed))}")
    latest = run_dir / LATEST
    if not latest.is_file():
        raise CheckpointError(f"cannot resume: no checkpoint in {run_dir / LATEST.parent} (the run stopped before "
                              "its first checkpoint; start it again)")
    total_steps = _positive_int("total-steps", args.total_steps or record.get("total_steps"))
    agent = TRPO.load(latest, run_dir=run_dir, progress=not args.no_progress, overrides=overrides)
    if agent.num_steps >= total_steps:
        print(f"trpo: {run_dir} already reached {agent.num_steps} of {total_steps} steps", file=sys.stderr)
    print(f"trpo: resuming {agent.env_id} at step {agent.num_steps} of {total_steps} -> {run_dir}", file=sys.stderr)
    return _train_and_report(agent, total_steps)


def _train_and_report(agent: Any, total_steps: int) -> int:
    try:
        agent.learn(total_steps)
        if agent.config.eval_episodes > 0:
            result = agent.evaluate(agent.config.eval_episodes)
            (agent.run_dir / "eval.json").write_text(json.dumps(result) + "\n", encoding="utf-8")
            print(f"trpo: evaluation over {result['episodes']} episodes: mean return {result['mean_return']:.2f} "
                  f"+/- {result['std_return']:.2f}")
        print(f"trpo: done; outputs in {agent.run_dir}", file=sys.stderr)
    finally:
        agent.close()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from trpo.agent import TRPO

    episodes = _positive_int("episodes", args.episodes)
    agent = TRPO.load(args.path, env=args.env, device=args.device)
    try:
        seed = None if args.seed is None else _int("seed", args.seed)
        result = agent.evaluate(episodes, deterministic=not args.stochastic, seed=seed)
    finally:
        agent.close()
    result["env"] = agent.env_id
    result["step"] = agent.num_steps
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{agent.env_id}: mean return {result['mean_return']:.2f} +/- {result['std_return']:.2f} over "
              f"{episodes} episodes (checkpoint at step {agent.num_steps})")
    return 0


def cmd_presets() -> int:
    for name, values in PRESETS.items():
        print(yaml.safe_dump({name: {"total_steps": PRESET_STEPS.get(name), **values}}, sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "eval":
            return cmd_eval(args)
        return cmd_presets()
    except (*USER_ERRORS, UsageError) as exc:
        if args.debug:
            raise
        print(f"trpo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntrpo: interrupted; the last checkpoint is intact (resume with --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
