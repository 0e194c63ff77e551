"""sb3-contrib's TRPO constructor arguments -> trpo's `TRPOConfig` fields, one to one (`config_for`), and the
arguments with no exact counterpart refused with a ValueError of one line naming them (trpo/sb3.py, docs/sb3.md).

Two sb3-contrib quantities are defined per action dimension where trpo's are joint: sb3-contrib bounds the mean
over states *and action dimensions* of its Gaussian (or Bernoulli) KL, and damps the Hessian of that mean. With
A such dimensions (`kl_dims`: a Box's size, a MultiBinary's; 1 for Discrete and MultiDiscrete, whose KL both sum),
its Fisher matrix is trpo's F / A, so solving (F / A + d) x = g is solving (F + A d) x' = g with x = A x', and its
step sqrt(2 target_kl / x^T (F / A + d) x) x is trpo's sqrt(2 max_kl / x'^T (F + A d) x') x' with
max_kl = A target_kl: the same direction, length and trust region (cg_damping = A x sb3's damping).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN
from torch import nn, optim

POLICIES = ("MlpPolicy", "CnnPolicy", "MultiInputPolicy")
ACTIVATIONS: dict[type[nn.Module], str] = {nn.Tanh: "tanh", nn.ReLU: "relu"}
EXTRACTORS: dict[str, type[Any]] = {"MlpPolicy": FlattenExtractor, "CnnPolicy": NatureCNN,
                                    "MultiInputPolicy": CombinedExtractor}
# policy_kwargs that only have sb3's defaults in trpo: name -> the one value accepted, and why
FIXED_POLICY_KWARGS: dict[str, tuple[Any, str]] = {
    "ortho_init": (True, "trpo's networks are always orthogonally initialized (gains sqrt(2), 0.01 and 1, as sb3's)"),
    "normalize_images": (True, "trpo always scales uint8 pixels to [0, 1]"),
    "full_std": (True, "trpo's gSDE has one sigma per (feature, action)"),
    "use_expln": (False, "trpo's gSDE uses exp(log_std)"),
    "squash_output": (False, "trpo's Gaussian is not squashed"),
    "optimizer_class": (optim.Adam, "the critic's optimizer is Adam"),
}


def refuse(name: str, why: str) -> ValueError:
    return ValueError(f"trpo.sb3.TRPO: {name} is not supported: {why}")


def kl_dims(action_space: spaces.Space[Any]) -> int:
    """How many action dimensions sb3-contrib's mean KL averages over (see the module docstring)."""
    if isinstance(action_space, spaces.Box | spaces.MultiBinary):
        return int(np.prod(action_space.shape))
    return 1


