"""The public errors a user can fix, each a ValueError whose message says what to change; importable from `trpo`
(and, as before, from the module that raises each). Plain classes: this module imports nothing."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


class EnvError(ValueError):
    """The environment cannot be made or returned invalid data; the message says which."""


class UnsupportedSpaceError(ValueError):
    """The environment uses a space this library cannot handle; the message names it."""


class ObservationError(ValueError):
    """An observation does not fit the observation space (shape, Discrete range, Dict keys)."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, damaged or not a trpo checkpoint; the message names the file."""


class RunDirError(ValueError):
    """A run directory cannot be used as asked (it holds another run, is not a directory, or a file trpo would
    write there is a link or not a regular file)."""


class ExportError(ValueError):
    """The policy cannot be exported as asked; the message says why."""


class PlotError(ValueError):
    """Nothing to plot, or not what was asked; the message says which."""
