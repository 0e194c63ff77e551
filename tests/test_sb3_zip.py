"""trpo/sb3_zip.py: sb3-contrib's parameter names and optimizer layout (get_parameters / set_parameters), its TRPO
zips loaded with the same predictions, and loading one running no code (docs/security.md): the pickled entries of
its "data" are decoded by an allow-list (_SafeUnpickler), everything else in a pickle is refused in one line before
it is imported or called, SB3 unpickles nothing itself, and the .pth files are read with weights_only."""

from __future__ import annotations

import base64
import copy
import io
import json
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import torch
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("stable_baselines3")

from stable_baselines3.common import save_util
from stable_baselines3.common.envs import FakeImageEnv
from torch import nn

from trpo.sb3 import TRPO
from trpo.sb3_zip import _ALLOWED, _decode

# FLOAT32: as in tests/test_sb3.py, the same weights on the same observations may round differently in the last bit.


def contrib_trpo() -> Any:
    return pytest.importorskip("sb3_contrib").TRPO


def _outputs(model: Any, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic actions and V(obs), of the drop-in (trpo's critic) or of sb3-contrib's TRPO (its policy)."""
    values = (model.learner.critic(torch.as_tensor(model.learner.encoder(obs), dtype=torch.float32))
              if isinstance(model, TRPO)
              else model.policy.predict_values(model.policy.obs_to_tensor(obs)[0]).squeeze(-1))
    return model.predict(obs, deterministic=True)[0], values.detach().cpu().numpy()


def test_get_and_set_parameters_round_trip() -> None:
    """get_parameters holds sb3-contrib's names and shapes (its Adam too, stepped for the critic only); perturbed
    weights set change the actions, the originals set back give the original actions, values and Adam state."""
    model = TRPO("MlpPolicy", "Pendulum-v1", n_steps=128, seed=0, policy_kwargs=dict(net_arch=[16])).learn(128)
    contrib = contrib_trpo()("MlpPolicy", "Pendulum-v1", n_steps=128, policy_kwargs=dict(net_arch=[16])).learn(128)
    params, theirs = model.get_parameters(), contrib.get_parameters()
    assert list(params) == list(theirs) == ["policy", "policy.optimizer"]
    assert {k: v.shape for k, v in params["policy"].items()} == {k: v.shape for k, v in theirs["policy"].items()}
    assert list(params["policy"]) == list(theirs["policy"])  # the same order: the optimizer's numbering
    assert sorted(params["policy.optimizer"]["state"]) == sorted(theirs["policy.optimizer"]["state"]) == [3, 4, 7, 8]
    saved = copy.deepcopy(params)  # SB3's get_parameters shares the tensors' storage
    obs = np.stack([model.observation_space.sample() for _ in range(32)])
    before = _outputs(model, obs)
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in saved["policy"].items()}
    model.set_parameters({**saved, "policy": noisy})
    assert not np.allclose(_outputs(model, obs)[0], before[0]) and not np.allclose(_outputs(model, obs)[1], before[1])
    model.learner.critic_optimizer.step()  # an Adam step on the critic's last grads moves its state
    assert not torch.equal(model.get_parameters()["policy.optimizer"]["state"][3]["exp_avg"],
                           saved["policy.optimizer"]["state"][3]["exp_avg"])
    model.set_parameters(saved)
    for after, expected in zip(_outputs(model, obs), before, strict=True):
        np.testing.assert_allclose(after, expected, rtol=1e-6)  # FLOAT32
    state, expected = model.get_parameters()["policy.optimizer"]["state"], saved["policy.optimizer"]["state"]
    assert all(torch.equal(state[i][key], expected[i][key]) for i in expected for key in expected[i])


def test_set_parameters_errors_are_sb3s() -> None:
    """exact_match's errors as SB3's: a missing object, an unknown one (ValueError), a missing tensor (RuntimeError);
    the drop-in loads nothing then (SB3 loads the named objects first). exact_match=False loads a part;
    "policy.actor" is trpo's actor under trpo's names, as SB3's recursive_getattr finds it."""
    model = TRPO("MlpPolicy", "CartPole-v1", seed=0, policy_kwargs=dict(net_arch=[8]))
    contrib = contrib_trpo()("MlpPolicy", "CartPole-v1", seed=0, policy_kwargs=dict(net_arch=[8]))
    obs = np.stack([model.observation_space.sample() for _ in range(16)])
    before = _outputs(model, obs)
    policy = {k: torch.zeros_like(v) for k, v in model.get_parameters()["policy"].items()}
    for m in (model, contrib):
        with pytest.raises(ValueError, match=r"^Names of parameters do not match agents' parameters: expected"):
            m.set_parameters({"policy": policy})
        with pytest.raises(ValueError, match=r"^Key nothing is an invalid object name\.$"):
            m.set_parameters({"nothing": {}})
        with pytest.raises(RuntimeError, match=r"value_net\.bias"):
            m.set_parameters({"policy": {k: v for k, v in policy.items() if k != "value_net.bias"},
                              "policy.optimizer": m.get_parameters()["policy.optimizer"]})
    np.testing.assert_array_equal(_outputs(model, obs)[1], before[1])  # an error loads nothing
    model.set_parameters({"policy": {"value_net.bias": torch.tensor([5.0])}}, exact_match=False)
    np.testing.assert_allclose(_outputs(model, obs)[1], before[1] + 5.0, rtol=1e-5)  # FLOAT32
    np.testing.assert_array_equal(_outputs(model, obs)[0], before[0])
    zeros = {k: torch.zeros_like(v) for k, v in model.learner.actor.state_dict().items()}
    model.set_parameters({"policy.actor": zeros}, exact_match=False)
    assert float(model.learner.actor.head.linear.weight.detach().abs().sum()) == 0.0


@pytest.mark.parametrize(("env_id", "sde"), [("CartPole-v1", False), ("Pendulum-v1", False), ("Pendulum-v1", True)])
def test_load_a_zip_saved_by_sb3_contrib(env_id: str, sde: bool, tmp_path: Path) -> None:
    """sb3-contrib's TRPO trained, saved, loaded into the drop-in: its deterministic actions and values on a batch,
    its settings, counters and critic Adam; learn goes on from there. gSDE: its log_std per feature and action."""
    kwargs = dict(use_sde=sde, policy_kwargs=dict(net_arch=dict(pi=[32, 16], vf=[24]), activation_fn=nn.ReLU))
    contrib = contrib_trpo()("MlpPolicy", env_id, n_steps=128, batch_size=64, seed=0, **kwargs).learn(384)
    contrib.save(tmp_path / "contrib")
    model = TRPO.load(tmp_path / "contrib.zip", env=env_id)
    theirs = _outputs(contrib, obs := np.stack([model.observation_space.sample() for _ in range(100)]))
    for ours, expected in zip(_outputs(model, obs), theirs, strict=True):  # actions, values
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)  # FLOAT32: sb3's torch kernels, not ours
    cfg = model.learner.config
    assert (cfg.actor_hidden, cfg.critic_hidden, cfg.activation, cfg.value_minibatch) == ((32, 16), (24,), "relu", 64)
    assert model.num_timesteps == 384 and model._n_updates == model.learner.num_updates == 3
    assert float(model.learner.critic_optimizer.steps[0]) == 3 * 10 * 2  # n_critic_updates x 2 minibatches each
    assert model.learn(256, reset_num_timesteps=False).num_timesteps == 640 and model._n_updates == 5
    fresh = TRPO("MlpPolicy", env_id, **kwargs)
    fresh.set_parameters(tmp_path / "contrib.zip")  # set_parameters reads the zip too
    np.testing.assert_allclose(_outputs(fresh, obs)[0], theirs[0], rtol=1e-5, atol=1e-6)  # FLOAT32


@pytest.mark.parametrize("share", [True, False])
def test_cnn_policy_parameters_and_zips_are_sb3_contribs(share: bool, tmp_path: Path) -> None:
    """CnnPolicy, its NatureCNN shared by pi and V (sb3's default: trpo's shared trunk, kept out of the value fit)
    or not: get_parameters has sb3-contrib's names, order and shapes, its Adam the same numbering and stepped
    tensors (the value side's only); an sb3-contrib CnnPolicy zip loads with its actions and values, shared as it
    was, and learns on."""
    env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True)
    kwargs = dict(n_steps=64, batch_size=32, cg_max_steps=3, n_critic_updates=2, seed=0,
                  policy_kwargs=dict(share_features_extractor=share))
    model, contrib = TRPO("CnnPolicy", env, **kwargs).learn(128), contrib_trpo()("CnnPolicy", env, **kwargs).learn(128)
    ours, theirs = model.get_parameters(), contrib.get_parameters()
    assert [(k, v.shape) for k, v in ours["policy"].items()] == [(k, v.shape) for k, v in theirs["policy"].items()]
    (group,), (their_group,) = ours["policy.optimizer"]["param_groups"], theirs["policy.optimizer"]["param_groups"]
    assert group["params"] == their_group["params"]
    assert sorted(ours["policy.optimizer"]["state"]) == sorted(theirs["policy.optimizer"]["state"])
    model.set_parameters(copy.deepcopy(ours))  # round trip
    contrib.save(tmp_path / "cnn")
    loaded = TRPO.load(tmp_path / "cnn.zip", env=env)
    assert (loaded.learner.critic.body is loaded.learner.actor.body) is share
    obs = np.stack([loaded.observation_space.sample() for _ in range(32)])  # channel-first, as the policy sees them
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0],
                                  contrib.predict(obs, deterministic=True)[0])
    np.testing.assert_allclose(_outputs(loaded, obs)[1], _outputs(contrib, obs)[1], rtol=1e-5, atol=1e-6)  # FLOAT32
    assert loaded.learn(64, reset_num_timesteps=False).num_timesteps == 192


