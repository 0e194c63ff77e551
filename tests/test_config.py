"""TRPOConfig's types are strict: every bad value, built directly, read from the CLI or from YAML, is one
ConfigError naming the field, and every accepted value has exactly the field's type."""

from __future__ import annotations

import dataclasses
import os
import re
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from trpo.config import (
    RESUME_SAFE_FIELDS,
    SEED_MAX,
    ConfigError,
    TRPOConfig,
    available_cores,
    check_seed,
    coerce_fields,
    field_docs,
)
from trpo.resolve import PRESETS, VECTOR_PRESET, is_vector_observation, preset_name_for, resolve_config

HINTS = get_type_hints(TRPOConfig)
NAMES = [f.name for f in dataclasses.fields(TRPOConfig)]


def has_field_type(value: Any, hint: Any) -> bool:
    """`value` has exactly the type `hint` names: a bool is no int, an int no float, a tuple[int, ...] holds ints,
    env_wrappers' tuple[tuple[str, dict[str, Any]], ...] pairs of a str and a dict with str keys."""
    if hint is Any:
        return True
    if get_origin(hint) in (Union, types.UnionType):
        if value is None:
            return True
        (hint,) = (arg for arg in get_args(hint) if arg is not type(None))
    if get_origin(hint) is tuple:
        args = get_args(hint)
        if type(value) is not tuple:
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(has_field_type(x, args[0]) for x in value)
        return len(value) == len(args) and all(has_field_type(x, a) for x, a in zip(value, args, strict=True))
    if get_origin(hint) is dict:
        key, item = get_args(hint)
        return type(value) is dict and all(has_field_type(k, key) and has_field_type(v, item) for k, v in value.items())
    if get_origin(hint) is Literal:
        return type(value) is str and value in get_args(hint)
    if hint in (bool, int, float, str):
        return type(value) is hint
    raise AssertionError(f"this test knows no field type {hint}")


def assert_well_typed(cfg: TRPOConfig) -> None:
    for name in NAMES:
        assert has_field_type(getattr(cfg, name), HINTS[name]), (name, getattr(cfg, name))
    assert TRPOConfig.from_dict(cfg.to_dict()) == cfg
    # A list in a tuple field would make the frozen config unhashable. The env options' kwargs are dicts (env_kwargs,
    # each env_wrappers entry's), which Python does not hash: a config with them set is not meant to be.
    if cfg.env_kwargs is None and not cfg.env_wrappers:
        hash(cfg)


def yaml_values(text: str) -> dict[str, Any]:
    return coerce_fields(yaml.safe_load(text))


