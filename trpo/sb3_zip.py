"""SB3's names for trpo's networks, and sb3-contrib's TRPO zips read for trpo.sb3.TRPO (trpo/sb3.py, docs/sb3.md).

SB3's ActorCriticPolicy (MlpPolicy; MultiInputPolicy of vectors, whose extractor has no parameters; CnnPolicy's
NatureCNN) holds what trpo's actor and critic hold, layer for layer:

    sb3 (policy.state_dict())              trpo
    log_std                                actor.head.log_std   (gSDE: [features, actions], sb3's full_std)
    features_extractor.cnn.{i}.*           actor.body.convs.{i}.*   (CnnPolicy; linear.0.* is body.fc.*)
    pi_features_extractor.*                the same module as features_extractor
    vf_features_extractor.*                critic.body.*, or the actor's body where shared (sb3's default)
    mlp_extractor.policy_net.{i}.*         actor.body.{i}.*     (Linear, activation, Linear, ...: the same indices)
    mlp_extractor.value_net.{i}.*          critic.body.{i}.*
    action_net.*                           actor.head.linear.*
    value_net.*                            critic.out.*

so `model.policy.state_dict()` is the actor's and critic's tensors under sb3's names, in sb3's order, a shared
module under each of its names as torch lists it; sb3's optimizer numbers the distinct parameters in that order. A
trpo tensor with no sb3 counterpart keeps trpo's name, under "actor." or "critic.". sb3's Adam runs over every
policy parameter, but in TRPO only the value side ever has a gradient (the actor moves by the natural gradient
step; sb3-contrib drops a shared CNN's gradients from the critic's step), so its state is trpo's critic Adam
renumbered (`optimizer_to_sb3` and back).

Reading an sb3-contrib zip runs no code from it (docs/security.md): SB3 pickles some entries of its "data"; the
four trpo needs are unpickled here against an allow-list (`_SafeUnpickler`), the rest not at all, and SB3's
load_from_zip_file is handed them all in `custom_objects`, so it unpickles nothing (`read_sb3_zip`).
"""

from __future__ import annotations

import base64
import collections
import importlib
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN
from torch import Tensor, nn

from trpo.encoders import ConvBody, MLPBody

if TYPE_CHECKING:
    from trpo.sb3 import TRPO

# (sb3's name or prefix, the network, trpo's name or prefix), in the order of sb3's policy.state_dict()
_STD = (("log_std", "actor", "head.log_std"),)
_MLP = (("mlp_extractor.policy_net.", "actor", "body."), ("mlp_extractor.value_net.", "critic", "body."))
_HEADS = (("action_net.", "actor", "head.linear."), ("value_net.", "critic", "out."))
# CnnPolicy's NatureCNN, registered by sb3 under three names (the policy's twice), its layers as trpo's ConvBody's
_CNN_PREFIXES = ("features_extractor.", "pi_features_extractor.", "vf_features_extractor.")
_CNN_LAYERS = (("cnn.", "body.convs."), ("linear.0.", "body.fc."))
# every sb3 name or prefix above: an sb3-contrib zip's tensors must all be among them
_SB3_NAMES = (*(sb3 for sb3, _, _ in (*_STD, *_MLP, *_HEADS)),
              *(pre + sb3 for pre in _CNN_PREFIXES for sb3, _ in _CNN_LAYERS))
# data entries an sb3-contrib TRPO zip has and other algorithms' zips lack
_TRPO_KEYS = {"cg_max_steps", "cg_damping", "line_search_max_iter", "n_critic_updates", "target_kl"}
# its constructor arguments (as saved in "data"; the policy and the stats window are saved otherwise)
_ARGS = ("learning_rate", "n_steps", "batch_size", "gamma", "cg_max_steps", "cg_damping",
         "line_search_shrinking_factor", "line_search_max_iter", "n_critic_updates", "gae_lambda", "use_sde",
         "sde_sample_freq", "rollout_buffer_kwargs", "normalize_advantage", "target_kl", "sub_sampling_factor",
         "tensorboard_log", "policy_kwargs", "verbose", "seed")