def test_load_a_multi_input_zip_saved_by_sb3_contrib(tmp_path: Path) -> None:
    """MultiInputPolicy on a Dict of a Box and a Discrete (sb3's CombinedExtractor: flattened and one-hot,
    concatenated in the Dict's order, as trpo encodes it): the loaded model acts as sb3-contrib's and learns on."""
    import trpo_testenvs  # noqa: F401  (registers DictObs-v0)

    contrib = contrib_trpo()("MultiInputPolicy", "DictObs-v0", n_steps=64, batch_size=32, seed=0).learn(128)
    contrib.save(tmp_path / "dict")
    model = TRPO.load(tmp_path / "dict.zip", env="DictObs-v0")
    assert model.args["policy"] == "MultiInputPolicy"
    space = model.observation_space
    space.seed(0)
    samples = [space.sample() for _ in range(32)]
    obs = {key: np.stack([o[key] for o in samples]) for key in samples[0]}
    np.testing.assert_allclose(model.predict(obs, deterministic=True)[0], contrib.predict(obs, deterministic=True)[0],
                               rtol=1e-5, atol=1e-6)  # FLOAT32
    assert model.learn(64, reset_num_timesteps=False).num_timesteps == 192


def test_sb3_zips_that_do_not_map_are_refused_in_one_line(tmp_path: Path) -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.envs import SimpleMultiObsEnv

    contrib_trpo()("MultiInputPolicy", SimpleMultiObsEnv()).save(tmp_path / "dict_cnn")  # a CNN inside a Dict's
    PPO("MlpPolicy", "CartPole-v1").save(tmp_path / "ppo")
    for name, named in [("dict_cnn", r"features_extractor\.extractors[^\n]*$"), ("ppo", r"sb3-contrib's TRPO[^\n]*$")]:
        with pytest.raises(ValueError, match=f"^[^\n]*{named}"):  # one line naming it
            TRPO.load(tmp_path / name)


