"""trpo: Trust Region Policy Optimization (Schulman et al., 2015) for Gymnasium environments.

Names are imported on first use, so that `import trpo` (and the `trpo` command's start) stays light.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not typing's: importing typing costs start-up time, in which Ctrl-C gives a traceback

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "TRPO": "trpo.agent",
    "TRPOConfig": "trpo.config",
    "ConfigError": "trpo.errors",
    "EnvError": "trpo.envs",
    "ObservationError": "trpo.observations",
    "UnsupportedSpaceError": "trpo.observations",
    "CheckpointError": "trpo.checkpoint",
    "RunDirError": "trpo.checkpoint",
    "PlotError": "trpo.plot",
    "ExportError": "trpo.export",
}

if TYPE_CHECKING:
    from trpo.agent import TRPO
    from trpo.checkpoint import CheckpointError, RunDirError
    from trpo.config import TRPOConfig
    from trpo.envs import EnvError
    from trpo.errors import ConfigError
    from trpo.export import ExportError
    from trpo.observations import ObservationError, UnsupportedSpaceError
    from trpo.plot import PlotError


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trpo' has no attribute {name!r}")


__all__ = ["TRPO", "CheckpointError", "ConfigError", "EnvError", "ExportError", "ObservationError", "PlotError",
           "RunDirError", "TRPOConfig", "UnsupportedSpaceError", "__version__"]