# the pickled entries of "data" that a trpo model needs, decoded by _SafeUnpickler; the rest are not unpickled at all
_UNPICKLED = {"observation_space", "action_space", "policy_kwargs", "learning_rate"}
_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary, spaces.Dict, spaces.Tuple)
# what these entries legitimately hold, by the name pickle gives it: the spaces; policy_kwargs' classes (activations,
# sb3's extractors, Adam: trpo.sb3_args refuses those it has no counterpart for); containers; numpy's arrays, dtypes
# and scalars (numpy 2's names, and numpy 1's "numpy.core" ones for older zips). All are constructors and setters of
# data: none imports, opens, runs or looks up anything by a name it is given.
_ALLOWED: dict[str, Any] = {
    f"{c.__module__}.{c.__qualname__}": c
    for c in (*_SPACES, nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Softplus,
              nn.Mish, torch.optim.Adam, FlattenExtractor, CombinedExtractor, NatureCNN, collections.OrderedDict,
              dict, list, tuple, set, frozenset, bytearray, complex, np.dtype, np.ndarray)}
_NUMPY_CORE = importlib.import_module("numpy._core" if hasattr(np, "_core") else "numpy.core")  # 2 or 1
for _core in ("numpy._core", "numpy.core"):
    _ALLOWED.update({f"{_core}.multiarray._reconstruct": _NUMPY_CORE.multiarray._reconstruct,
                     f"{_core}.multiarray.scalar": _NUMPY_CORE.multiarray.scalar,
                     f"{_core}.numeric._frombuffer": _NUMPY_CORE.numeric._frombuffer})
_HOLDS = ("a zip may only hold gymnasium spaces, numpy arrays, torch activation classes, sb3's extractors, Adam and "
          "plain containers in observation_space, action_space, policy_kwargs and learning_rate")