# Pickles written opcode by opcode (protocol 4, so no Python 2 name mapping): a global called with string arguments,
# or only named, placed where a legitimate entry holds values.
def _text(s: str) -> bytes:
    return b"X" + len(s.encode()).to_bytes(4, "little") + s.encode()


def _global(module: str, name: str, *args: str, call: bool = True) -> bytes:
    named = f"c{module}\n{name}\n".encode()
    return named + b"(" + b"".join(map(_text, args)) + b"tR" if call else named


_PLACES: dict[str, Callable[[bytes], bytes]] = {
    "itself": lambda v: v,
    "in a dict": lambda v: b"}" + _text("activation_fn") + v + b"s",
    "in a list": lambda v: b"]" + v + b"a",
    "in a Box's state": lambda v: b"cgymnasium.spaces.box\nBox\n)\x81}" + _text("low") + v + b"sb",
}


def _pickle(body: bytes) -> bytes:
    return b"\x80\x04" + body + b"."


@pytest.fixture(scope="module")
def contrib_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sb3-contrib TRPO zip whose policy_kwargs are pickled (a class in them); its learning_rate is a number."""
    path = tmp_path_factory.mktemp("contrib") / "contrib.zip"
    kwargs = dict(net_arch=[8], activation_fn=nn.ReLU)
    contrib_trpo()("MlpPolicy", "CartPole-v1", seed=0, policy_kwargs=kwargs).save(path)
    return path


def _with_entries(source: Path, out: Path, **pickles: bytes) -> Path:
    """A copy of the zip `source` whose "data" holds these pickles as SB3 writes a pickled entry."""
    with zipfile.ZipFile(source) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(files["data"])
    data.update({k: {":type:": "<class 'object'>", ":serialized:": base64.b64encode(v).decode()}
                 for k, v in pickles.items()})
    files["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return out


def _refused(name: str, key: str) -> str:
    return rf"^trpo\.sb3\.TRPO\.load refuses to unpickle {re.escape(name)} from [^\n]*\({key}\): [^\n]*$"


@pytest.mark.parametrize("key", ["observation_space", "action_space", "policy_kwargs", "learning_rate"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(key: str, contrib_zip: Path, tmp_path: Path) -> None:
    """A zip whose entry is a pickle calling os.system: one line naming os.system (for learning_rate, saying to pass
    it in custom_objects), and the command never runs; the same pickle, unpickled by pickle itself, runs it."""
    marker = tmp_path / "ran"
    payload = _pickle(_global("os", "system", f"touch {marker}"))
    bad = _with_entries(contrib_zip, tmp_path / "bad.zip", **{key: payload})
    with pytest.raises(ValueError, match=_refused("os.system", key)) as caught:
        TRPO.load(bad)
    assert ("custom_objects={'learning_rate'" in str(caught.value)) == (key == "learning_rate")
    assert not marker.exists()
    pickle.loads(payload)  # the test could fail: what load refused would have run the command
    assert marker.exists()


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(["observation_space", "action_space", "policy_kwargs", "learning_rate"]),
       place=st.sampled_from(sorted(_PLACES)), call=st.booleans(),
       target=st.sampled_from([("os", "system"), ("posix", "mkdir"), ("builtins", "open"), ("builtins", "exec"),
                               ("builtins", "eval"), ("builtins", "getattr"), ("builtins", "__import__"),
                               ("importlib", "import_module"), ("subprocess", "getoutput"), ("shutil", "rmtree"),
                               ("pickle", "loads"), ("torch", "load"), ("numpy", "load"), ("runpy", "run_path"),
                               ("cloudpickle.cloudpickle", "_make_function"), ("copyreg", "_reconstructor"),
                               ("numpy.lib.npyio", "load"), ("torch.nn.modules.container", "Sequential")])
       | st.tuples(st.from_regex(r"[A-Za-z_]\w{0,8}(\.[A-Za-z_]\w{0,8}){0,2}", fullmatch=True),
                   st.from_regex(r"[A-Za-z_]\w{0,8}", fullmatch=True)))
def test_any_global_outside_the_allow_list_is_refused_and_runs_nothing(
        key: str, place: str, call: bool, target: tuple[str, str], contrib_zip: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Any global not in the allow-list, called (on a path) or only named, alone or inside a dict, a list or a
    space's state, in any pickled entry: refused in one line naming it, before it is imported or called."""
    module, name = target
    if f"{module}.{name}" in _ALLOWED or module.split(".")[:2] == ["numpy", "random"]:
        return
    work = tmp_path_factory.mktemp("fuzz")
    marker = work / "ran"
    code = f"open({str(marker)!r}, 'w').close()"
    args = {"system": (f"touch {marker}",), "exec": (code,), "eval": (code,), "open": (str(marker), "w")}.get(
        name, (str(marker),))
    payload = _pickle(_PLACES[place](_global(module, name, *args, call=call)))
    with pytest.raises(ValueError, match=_refused(f"{module}.{name}", key)):
        TRPO.load(_with_entries(contrib_zip, work / "bad.zip", **{key: payload}))
    assert list(work.iterdir()) == [work / "bad.zip"]