# --- bool fields ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["no", "false", 1, 0, None, 1.0])
def test_a_bool_field_takes_only_a_bool_when_built_directly(value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^normalize_obs: cannot read {re.escape(repr(value))} as bool"):
        TRPOConfig(normalize_obs=value)


@pytest.mark.parametrize("text,expected", [("true", True), ("Yes", True), ("ON", True), ("1", True), ("false", False),
                                           ("no", False), ("Off", False), ("0", False), (True, True), (False, False)])
def test_a_bool_field_reads_the_words_of_text(text: Any, expected: bool) -> None:
    assert coerce_fields({"normalize_obs": text}) == {"normalize_obs": expected}


@pytest.mark.parametrize("value", ["maybe", "", "2", 1, 2.0])
def test_a_bool_field_refuses_other_text_and_numbers(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"normalize_obs: cannot read .* as bool"):
        coerce_fields({"normalize_obs": value})


# --- int fields ----------------------------------------------------------------------------------------------

def test_an_int_field_takes_an_int_or_an_integral_float() -> None:
    cfg = TRPOConfig(num_envs=2.0, steps_per_env=np.int64(64))
    assert cfg.num_envs == 2 and type(cfg.num_envs) is int and type(cfg.steps_per_env) is int
    for value in (2.5, "4", True, None, float("inf"), float("nan"), [2]):
        with pytest.raises(ConfigError, match=r"^num_envs: cannot read .* as int$"):
            TRPOConfig(num_envs=value)
    for value in (2**63, -(2**63) - 1, 10**5000):  # beyond torch's and numpy's ints; 10**5000 has no str()
        with pytest.raises(ConfigError, match=r"^num_envs: cannot read .* as 64-bit int$"):
            TRPOConfig(num_envs=value)


@pytest.mark.parametrize("text,expected", [("4", 4), (" 4 ", 4), ("1e5", 100_000), ("2.0", 2), ("1_000", 1000)])
def test_an_int_field_reads_integer_text(text: str, expected: int) -> None:
    (value,) = coerce_fields({"steps_per_env": text}).values()
    assert value == expected and type(value) is int


@pytest.mark.parametrize("text", ["1.7", "x", "", "1e400", "inf", "true"])
def test_an_int_field_refuses_other_text(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^steps_per_env: cannot read .* as int$"):
        coerce_fields({"steps_per_env": text})


def test_yaml_numbers_keep_their_meaning() -> None:
    with pytest.raises(ConfigError, match="num_envs: cannot read True as int"):
        yaml_values("num_envs: true")
    with pytest.raises(ConfigError, match=r"vine_states: cannot read 1\.7 as int"):
        yaml_values("vine_states: 1.7")
    # PyYAML reads 1e-10 and 1e5 (no dot) as text: they parse as numbers all the same.
    assert yaml_values("cg_tol: 1e-10\nsteps_per_env: 1e5") == {"cg_tol": 1e-10, "steps_per_env": 100_000}
    assert yaml_values("policy_epochs: null\npolicy_lr: none\nmax_grad_norm: ''") == dict.fromkeys(
        ("policy_epochs", "policy_lr", "max_grad_norm"))


# --- float fields --------------------------------------------------------------------------------------------

def test_a_float_field_takes_numbers_and_stores_floats() -> None:
    cfg = TRPOConfig(max_kl=1, penalty_coef=np.float32(0.5))
    assert cfg.max_kl == 1.0 and type(cfg.max_kl) is float and type(cfg.penalty_coef) is float
    assert coerce_fields({"max_kl": "0.02", "cg_tol": "1e-8"}) == {"max_kl": 0.02, "cg_tol": 1e-8}
    for value in (True, "0.02", None, [0.02]):
        with pytest.raises(ConfigError, match=r"^max_kl: cannot read .* as float$"):
            TRPOConfig(max_kl=value)
    for value in (float("nan"), float("inf"), "nan", "-inf"):
        with pytest.raises(ConfigError, match="max_kl must be a positive number"):
            TRPOConfig(**coerce_fields({"max_kl": value}))
    with pytest.raises(ConfigError, match=r"gamma: cannot read .* as float"):
        TRPOConfig(gamma=10**400)  # beyond float's range


# --- tuple, str and Literal fields ---------------------------------------------------------------------------

def test_a_tuple_field_takes_a_list_of_ints_or_comma_text() -> None:
    assert TRPOConfig(actor_hidden=[32, 16.0]).actor_hidden == (32, 16)
    assert coerce_fields({"critic_hidden": "64,64"}) == {"critic_hidden": (64, 64)}
    assert coerce_fields({"critic_hidden": ["8", 4]}) == {"critic_hidden": (8, 4)}
    for value in ((64, True), (64, 1.5), "64,64", 64, None, {64}):
        with pytest.raises(ConfigError, match=r"actor_hidden: cannot read .* as a list of ints \(64,64\)"):
            TRPOConfig(actor_hidden=value)
    for text in ("64,x", "64.5", "true"):
        with pytest.raises(ConfigError, match=r"actor_hidden: cannot read .* as a list of ints \(64,64\)"):
            coerce_fields({"actor_hidden": text})
    with pytest.raises(ConfigError, match="actor_hidden must be a non-empty list of positive sizes"):
        TRPOConfig(**coerce_fields({"actor_hidden": ","}))


def test_str_and_literal_fields_take_only_strings() -> None:
    for fields in ({"device": 0}, {"ray_address": 5}, {"update_rule": 1}, {"update_rule": None}):
        name = next(iter(fields))
        with pytest.raises(ConfigError, match=f"^{name}(: cannot read .* as str| must be one of)"):
            TRPOConfig(**fields)
        with pytest.raises(ConfigError, match=f"^{name}(: cannot read .* as str| must be one of)"):
            coerce_fields(fields)
    with pytest.raises(ConfigError, match="update_rule must be one of trpo, npg, penalty, pg, ppo; got 'TRPO'"):
        TRPOConfig(update_rule="TRPO")
    # Empty text means "not set" in optional fields, built directly or read.
    assert TRPOConfig(ray_address="").ray_address is None
    assert TRPOConfig(**coerce_fields({"ray_address": "null"})).ray_address is None
    assert TRPOConfig(ray_address="auto").ray_address == "auto"


def test_an_error_shows_a_long_value_in_one_short_line() -> None:
    with pytest.raises(ConfigError) as info:
        TRPOConfig(device="x" * 10_000 + "\n")
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


# --- seed, torch_threads, the new fields ---------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [(0, 0), (SEED_MAX, SEED_MAX), ("7", 7), (3.0, 3), (np.int64(5), 5)])
def test_check_seed_takes_integers_in_numpys_range(value: Any, expected: int) -> None:
    seed = check_seed(value)
    assert seed == expected and type(seed) is int


@pytest.mark.parametrize("value", [-1, 2**32, True, 1.7, "x", "1.5", None, float("nan")])
def test_check_seed_refuses_the_rest(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^seed must be an integer in \[0, 4294967295\], got "):
        check_seed(value)


def test_torch_threads_is_bounded_by_the_cores() -> None:
    cores = available_cores()
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cores == expected and cores >= 1
    assert TRPOConfig(torch_threads=0).torch_threads == 0
    assert TRPOConfig(torch_threads=cores).torch_threads == cores
    for value in (cores + 1, 100_000, -1):
        with pytest.raises(ConfigError, match=rf"torch_threads must lie in \[0, {cores}\] .*0: torch's default"):
            TRPOConfig(**coerce_fields({"torch_threads": str(value)}))


def test_obs_encoder_and_eval_max_steps() -> None:
    cfg = TRPOConfig()
    assert cfg.obs_encoder == "auto" and cfg.eval_max_steps == 10_000
    assert TRPOConfig(obs_encoder="cnn", eval_max_steps=1).obs_encoder == "cnn"
    with pytest.raises(ConfigError, match="obs_encoder must be one of auto, mlp, cnn; got 'rnn'"):
        TRPOConfig(obs_encoder="rnn")
    for value in (0, -5):
        with pytest.raises(ConfigError, match="eval_max_steps must be a positive integer"):
            TRPOConfig(eval_max_steps=value)
    # Only the evaluation's cut changes on a resumed run; the encoder changes the network.
    assert "eval_max_steps" in RESUME_SAFE_FIELDS and "obs_encoder" not in RESUME_SAFE_FIELDS
    docs = field_docs()
    assert "'cnn'" in docs["obs_encoder"] and "cut" in docs["eval_max_steps"]


# --- presets and the property over every field ---------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_with_exact_types_and_round_trips(name: str) -> None:
    assert_well_typed(TRPOConfig(**PRESETS[name]))
    cfg, used = resolve_config(None, preset=name)
    assert used == name
    assert_well_typed(cfg)


def test_every_field_has_a_docstring() -> None:
    assert set(field_docs()) == set(NAMES)


# Values of every kind, and text that reads as each kind, for any field.
TEXTS = ["", "none", "null", "true", "No", "ON", "1", "0", "-1", "4", " 7 ", "1e5", "2.5", "1e-3", "nan", "inf",
         "64,64", "8,", "a,b", "cpu", "cuda:1", "auto", *sorted({c for h in HINTS.values() for c in get_args(h)
                                                                   if isinstance(c, str)})]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2, 70), st.floats(), st.floats(0, 1),
                    st.text(max_size=10), st.sampled_from(TEXTS), st.sampled_from([2**63, -(2**64), 10**5000]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.lists(st.integers(-2, 70), max_size=3).map(tuple))


def near_default(name: str) -> st.SearchStrategy[Any]:
    """Values a field takes, so that a good share of the examples build a config: its default as is, as the
    CLI writes it, and numbers around it."""
    default = getattr(TRPOConfig(), name)
    forms = [default, str(default), ",".join(map(str, default)) if isinstance(default, tuple) else None]
    if type(default) in (int, float):
        forms += [default * 2, default / 2, type(default)(default + 1)]
    return st.sampled_from(forms)


# Half the examples near the field's default (one_of would flatten VALUES' branches and draw those rarely).
FIELD_VALUES = st.tuples(st.sampled_from(NAMES), st.booleans()).flatmap(
    lambda pick: st.tuples(st.just(pick[0]), near_default(pick[0]) if pick[1] else VALUES))


def has_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list | tuple) and any(isinstance(x, str) for x in value))


