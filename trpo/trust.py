"""What opening a stored run may cause (docs/security.md): a run directory's config.yaml and a checkpoint name an env
id, env wrappers and a Ray cluster, and making that env would import the modules they name and join that cluster.
Importing a module runs its code, and a Ray cluster sends back pickles, so a run someone else wrote could run code
nobody asked for. The rule: opening one imports and joins nothing that the user did not name in this command or
call, or trust explicitly (`--trust`, `trust=True`); what remains is refused with one line naming it.

Needs no opt-in: a module this process has imported already (importing it again runs nothing), trpo's and
Gymnasium's own modules, and a plain env id (Gymnasium's registry holds what the installed packages registered; ALE/
and MinAtar/ ids load the packages trpo names for them). Whatever is imported, only a gymnasium.Wrapper subclass is
ever called as a wrapper (envs.EnvMaker)."""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trpo.config import TRPOConfig

# Packages installed with trpo whose modules a stored name may import: their code is the code trpo runs anyway.
SHIPPED = ("trpo", "gymnasium")
# ray_address values that join no one else's cluster: a runtime started here ('' / None / 'local') or this machine's.
LOCAL_RAY = (None, "", "local", "auto")


def split_path(path: str) -> tuple[str, str]:
    """'module:Class' or 'module.Class' -> (module, 'Class')."""
    module, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    return module, name


def env_module(env_id: str | None) -> str | None:
    """The module Gymnasium's make imports for a 'module:EnvId' id; None for a plain id."""
    if env_id is None or ":" not in env_id:
        return None
    return env_id.partition(":")[0]


def runs_code_on_import(module: str) -> bool:
    """Whether importing `module` may run code: not one already imported here, nor trpo's or Gymnasium's."""
    return module not in sys.modules and module.partition(".")[0] not in SHIPPED


def unnamed(env_id: str | None, config: TRPOConfig, named: Collection[str] = (),
            user_env: str | None = None) -> list[str]:
    """What making a stored run's env (and training it) would do that may run code no one named, one phrase each:
    the modules its env id and env_wrappers import, the Ray cluster it joins. `env_id`: the stored id that will be
    made (None where the user gave the env: `user_env`, whose module counts as named); `named`: the config fields
    whose values the user gave."""
    found: dict[str, None] = {}  # in order, once each
    allowed = {env_module(user_env)}
    module = env_module(env_id)
    if module is not None and runs_code_on_import(module):
        found[f"import {module} (env id {env_id})"] = None
    if "env_wrappers" not in named:
        for path, _ in config.env_wrappers:
            module = split_path(path)[0]
            if module not in allowed and runs_code_on_import(module):
                found[f"import {module} (env_wrappers {path})"] = None
    if config.vector_mode == "ray" and "ray_address" not in named and config.ray_address not in LOCAL_RAY:
        found[f"join the Ray cluster at {config.ray_address} (ray_address)"] = None
    return list(found)


def refusal(source: object, found: list[str]) -> str:
    """The one line that refuses to open `source`, saying what it would do and how to allow it."""
    env_hint = ", or give the env id yourself (--env ID, API: env=ID)" if any(" (env id " in f for f in found) else ""
    return (f"{source} would {'; '.join(found)}, which this command did not name: if you trust where it came from, "
            f"pass --trust (API: trust=True){env_hint} (docs/security.md)")