@pytest.mark.parametrize("target", [("gymnasium.spaces.box", "Box"), ("torch.nn.modules.activation", "ReLU"),
                                    ("numpy._core.numeric", "_frombuffer"), ("numpy", "dtype")])
def test_a_pickle_cannot_set_attributes_of_an_allowed_class(target: tuple[str, str], contrib_zip: Path,
                                                            tmp_path: Path) -> None:
    """BUILD on an allowed class or function itself (not on an object the pickle built) is refused: a zip cannot
    change, say, Box's methods or a numpy function's name for the rest of the process."""
    state = b"N}" + _text("__qualname__") + _text("system") + b"s\x86b"  # (None, {...}): setattr on the object
    payload = _pickle(_global(*target, call=False) + state)
    before = {k: getattr(_ALLOWED[".".join(target)], k, None) for k in ("__qualname__", "__setstate__")}
    with pytest.raises(ValueError, match=r"^trpo\.sb3\.TRPO\.load refuses to unpickle the state of [^\n]*$"):
        TRPO.load(_with_entries(contrib_zip, tmp_path / "bad.zip", observation_space=payload))
    assert {k: getattr(_ALLOWED[".".join(target)], k, None) for k in before} == before


def test_custom_objects_come_first_and_are_not_decoded(contrib_zip: Path, tmp_path: Path) -> None:
    """A learning-rate schedule (a function, pickled by value) is refused; custom_objects replace it, and any entry,
    as in SB3: the user's own objects, never decoded. SB3 unpickles nothing itself."""
    marker = tmp_path / "ran"
    contrib_trpo()("MlpPolicy", "CartPole-v1", learning_rate=lambda f: 1e-3 * f).save(tmp_path / "schedule")
    with pytest.raises(ValueError, match=_refused("cloudpickle.cloudpickle._make_function", "learning_rate")):
        TRPO.load(tmp_path / "schedule.zip")
    assert TRPO.load(tmp_path / "schedule.zip", custom_objects={"learning_rate": 3e-4}).lr_schedule(1.0) == 3e-4
    bad = _with_entries(contrib_zip, tmp_path / "bad.zip",
                        observation_space=_pickle(_global("os", "system", f"touch {marker}")))
    space = spaces.Box(-np.inf, np.inf, (4,), np.float32)
    assert TRPO.load(bad, custom_objects={"observation_space": space}).observation_space == space
    assert not marker.exists()


