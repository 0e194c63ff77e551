"""The public errors a user can fix, importable from `trpo` (more of them move here as their modules are split)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""
