"""Start-up probe for benchmarks/speed.py: `ProbeHopper-v5` is Hopper-v5 that writes the wall-clock time of its
first step to the file named by $TRPO_FIRST_STEP (from whichever process steps it: this one or an env worker).

    PYTHONPATH=benchmarks TRPO_FIRST_STEP=/tmp/t trpo train --env first_step_probe:ProbeHopper-v5 --preset Hopper
"""

from __future__ import annotations

import os
import time
from typing import Any

import gymnasium as gym


class FirstStep(gym.Wrapper):
    def step(self, action: Any) -> Any:
        path = os.environ.get("TRPO_FIRST_STEP")
        if path and not os.path.exists(path):
            stamp = repr(time.time())
            try:
                with open(path, "x") as fh:  # of two workers stepping at once, the first one writes
                    fh.write(stamp)
            except FileExistsError:
                pass
        return super().step(action)


def _make(**kwargs: Any) -> gym.Env:
    return FirstStep(gym.make("Hopper-v5", **kwargs))


gym.register("ProbeHopper-v5", entry_point=_make)
