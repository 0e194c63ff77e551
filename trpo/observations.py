"""Observations for each supported Gymnasium space, as the networks take them: one float32 vector per observation
(Box flattened, Discrete one-hot, Dict parts concatenated; uint8 images kept for ConvBody), and where an env's
action masks come from. The errors an observation or a space raises live here too. It works in numpy on the
spaces, observations and infos it is handed: it never makes, resets or steps an env (envs.py and the rollout
runners do), and knows no network or config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium import spaces

from trpo.encoders import image_layout
from trpo.errors import ObservationError as ObservationError
from trpo.errors import UnsupportedSpaceError as UnsupportedSpaceError  # defined there; importable here too

if TYPE_CHECKING:
    from trpo.distributions import ActionDistribution


# The largest reward a batch (float32) can hold; larger ones would become inf there.
MAX_REWARD = float(np.finfo(np.float32).max)


def env_reward(value: Any) -> float:
    """A reward from env.step as a float: a real number (a 0-d numeric array too). Text is refused, not parsed."""
    if isinstance(value, str | bytes):
        raise TypeError(f"the reward must be a number, got {value!r}")
    return float(value)


MASK_KEY = "action_mask"  # Gymnasium's convention: info["action_mask"], or a Dict observation's key


class ObsEncoder:
    """Flattens Box, one-hot encodes Discrete, concatenates the parts of a Dict into one vector (float32;
    uint8 for uint8 images, which ConvBody scales).

    With action masking (`mask_from` 'obs': a Dict observation's "action_mask" entry; 'info': the reset/step
    info's "action_mask"), the vector ends with the mask as 0/1 columns, `mask_dim` of them, one per logit;
    the actor reads them from there (`Actor.forward`), so every quantity computed from the actor is masked."""

    def __init__(self, space: spaces.Space[Any], mask_from: str | None = None,
                 mask_groups: list[tuple[int, int]] | None = None, obs_encoder: str = "auto") -> None:
        self.space = space
        self.mask_from = mask_from
        self.mask_groups = mask_groups if mask_from else None  # the action distribution's logit groups
        self.mask_dim = self.mask_groups[-1][1] if self.mask_groups else 0
        self.features = space
        if mask_from == "obs":
            assert isinstance(space, spaces.Dict)
            self.features = spaces.Dict({k: v for k, v in space.spaces.items() if k != MASK_KEY})
        self.image = image_layout(self.features, obs_encoder)  # images: channels first, uint8 kept (ConvBody scales)
        features = _obs_dim(self.features)
        if features == 0:
            raise UnsupportedSpaceError(f"the observation space {space} has no entries: the policy would see nothing")
        self.dim = features + self.mask_dim
        self.dtype = self.image.dtype if self.image else np.float32  # of encoded observations
        # The hot path of `one`: a plain Box, flattened.
        self._box_shape = space.shape if not self.mask_dim and self.image is None and isinstance(
            space, spaces.Box) else None

    def __call__(self, obs: Any, masks: Any = None) -> np.ndarray:
        """Encode a batch of observations (leading dim = batch) to an array [B, dim] of `dtype`; `masks`
        [B, mask_dim] when the masks come from infos. ObservationError if they do not fit the space."""
        if self.image:
            features = self.image.encode(_checked_box(self.features, obs))
        else:
            features = _encode(self.features, obs).astype(self.dtype, copy=False)
        if not self.mask_dim:
            return features
        masks = obs[MASK_KEY] if self.mask_from == "obs" else masks
        if masks is None:
            raise ValueError("this env's actions are masked: pass the mask (info['action_mask'])")
        return np.concatenate([features, self._mask(masks, len(features))], axis=1)

    def one(self, obs: Any, info: dict[str, Any] | None = None) -> np.ndarray:
        """Encode a single (unbatched) observation (and, for info masks, its info) to [dim]. ObservationError if
        it does not fit the space."""
        if self._box_shape is not None:  # the hot path: a shape and a dtype check, then a view
            arr = np.asarray(obs)
            if arr.shape != self._box_shape or arr.dtype.kind not in "fiub":
                _check_numbers(self.space, arr)
                raise ObservationError(_wrong_shape(self.space, arr.shape))
            return arr.astype(np.float32, copy=False).reshape(-1)
        features: np.ndarray
        if self.image is not None:
            features = self.image.encode(_checked_box(self.features, np.asarray(obs)[None]))[0]
        else:
            features = _encode(self.features, _add_batch_dim(self.features, obs))[0].astype(np.float32, copy=False)
        if not self.mask_dim:
            return features
        if self.mask_from == "obs":
            mask = obs[MASK_KEY]
        elif info is None or MASK_KEY not in info:
            raise ValueError("the env gave info['action_mask'] at its first reset but not here")
        else:
            mask = info[MASK_KEY]
        return np.concatenate([features, self._mask(mask, 1)[0]])

    def _mask(self, mask: Any, rows: int) -> np.ndarray:
        arr = np.asarray(mask)
        if arr.size != rows * self.mask_dim:
            raise ValueError(f"action_mask has {arr.size // max(rows, 1)} entries, the action space "
                             f"{self.mask_dim} (one per action, per sub-action for MultiDiscrete)")
        allowed: np.ndarray = (arr.reshape(rows, self.mask_dim) != 0).astype(self.dtype)
        return allowed

    def empty_mask_row(self, encoded: np.ndarray) -> int | None:
        """The first row of encoded observations [B, dim] whose mask allows no action in some group
        (sub-action), or None (also when nothing is masked)."""
        if not self.mask_groups:
            return None
        masks = encoded[:, -self.mask_dim:]
        for lo, hi in self.mask_groups:
            empty = ~(masks[:, lo:hi] > 0).any(axis=1)
            if empty.any():
                return int(np.flatnonzero(empty)[0])
        return None

    def is_batched(self, obs: Any) -> bool:
        """Whether `obs` is a batch of observations (one more leading dim than the space's), not a single one."""
        return _is_batched(self.features, obs)


def _is_batched(space: spaces.Space[Any], obs: Any) -> bool:
    if isinstance(space, spaces.Dict):
        key, sub = next(iter(space.spaces.items()))
        return _is_batched(sub, _entry(obs, key))
    if isinstance(space, spaces.Discrete):
        return np.ndim(obs) == 1
    assert space.shape is not None  # a Box: the encoder takes Box, Discrete and Dict only
    return np.ndim(obs) == len(space.shape) + 1


def _obs_dim(space: spaces.Space[Any]) -> int:
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.Dict):
        return sum(_obs_dim(s) for s in space.spaces.values())
    raise UnsupportedSpaceError(
        f"unsupported observation space {space!r}: supported are Box, Discrete and Dict of those"
    )


def _wrong_shape(space: spaces.Space[Any], shape: tuple[int, ...], batch: bool = False) -> str:
    what = f"a batch of observations of shape {shape[1:]}" if batch else f"an observation of shape {shape}"
    return f"{what} does not fit the observation space {space} (shape {space.shape})"


def _check_numbers(space: spaces.Space[Any], arr: np.ndarray) -> None:
    if arr.dtype.kind not in "fiub":  # text that numpy would parse, objects, None
        raise ObservationError(f"observations of {space} are numbers, got an array of {arr.dtype}")


def _checked_box(space: spaces.Space[Any], obs: Any) -> np.ndarray:
    """A batch [B, *space.shape] of Box observations as an array of numbers, or ObservationError."""
    arr = np.asarray(obs)
    _check_numbers(space, arr)
    if arr.shape[1:] != space.shape:
        raise ObservationError(_wrong_shape(space, arr.shape, batch=True))
    return arr


def _encode(space: spaces.Space[Any], obs: Any) -> np.ndarray:
    """A batch of observations of `space` as float32 rows, checked against the space."""
    if isinstance(space, spaces.Box):
        arr = _checked_box(space, obs).astype(np.float32, copy=False)
        return arr.reshape(len(arr), int(np.prod(space.shape)))  # (also an empty batch)
    if isinstance(space, spaces.Discrete):
        values = np.asarray(obs)
        if values.ndim != 1:
            raise ObservationError(f"an observation of {space} is one integer, got an array of shape "
                                   f"{values.shape[1:]}")
        if values.dtype.kind not in "iub" and not (values.dtype.kind == "f" and np.all(values == np.round(values))):
            raise ObservationError(f"observation {values[:4]} of {space} is not an integer")
        idx = values.astype(np.int64) - int(space.start)
        if idx.size and (idx.min() < 0 or idx.max() >= space.n):
            bad = values[(idx < 0) | (idx >= space.n)][0]
            raise ObservationError(f"observation {bad} is outside {space} (from {space.start} to "
                                   f"{space.start + space.n - 1})")
        return np.eye(int(space.n), dtype=np.float32)[idx]
    assert isinstance(space, spaces.Dict)
    return np.concatenate([_encode(sub, _entry(obs, key)) for key, sub in space.spaces.items()], axis=1)


def _entry(obs: Any, key: str) -> Any:
    """A Dict observation's entry, or ObservationError naming what is missing."""
    try:
        return obs[key]
    except (KeyError, TypeError, IndexError):
        raise ObservationError(f"the observation has no entry {key!r} of the Dict observation space "
                               f"(got {type(obs).__name__})") from None


def _add_batch_dim(space: spaces.Space[Any], obs: Any) -> Any:
    if isinstance(space, spaces.Dict):
        return {key: _add_batch_dim(sub, _entry(obs, key)) for key, sub in space.spaces.items()}
    return np.asarray(obs)[None]


# --- action distributions ---------------------------------------------------------------------------------


def mask_source(space: spaces.Space[Any], dist: ActionDistribution, reset_info: dict[str, Any] | None) -> str | None:
    """Where the env's action masks come from: 'obs' (a Dict observation with an "action_mask" entry), 'info'
    (the reset info holds "action_mask"), or None."""
    source = ("obs" if isinstance(space, spaces.Dict) and MASK_KEY in space.spaces
              else "info" if isinstance(reset_info, dict) and MASK_KEY in reset_info else None)
    if source and dist.mask_groups is None:
        raise UnsupportedSpaceError("the env gives an action_mask, but action masking is for Discrete and "
                                    "MultiDiscrete action spaces")
    return source
