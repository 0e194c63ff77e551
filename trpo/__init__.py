"""trpo: Trust Region Policy Optimization (Schulman et al., 2015) for Gymnasium environments.

Names are imported on first use, so that `import trpo` (and the `trpo` command's start) stays light.

It defines none of those names and must import no trpo module, torch or Gymnasium when it is imported (importlib
only): a name's module loads when the name is first asked for.
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
    "EnvError": "trpo.errors",
    "ObservationError": "trpo.errors",
    "UnsupportedSpaceError": "trpo.errors",
    "CheckpointError": "trpo.errors",
    "RunDirError": "trpo.errors",
    "PlotError": "trpo.errors",
    "ExportError": "trpo.errors",
}

if TYPE_CHECKING:
    from trpo.agent import TRPO
    from trpo.config import TRPOConfig
    from trpo.errors import (
        CheckpointError,
        ConfigError,
        EnvError,
        ExportError,
        ObservationError,
        PlotError,
        RunDirError,
        UnsupportedSpaceError,
    )


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trpo' has no attribute {name!r}")


__all__ = ["TRPO", "CheckpointError", "ConfigError", "EnvError", "ExportError", "ObservationError", "PlotError",
           "RunDirError", "TRPOConfig", "UnsupportedSpaceError", "__version__"]