@settings(max_examples=300, deadline=None)
@given(field=FIELD_VALUES)
def test_any_value_built_directly_is_a_well_typed_config_or_a_config_error(field: tuple[str, Any]) -> None:
    name, value = field
    try:
        cfg = TRPOConfig(**{name: value})
    except ConfigError as exc:
        assert name in str(exc)
        return
    assert_well_typed(cfg)
    if not has_text(value) and value is not None:  # no parsing, no "empty": kept as given, converted at most
        kept = getattr(cfg, name)
        assert kept == type(kept)(value)


@settings(max_examples=300, deadline=None)
@given(field=FIELD_VALUES)
def test_any_value_read_from_text_is_a_well_typed_config_or_a_config_error(field: tuple[str, Any]) -> None:
    name, value = field
    try:
        cfg = TRPOConfig(**coerce_fields({name: value}))
    except ConfigError as exc:
        assert name in str(exc)
        cfg = None
    if not has_text(value):  # only text reads differently from the same value built directly
        try:
            direct = TRPOConfig(**{name: value})
        except ConfigError:
            direct = None
        assert cfg == direct
    if cfg is not None:
        assert_well_typed(cfg)


@pytest.mark.parametrize(("text", "name"), [("CartPole", "CartPole"), ("CartPole-v1", "CartPole"),
                                              ("Hopper-v5", "Hopper"), ("MinAtar/Breakout-v1", "MinAtar")])