def _sizes(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not value or not all(isinstance(v, int) and v > 0 for v in value):
        raise refuse(f"policy_kwargs net_arch {name}={value!r}",
                     "trpo's MLPs take a non-empty list of positive layer sizes")
    return tuple(value)


def _net_arch(policy: str, net_arch: Any) -> dict[str, Any]:
    if policy == "CnnPolicy":  # NatureCNN's 512 features, then the heads (sb3's net_arch [] for it)
        if net_arch not in (None, [], {}):
            raise refuse(f"policy_kwargs net_arch={net_arch!r} with CnnPolicy",
                         "trpo's CNN feeds its 512 features to the heads directly (net_arch [])")
        return {}
    if net_arch is None:
        return {}  # sb3's default: dict(pi=[64, 64], vf=[64, 64]), trpo's too
    if isinstance(net_arch, dict):
        unknown = set(net_arch) - {"pi", "vf"}
        if unknown:
            raise refuse(f"policy_kwargs net_arch keys {sorted(unknown)}", "only pi and vf")
        return {"actor_hidden": _sizes("pi", net_arch.get("pi")), "critic_hidden": _sizes("vf", net_arch.get("vf"))}
    sizes = _sizes("", net_arch)
    return {"actor_hidden": sizes, "critic_hidden": sizes}


def _extractor(policy: str, kwargs: dict[str, Any], obs_space: spaces.Space[Any]) -> dict[str, Any]:
    """The config fields of the extractor's policy_kwargs: CnnPolicy's NatureCNN shared by the policy and the
    value function (sb3's default) is a shared trunk that only the policy step trains, as sb3-contrib's critic step
    drops the shared parameters' gradients."""
    cls = kwargs.pop("features_extractor_class", EXTRACTORS[policy])
    if cls is not EXTRACTORS[policy]:
        raise refuse(f"policy_kwargs features_extractor_class={cls.__name__}",
                     f"{policy} uses sb3's {EXTRACTORS[policy].__name__} only")
    fe_kwargs = dict(kwargs.pop("features_extractor_kwargs", None) or {})
    if policy == "CnnPolicy":
        if fe_kwargs.pop("features_dim", 512) != 512 or fe_kwargs:
            raise refuse(f"policy_kwargs features_extractor_kwargs={fe_kwargs!r}",
                         "trpo's Nature CNN has 512 features")
        shared = kwargs.pop("share_features_extractor", True)
        return {"shared_trunk": True, "value_fit_trunk": False} if shared else {}
    kwargs.pop("share_features_extractor", None)  # a Flatten/concatenation has no parameters to share
    if policy == "MultiInputPolicy":
        assert isinstance(obs_space, spaces.Dict)
        images = [key for key, sub in obs_space.spaces.items() if is_image_space(sub)]
        if images:
            raise refuse(f"MultiInputPolicy on image entries {images}",
                         "trpo flattens a Dict's entries into its MLP; sb3 puts images through a CNN")
        fe_kwargs.pop("cnn_output_dim", None)  # used by sb3 for image entries only
    if fe_kwargs:
        raise refuse(f"policy_kwargs features_extractor_kwargs={fe_kwargs!r}", f"{policy}'s extractor takes none")
    return {}


def policy_fields(policy: Any, policy_kwargs: dict[str, Any] | None, obs_space: spaces.Space[Any]) -> dict[str, Any]:
    """The config fields of sb3's policy string and policy_kwargs."""
    if not isinstance(policy, str) or policy not in POLICIES:
        raise refuse(f"policy={getattr(policy, '__name__', policy)!r}", f"one of {', '.join(POLICIES)}")
    if policy == "MultiInputPolicy" and not isinstance(obs_space, spaces.Dict):
        raise refuse("MultiInputPolicy on a non-Dict observation space", "use MlpPolicy or CnnPolicy")
    if policy != "MultiInputPolicy" and isinstance(obs_space, spaces.Dict):
        raise refuse(f"{policy} on a Dict observation space", "use MultiInputPolicy, as sb3 requires")
    kwargs = dict(policy_kwargs or {})
    fields: dict[str, Any] = {"obs_encoder": "cnn" if policy == "CnnPolicy" else "mlp", "image_encoder": "nature",
                              **_net_arch(policy, kwargs.pop("net_arch", None))}
    activation = kwargs.pop("activation_fn", nn.Tanh)
    if activation not in ACTIVATIONS:
        raise refuse(f"policy_kwargs activation_fn={getattr(activation, '__name__', activation)}", "nn.Tanh or nn.ReLU")
    fields["activation"] = ACTIVATIONS[activation]
    fields["init_log_std"] = float(kwargs.pop("log_std_init", 0.0))
    for name, (value, why) in FIXED_POLICY_KWARGS.items():
        if name in kwargs and kwargs.pop(name) != value:
            raise refuse(f"policy_kwargs {name} other than {getattr(value, '__name__', value)}", why)
    # sb3's policy gives Adam eps 1e-5 unless optimizer_kwargs is given (then torch's defaults under it)
    opt_kwargs = kwargs.pop("optimizer_kwargs", None)
    if opt_kwargs is not None and set(opt_kwargs) - {"eps"}:
        raise refuse(f"policy_kwargs optimizer_kwargs {sorted(set(opt_kwargs) - {'eps'})}", "only eps")
    fields["value_eps"] = 1e-5 if opt_kwargs is None else float(opt_kwargs.get("eps", 1e-8))
    fields.update(_extractor(policy, kwargs, obs_space))
    if kwargs:
        raise refuse(f"policy_kwargs {sorted(kwargs)}", "no trpo counterpart")
    return fields


def config_fields(args: dict[str, Any], obs_space: spaces.Space[Any], action_space: spaces.Space[Any],
                  num_envs: int, learning_rate: float, device: str) -> dict[str, Any]:
    """TRPOConfig's fields for sb3-contrib's constructor arguments `args` (by their sb3 names)."""
    for name in ("rollout_buffer_class", "rollout_buffer_kwargs"):
        if args[name]:
            raise refuse(name, "trpo's batch is its own (advantages with truncation bootstrapping built in)")
    if not args["target_kl"] > 0:
        raise refuse(f"target_kl={args['target_kl']}", "the trust region needs target_kl > 0")
    if args["line_search_max_iter"] < 2:
        raise refuse(f"line_search_max_iter={args['line_search_max_iter']}",
                     "trpo's line search tries the full step and at least one shrunk step (>= 2)")
    if args["sub_sampling_factor"] < 1:
        raise refuse(f"sub_sampling_factor={args['sub_sampling_factor']}", "a positive integer")
    dims = kl_dims(action_space)
    return dict(
        num_envs=num_envs, steps_per_env=args["n_steps"], gamma=args["gamma"], gae_lambda=args["gae_lambda"],
        advantage="gae", normalize_advantages=args["normalize_advantage"], update_rule="trpo",
        max_kl=args["target_kl"] * dims, kl_constraint="mean", cg_iters=args["cg_max_steps"],
        cg_damping=args["cg_damping"] * dims, fisher_subsample=1,
        backtrack_ratio=args["line_search_shrinking_factor"], max_backtracks=args["line_search_max_iter"] - 1,
        value_lr=learning_rate, value_epochs=args["n_critic_updates"], value_minibatch=args["batch_size"],
        use_sde=args["use_sde"], sde_sample_freq=args["sde_sample_freq"], normalize_obs=False,
        normalize_reward=False, device=device, checkpoint_every=0,
        **policy_fields(args["policy"], args["policy_kwargs"], obs_space),
    )


# --- spaces as JSON, so that a saved model loads without its env (sb3 pickles them; trpo stores plain data) ---

def space_to_json(space: spaces.Space[Any]) -> dict[str, Any]:
    if isinstance(space, spaces.Box):
        return {"type": "Box", "low": space.low.tolist(), "high": space.high.tolist(), "dtype": str(space.dtype)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": list(space.shape)}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(v) for k, v in space.spaces.items()}}
    raise refuse(f"the space {space}", "Box, Discrete, MultiDiscrete, MultiBinary or Dict")


def space_from_json(data: dict[str, Any]) -> spaces.Space[Any]:
    kind = data["type"]
    if kind == "Box":
        dtype = np.dtype(data["dtype"])
        return spaces.Box(np.array(data["low"], dtype), np.array(data["high"], dtype), dtype=dtype)  # type: ignore[arg-type]
    if kind == "Discrete":
        return spaces.Discrete(data["n"], start=data["start"])
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(data["nvec"], start=data["start"])
    if kind == "MultiBinary":
        return spaces.MultiBinary(data["n"])
    return spaces.Dict({k: space_from_json(v) for k, v in data["spaces"].items()})