def test_sb3_unpickles_nothing_and_the_spaces_forget_their_generator(contrib_zip: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(data: bytes) -> Any:
        raise AssertionError("SB3 unpickled an entry")

    monkeypatch.setattr(save_util.cloudpickle, "loads", refuse)
    model = TRPO.load(contrib_zip)
    assert model.learner.config.activation == "relu" and model.observation_space._np_random is None


@pytest.mark.parametrize("protocol", [4, 5])  # numpy arrays as _reconstruct + BUILD, or as _frombuffer
def test_every_space_decodes_to_itself(protocol: int) -> None:
    """The six spaces (seeded and sampled: their generators are dropped, not rebuilt) and policy_kwargs with
    sb3's classes, as cloudpickle writes them, decode equal; a number is a learning rate, a space is not."""
    box = spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, np.inf]), dtype=np.float64)
    for space in (box, spaces.Discrete(3, start=1), spaces.MultiDiscrete([2, 3]), spaces.MultiBinary(4),
                  spaces.Dict({"a": box, "b": spaces.Discrete(2)}), spaces.Tuple((box, spaces.MultiBinary(2)))):
        space.seed(0)
        space.sample()
        entry = {":serialized:": base64.b64encode(cloudpickle.dumps(space, protocol=protocol)).decode()}
        decoded = _decode("observation_space", entry, "m.zip")
        assert decoded == space and decoded._np_random is None
        decoded.sample()  # seeded anew when asked
    kwargs = dict(activation_fn=nn.Tanh, net_arch=dict(pi=[8], vf=[8]), optimizer_class=torch.optim.Adam,
                  optimizer_kwargs=dict(eps=1e-5))
    assert _decode("policy_kwargs", {":serialized:": base64.b64encode(cloudpickle.dumps(kwargs)).decode()},
                   "m.zip") == kwargs
    with pytest.raises(ValueError, match=r"^m\.zip \(learning_rate\) holds a Tuple, which is no learning_rate$"):
        _decode("learning_rate", entry, "m.zip")


def test_the_pth_files_are_read_with_weights_only(contrib_zip: Path, tmp_path: Path) -> None:
    """A .pth file holding a pickled call (os.system) is refused by torch's weights_only load, by load and by
    set_parameters, and never runs."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            import os

            return os.system, (f"touch {marker}",)

    buffer = io.BytesIO()
    torch.save({"value_net.bias": Payload()}, buffer)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(contrib_zip) as src, zipfile.ZipFile(bad, "w") as out:
        for name in src.namelist():
            out.writestr(name, buffer.getvalue() if name == "policy.pth" else src.read(name))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        TRPO.load(bad)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        TRPO("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8])).set_parameters(bad)
    assert not marker.exists()