def test_a_preset_is_named_or_taken_from_an_env_id(text: str, name: str) -> None:
    # A partially observed task trains with the preset of its fully observed env: --preset CartPole-v1
    config, used = resolve_config("trpo.pomdp:CartPoleNoVel-v1", text)
    assert used == name and config == TRPOConfig(**PRESETS[name])


@given(name=st.sampled_from(sorted(PRESETS)), version=st.integers(0, 99),
       prefix=st.sampled_from(["", "gymnasium.envs:", "my_pkg.envs:"]))
def test_every_versioned_env_id_takes_its_own_preset_before_the_envs(name: str, version: int, prefix: str) -> None:
    # 'Ant-v5' -> 'Ant-v5' (a preset for that version), 'Ant-v4' -> 'Ant', 'Hopper-v7' -> 'Hopper'
    base = re.sub(r"-v\d+$", "", name)
    env_id = f"{prefix}{base}-v{version}"
    expected = f"{base}-v{version}" if f"{base}-v{version}" in PRESETS else base
    assert preset_name_for(env_id) == expected


@given(text=st.text(max_size=30))
def test_any_env_id_names_a_preset_or_none(text: str) -> None:
    assert preset_name_for(text) is None or preset_name_for(text) in PRESETS


@pytest.mark.parametrize("text", ["Nope", "Nope-v1", "cartpole", "HalfCheetahNoVel-v5"])
def test_an_unknown_preset_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown preset '{text}'; known: .*CartPole"):
        resolve_config("CartPole-v1", text)


@pytest.mark.parametrize("space,vector", [
    (spaces.Box(-np.inf, np.inf, (11,), np.float32), True),
    (spaces.Box(-1.0, 1.0, (3,), np.float64), True),
    (spaces.Box(0, 255, (84, 84, 4), np.uint8), False),  # an image
    (spaces.Box(-1.0, 1.0, (4, 4), np.float32), False),  # not flat
    (spaces.Box(0, 10, (3,), np.int64), False),  # integers
    (spaces.Discrete(5), False),
    (spaces.Dict({"x": spaces.Box(-1.0, 1.0, (2,), np.float32)}), False),
])
def test_an_env_without_preset_takes_the_vector_preset_from_flat_float_observations(space: Any, vector: bool) -> None:
    assert is_vector_observation(space) == vector
    config, name = resolve_config("Unknown-v0", observation_space=space)
    assert name == (VECTOR_PRESET if vector else None)
    assert config.normalize_obs == config.normalize_reward == vector
    # a preset that names the env wins; 'none' keeps the field defaults; the file and the overrides stay on top
    assert resolve_config("CartPole-v1", observation_space=space)[1] == "CartPole"
    assert resolve_config("Unknown-v0", "none", observation_space=space) == (TRPOConfig(), None)
    assert resolve_config("Unknown-v0", overrides={"normalize_reward": False},
                          observation_space=space)[0].normalize_reward is False


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
       dtype=st.sampled_from([np.float16, np.float32, np.float64, np.uint8, np.int32, np.int64, np.bool_]))
def test_the_vector_preset_is_for_flat_float_boxes_only(shape: list[int], dtype: Any) -> None:
    """Every Box: the vector preset exactly where it is 1-D with float entries (no image, matrix or integer code)."""
    space = spaces.Box(0, 1, tuple(shape), dtype)
    flat_float = len(shape) == 1 and np.dtype(dtype).kind == "f"
    assert is_vector_observation(space) == flat_float
    assert resolve_config("Unknown-v0", observation_space=space)[1] == (VECTOR_PRESET if flat_float else None)


def test_the_agent_and_tune_choose_the_vector_preset_as_train_does() -> None:
    from trpo import TRPO
    from trpo.tune import settings_for

    agent = TRPO("Pendulum-v1", seed=0)
    assert agent.preset == "Pendulum"
    agent.close()
    from gymnasium.envs.classic_control import PendulumEnv

    agent = TRPO(lambda: gym.wrappers.TimeLimit(PendulumEnv(), 50), seed=0)  # a factory of an env without an id
    assert agent.preset == VECTOR_PRESET and agent.config.normalize_obs and agent.config.normalize_reward
    agent.close()
    assert settings_for("Pendulum-v1", 2).preset == "Pendulum"
    assert settings_for("trpo.pomdp:MountainCarNoVel-v0", 2).preset == VECTOR_PRESET
