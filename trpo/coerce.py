"""Text and plain values (the command line's flags, YAML scalars and lists) as the typed values of config fields:
`typed(name, hint, value, text)` for one field of type `hint`, with one error line naming the field and the
value where it cannot be read; `check_seed` for a run's seed (not a field). Knows types, not fields: trpo.config
maps field names to their types. Imports nothing of trpo but trpo.errors (trpo.config imports it). It reads no
file and no environment variable, and never imports the wrapper classes it names (envs.py does, making an env)."""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import re
import reprlib
import types
from typing import Any, Literal, Union, get_args, get_origin

from trpo.errors import ConfigError

EnvKwargs = dict[str, Any]
Wrappers = tuple[tuple[str, EnvKwargs], ...]  # ('module:Class', its keyword arguments), outermost last

_NONE_WORDS = ("", "none", "null")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


class _ShortRepr(reprlib.Repr):
    """repr in one short line, however long the YAML value was."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 60

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 10_000:  # str() refuses ints of over 4300 digits
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


show = _ShortRepr().repr  # a bad value for an error message


def typed(name: str, hint: Any, value: Any, text: bool) -> Any:
    """`value` as field `name` of type `hint` holds it, else a ConfigError naming both. With `text` (values from
    the CLI or YAML) strings are parsed for the other types: '4', '1e5', 'yes', '64,64'; without, only str fields
    take strings. Optional fields read None, '', 'none' and 'null' as None either way."""
    if get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            return None
        (hint,) = (arg for arg in get_args(hint) if arg is not type(None))
    parse = text and isinstance(value, str)
    if hint is bool:
        word = value.strip().lower() if parse else None
        if word in _TRUE_WORDS + _FALSE_WORDS:
            return word in _TRUE_WORDS
        if isinstance(value, bool):
            return value
        raise _unreadable(name, value, "bool (true or false)")
    if hint is int:
        whole = _whole(_number(value) if parse else value)
        if whole is not None and -(2**63) <= whole < 2**63:  # what torch and numpy take
            return whole
        raise _unreadable(name, value, "int" if whole is None else "64-bit int")
    if hint is float:
        number = _number(value) if parse else value
        if isinstance(number, numbers.Real) and not isinstance(number, bool):
            with contextlib.suppress(OverflowError):  # an int beyond float's range
                return float(number)
        raise _unreadable(name, value, "float")
    if hint == EnvKwargs:
        return _env_kwargs(name, value, parse)
    if hint == Wrappers:
        return _wrappers(name, value, parse)
    if get_origin(hint) is tuple:
        items = [item for item in value.split(",") if item.strip()] if parse else value
        if isinstance(items, list | tuple):
            with contextlib.suppress(ConfigError):
                return tuple(typed(name, int, item, text) for item in items)
        raise _unreadable(name, value, "a list of ints (64,64)")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _unreadable(name, value, "str")
    if get_origin(hint) is Literal:
        if isinstance(value, str) and value in get_args(hint):
            return value
        raise ConfigError(f"{name} must be one of {', '.join(get_args(hint))}; got {show(value)}")
    raise TypeError(f"TRPOConfig.{name}: no check for values of type {hint}")  # a new kind of field needs one


# Seeds are offset (per env, for evaluation, per resumed collector) and reach torch.manual_seed, whose range is
# 64-bit, and numpy: Gymnasium's env seeding and the RandomState of envs such as MinAtar's, which takes [0, 2**32).
# numpy's 32-bit range keeps a seed plus its offsets far inside torch's.
SEED_MAX = 2**32 - 1


def check_seed(value: Any) -> int:
    """A run's seed as an int: a non-negative integer up to SEED_MAX (an integral float or integer text too)."""
    seed = None
    with contextlib.suppress(ConfigError):
        seed = typed("seed", int, value, text=True)
    if seed is None or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"seed must be an integer in [0, {SEED_MAX}], got {show(value)}")
    return seed


def _env_kwargs(name: str, value: Any, parse: bool) -> EnvKwargs:
    """A mapping of keyword arguments: a dict (YAML, Python) or a JSON object (the command line)."""
    if parse:
        try:
            value = json.loads(value)
        except ValueError:
            raise _unreadable(name, value, "a JSON object ({\"key\": value})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and k.isidentifier() for k in value):
        raise _unreadable(name, value, "a mapping of argument names to values")
    try:
        return json.loads(json.dumps(value))  # a plain copy that YAML and JSON can write back
    except (TypeError, ValueError):
        raise _unreadable(name, value, "a mapping of plain values (numbers, text, lists, mappings)") from None


def _wrappers(name: str, value: Any, parse: bool) -> Wrappers:
    """Wrappers in order: each 'module:Class', 'module:Class={json}' (command line), {'module:Class': kwargs}
    (YAML) or ('module:Class', kwargs)."""
    items = [value] if isinstance(value, str | dict) else value
    if not isinstance(items, list | tuple):
        raise _unreadable(name, value, "a list of wrappers ('module:Class')")
    out = []
    for item in items:
        if isinstance(item, str):
            path, _, args = item.partition("=")
            kwargs = _env_kwargs(name, args, True) if args.strip() else {}
        elif isinstance(item, dict) and len(item) == 1:
            ((path, args),) = item.items()
            kwargs = {} if args is None else _env_kwargs(name, args, False)
        elif isinstance(item, list | tuple) and len(item) == 2:
            path, kwargs = item[0], _env_kwargs(name, item[1], False)
        else:
            raise _unreadable(name, item, "a wrapper ('module:Class' or {module:Class: {arg: value}})")
        if not isinstance(path, str) or not re.fullmatch(r"[\w.]+[:.]\w+", path.strip()):
            raise _unreadable(name, path, "a wrapper class path ('module:Class' or 'module.Class')")
        out.append((path.strip(), kwargs))
    return tuple(out)


def _unreadable(name: str, value: Any, kind: str) -> ConfigError:
    return ConfigError(f"{name}: cannot read {show(value)} as {kind}")


def _whole(number: Any) -> int | None:
    """An integer or an integral float as an int; None for anything else (bools included)."""
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        return None
    if isinstance(number, numbers.Integral):
        return int(number)
    value = float(number)
    return int(value) if math.isfinite(value) and value.is_integer() else None


def _number(text: str) -> Any:
    """'4' -> 4, '1e5' -> 100000.0, ' 0.5 ' -> 0.5; other text stays as it is, for the type check to refuse."""
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text