class _Dropped:
    """What a space's pickled random generator (numpy.random's constructors) becomes: nothing is built or seeded; the
    space's _np_random is then set to None (gymnasium seeds a new one when it is first asked for)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _RefusedError(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _SafeUnpickler(pickle._Unpickler):
    """pickle's Unpickler (its Python implementation) whose globals are _ALLOWED's (numpy.random's become _Dropped);
    any other is refused (_RefusedError) before it is imported. It sets the state (BUILD) only of objects this pickle
    built, never of an allowed class or function itself, and takes no extension codes (copyreg's registry)."""

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if module == "numpy.random" or module.startswith("numpy.random."):
            return _Dropped
        if f"{module}.{name}" not in _ALLOWED:
            raise _RefusedError(f"{module}.{name}")
        return _ALLOWED[f"{module}.{name}"]

    def load_build(self) -> None:
        inst = self.stack[-2]  # type: ignore[attr-defined]
        if inst is _Dropped or any(inst is v for v in _ALLOWED.values()):
            raise _RefusedError(f"the state of {getattr(inst, '__qualname__', inst)} (BUILD)")
        super().load_build()  # type: ignore[misc]

    def load_extension(self) -> None:
        raise _RefusedError("an extension code (EXT1/EXT2/EXT4)")

    dispatch.update({pickle.BUILD[0]: load_build,
                     **dict.fromkeys((pickle.EXT1[0], pickle.EXT2[0], pickle.EXT4[0]), load_extension)})


def _forget_rng(space: spaces.Space[Any]) -> None:
    space._np_random = None  # type: ignore[assignment]
    for sub in space.spaces.values() if isinstance(space, spaces.Dict) else getattr(space, "spaces", ()):
        _forget_rng(sub)


def _decode(key: str, entry: dict[str, Any], path: object) -> Any:
    """An entry of an SB3 zip's "data" that SB3 pickled, unpickled by _SafeUnpickler, as `key` needs it; anything
    else is a ValueError of one line."""
    try:
        value = _SafeUnpickler(io.BytesIO(base64.b64decode(entry[":serialized:"].encode()))).load()
    except _RefusedError as e:
        why = _HOLDS if key != "learning_rate" else (
            "its learning_rate is a pickled function (a schedule), which loading would run: pass learning_rate= "
            "(a number or your schedule) in custom_objects, e.g. TRPO.load(path, custom_objects={'learning_rate': "
            "1e-3})")
        raise ValueError(f"trpo.sb3.TRPO.load refuses to unpickle {e.name} from {path} ({key}): {why}") from None
    except Exception as e:  # a damaged pickle: whatever pickle or a constructor raised
        line = f"{path} ({key}) is not a pickle trpo reads: {type(e).__name__}: {e}".splitlines()[0]
        raise ValueError(line) from None
    wanted: Any = {"observation_space": _SPACES, "action_space": _SPACES, "policy_kwargs": dict,
                   "learning_rate": (float, int)}[key]
    if not isinstance(value, wanted) or isinstance(value, bool):
        raise ValueError(f"{path} ({key}) holds a {type(value).__name__}, which is no {key}")
    if isinstance(value, spaces.Space):
        _forget_rng(value)
    return value


def _match(name: str, pattern: str) -> bool:
    return name.startswith(pattern) if pattern.endswith(".") else name == pattern


def sb3_names(actor: list[str], critic: list[str], body: str, shared: bool) -> dict[str, tuple[str, str]]:
    """sb3's name -> (network, trpo's name) for every tensor of the actor's and critic's state dicts, in sb3's order.
    `body`: "mlp" (MLP bodies), "cnn" (NatureCNN bodies) or another (trpo's names); `shared`: the critic's body and
    cell are the actor's (listed as the actor's). A tensor without an sb3 counterpart keeps trpo's name under its
    network's."""
    own = [k for k in critic if not (shared and k.startswith(("body.", "cell.")))]
    nets = {"actor": actor, "critic": own}
    table: list[tuple[str, str, str]] = list(_STD)
    if body == "cnn":
        for prefix in _CNN_PREFIXES:
            net = "critic" if prefix.startswith("vf_") and not shared else "actor"
            table += [(prefix + sb3, net, trpo) for sb3, trpo in _CNN_LAYERS]
    elif body == "mlp":
        table += _MLP
    table += _HEADS
    out: dict[str, tuple[str, str]] = {}
    for sb3, net, trpo in table:
        out.update({sb3 + k[len(trpo):]: (net, k) for k in nets[net] if _match(k, trpo)})
    mapped = set(out.values())
    out.update({f"{net}.{k}": (net, k) for net, keys in nets.items() for k in keys if (net, k) not in mapped})
    return out


def _numbering(names: dict[str, tuple[str, str]]) -> dict[tuple[str, str], int]:
    """sb3's optimizer's number of each distinct tensor (a shared module's once, at its first name)."""
    return {key: i for i, key in enumerate(dict.fromkeys(names.values()))}


def optimizer_to_sb3(state: dict[str, Any], names: dict[str, tuple[str, str]],
                     fitted: list[tuple[str, str]]) -> dict[str, Any]:
    """trpo's critic Adam state (over the tensors `fitted`, in its order) in the layout of sb3's Adam over the
    policy."""
    index = _numbering(names)
    (group,) = state["param_groups"]
    return {"state": {index[fitted[p]]: s for p, s in state["state"].items()},
            "param_groups": [{**group, "params": list(range(len(index)))}]}


def optimizer_from_sb3(state: dict[str, Any], names: dict[str, tuple[str, str]],
                       fitted: list[tuple[str, str]]) -> dict[str, Any]:
    """sb3's Adam state over the policy as trpo's critic Adam state (over the tensors `fitted`); entries of actor
    parameters (sb3's TRPO never steps them: no gradient reaches them) are dropped."""
    index = _numbering(names)
    (group,) = state["param_groups"]
    if len(group["params"]) != len(index):
        raise ValueError(f"policy.optimizer: the state holds {len(group['params'])} parameters, the policy "
                         f"{len(index)}")
    ids = [group["params"][index[k]] for k in fitted]  # the state's key of each fitted parameter
    return {"state": {p: state["state"][i] for p, i in enumerate(ids) if i in state["state"]},
            "param_groups": [{**group, "params": list(range(len(fitted)))}]}


class TRPOOptimizer:
    """`model.policy.optimizer` as SB3 code saves and loads it: the critic's Adam in sb3's layout."""

    def __init__(self, policy: TRPOPolicy) -> None:
        self.policy = policy

    def state_dict(self) -> dict[str, Any]:
        p = self.policy
        return optimizer_to_sb3(p.model.learner.critic_optimizer.state_dict(), p.names(), p.fitted())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        p = self.policy
        p.model.learner.critic_optimizer.load_state_dict(optimizer_from_sb3(state, p.names(), p.fitted()))


class TRPOPolicy:
    """`model.policy` as SB3 code touches it: predict, the spaces, the device, train/eval mode, state_dict and
    load_state_dict under sb3's names, `optimizer`; `actor` and `critic` are trpo's networks."""

    def __init__(self, model: TRPO) -> None:
        self.model = model
        self.observation_space, self.action_space = model.observation_space, model.action_space
        self.device = model.device
        self.actor, self.critic = model.learner.actor, model.learner.critic
        self.optimizer = TRPOOptimizer(self)

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = False) -> tuple[np.ndarray, Any]:
        return self.model.predict(observation, state, episode_start, deterministic)

    def set_training_mode(self, mode: bool) -> None:
        self.actor.train(mode)
        self.critic.train(mode)

    def body(self) -> str:
        """The bodies' kind as sb3_names takes it."""
        if isinstance(self.actor.body, MLPBody) and isinstance(self.critic.body, MLPBody):
            return "mlp"
        cfg = self.model.learner.config
        return "cnn" if cfg.image_encoder == "nature" and isinstance(self.actor.body, ConvBody) else "other"

    def names(self, actor: list[str] | None = None, critic: list[str] | None = None) -> dict[str, tuple[str, str]]:
        """sb3's names of these networks' tensors (or of state dicts with the keys `actor` and `critic`)."""
        return sb3_names(list(self.actor.state_dict()) if actor is None else actor,
                         list(self.critic.state_dict()) if critic is None else critic, self.body(),
                         self.critic.body is self.actor.body)

    def fitted(self) -> list[tuple[str, str]]:
        """(network, trpo's name) of each tensor the critic's Adam steps, in its order (a shared body's: the
        actor's)."""
        ident: dict[int, tuple[str, str]] = {}
        for net, module in (("actor", self.actor), ("critic", self.critic)):
            for k, param in module.named_parameters():
                ident.setdefault(id(param), (net, k))
        return [ident[id(param)] for param in self.model.learner.critic_optimizer.params]

    def state_dict(self) -> dict[str, Tensor]:
        nets = {"actor": self.actor.state_dict(), "critic": self.critic.state_dict()}
        return {name: nets[net][k] for name, (net, k) in self.names().items()}

    def load_state_dict(self, state: dict[str, Tensor], strict: bool = True) -> None:
        """As nn.Module's: with `strict`, a RuntimeError naming missing and unexpected keys (nothing loaded)."""
        names = self.names()
        missing, unexpected = [n for n in names if n not in state], [n for n in state if n not in names]
        if strict and (missing or unexpected):
            raise RuntimeError(f"Error(s) in loading state_dict for TRPOPolicy: missing keys {missing}, unexpected "
                               f"keys {unexpected}")
        parts: dict[str, dict[str, Tensor]] = {"actor": {}, "critic": {}}
        for name, value in state.items():
            if name in names:
                parts[names[name][0]][names[name][1]] = value
        self.actor.load_state_dict(parts["actor"], strict=False)  # still a RuntimeError for a shape mismatch
        self.critic.load_state_dict(parts["critic"], strict=False)


def _rewind(path: str | Path | io.BufferedIOBase) -> None:
    if isinstance(path, io.BufferedIOBase):
        path.seek(0)


def read_trpo_zip(path: str | Path | io.BufferedIOBase) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A trpo.sb3 save's data.json and learner state (torch tensors only, weights_only); None for another zip."""
    with zipfile.ZipFile(path) as archive:
        if "trpo.pt" not in archive.namelist():
            _rewind(path)
            return None
        data = json.loads(archive.read("data.json"))
        state = torch.load(io.BytesIO(archive.read("trpo.pt")), map_location="cpu", weights_only=True)
    return data, state


def zip_params(path: str | Path | io.BufferedIOBase, device: torch.device | str,
               policy: TRPOPolicy) -> dict[str, Any]:
    """set_parameters' dict from a zip: a trpo.sb3 save's networks and critic Adam under sb3's names, or an SB3
    zip's .pth files, as SB3 reads them (load_from_zip_file without its data: no unpickling)."""
    saved = read_trpo_zip(path)
    if saved is None:
        return load_from_zip_file(path, load_data=False, device=device)[1]
    state = saved[1]
    names = policy.names(list(state["actor"]), list(state["critic"]))
    nets = {"actor": state["actor"], "critic": state["critic"]}
    return {"policy": {name: nets[net][k] for name, (net, k) in names.items()},
            "policy.optimizer": optimizer_to_sb3(state["critic_optimizer"], names, policy.fitted())}


def read_sb3_zip(path: str | Path | io.BufferedIOBase, device: torch.device | str,
                 custom_objects: dict[str, Any] | None, print_system_info: bool) -> tuple[
                     dict[str, Any], tuple[spaces.Space[Any], spaces.Space[Any]], dict[str, Any], tuple[int, int]]:
    """An sb3-contrib TRPO zip as the drop-in's constructor arguments, the spaces, set_parameters' dict and the
    counters (num_timesteps, updates). Read by SB3's own load_from_zip_file (the .pth files with weights_only),
    which unpickles nothing: every pickled entry of its "data" comes in `custom_objects`, the user's own first, then
    those a trpo model needs (the spaces; policy_kwargs and learning_rate where they hold a class or a schedule)
    decoded by _SafeUnpickler, and None for the rest (the policy class, the last observations, the episode buffers).
    A pickle holding anything but _ALLOWED's (a learning-rate schedule: a function) is refused with one line naming
    it, and runs nothing; so is a policy whose tensors do not map onto trpo's networks (a custom extractor, a Dict's
    CNN). A CnnPolicy's `share_features_extractor` is in its saved policy_kwargs where it was given (True where not,
    as sb3's default), so the drop-in built from them shares the CNN as it was shared."""
    with zipfile.ZipFile(path) as archive:
        raw = json.loads(archive.read("data").decode()) if "data" in archive.namelist() else {}  # as SB3 reads it
    _rewind(path)
    if not isinstance(raw, dict) or not set(raw) >= _TRPO_KEYS:
        raise ValueError(f"{path} is neither a model saved by trpo.sb3 nor one saved by sb3-contrib's TRPO")
    given = custom_objects or {}
    pickled = {k: v for k, v in raw.items() if isinstance(v, dict) and ":serialized:" in v and k not in given}
    decoded = {k: _decode(k, v, path) if k in _UNPICKLED else None for k, v in pickled.items()}
    data, params, _ = load_from_zip_file(path, custom_objects={**decoded, **given}, device=device,
                                         print_system_info=print_system_info)
    assert data is not None
    unmapped = sorted({".".join(k.split(".")[:2]) for k in params.get("policy", {})
                       if not any(_match(k, sb3) for sb3 in _SB3_NAMES)})
    if unmapped:
        raise ValueError(f"{path}: its policy does not map onto trpo's networks (its {', '.join(unmapped)}): "
                         "trpo.sb3.TRPO loads sb3-contrib's MlpPolicy, CnnPolicy and MultiInputPolicy of vectors")
    args = {k: data[k] for k in _ARGS if k in data}
    # ortho_init only draws the first weights, which the loaded ones replace
    args["policy_kwargs"] = {k: v for k, v in (args.get("policy_kwargs") or {}).items() if k != "ortho_init"}
    obs_space, action_space = data["observation_space"], data["action_space"]
    cnn = any(k.startswith("features_extractor.") for k in params.get("policy", {}))
    args["policy"] = "MultiInputPolicy" if isinstance(obs_space, spaces.Dict) else "CnnPolicy" if cnn else "MlpPolicy"
    args["stats_window_size"] = data.get("_stats_window_size", 100)
    return args, (obs_space, action_space), params, (int(data["num_timesteps"]), int(data.get("_n_updates", 0)))
