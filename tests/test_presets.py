"""The preset files (trpo/presets/*.yaml): each shipped one loads and validates, a malformed one is a single error
naming its file and preset, what `trpo presets` prints reads back as the same presets, and the derivations their
comments state hold for the numbers beside them."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml
from clitools import run_cli_output

from trpo.config import RUN_RECORD_KEYS, ConfigError, TRPOConfig
from trpo.presets import FAMILIES, RECORD_KEYS
from trpo.resolve import PRESET_ENVS, PRESET_STEPS, PRESETS, load_presets, load_yaml, resolve_config, shipped_presets

PACKAGE_FILES = sorted(f.name for f in resources.files("trpo.presets").iterdir() if f.name.endswith(".yaml"))


def test_every_shipped_file_is_a_family_and_every_preset_validates() -> None:
    # importlib.resources finds the files (the package data pyproject.toml installs), each one a known family
    assert sorted(f"{family}.yaml" for family in FAMILIES) == PACKAGE_FILES
    presets = shipped_presets()
    assert {Path(p.source).name for p in presets.values()} == set(PACKAGE_FILES)  # no family file is empty
    assert list(PRESETS) == list(presets) == list(PRESET_STEPS) == list(PRESET_ENVS)
    for name, preset in presets.items():
        assert preset.name == name and PRESETS[name] is preset.fields
        assert PRESET_STEPS[name] == preset.total_steps and PRESET_ENVS[name] == preset.env
        TRPOConfig(**preset.fields)
    assert load_presets() == presets  # read afresh: the same


GOOD = "Good:\n  env: CartPole-v1\n  total_steps: 1000\n  num_envs: 2\n"


@pytest.mark.parametrize("text,reason", [
    ("Bad:\n  env: CartPole-v1\n  total_steps: 1000\n  max_kl: -1.0\n",
     "preset 'Bad': max_kl must be a positive number"),
    ("Bad:\n  env: CartPole-v1\n  total_steps: 1000\n  max_kll: 0.1\n", "preset 'Bad': unknown config field 'max_kll'"),
    # YAML 1.1 reads 1e-3 (no dot) as text: a preset must hold the value TRPOConfig takes as it is
    ("Bad:\n  env: CartPole-v1\n  total_steps: 1000\n  value_lr: 1e-3\n",
     "preset 'Bad': value_lr: cannot read '1e-3' as float"),
    ("Bad:\n  total_steps: 1000\n", "preset 'Bad': env must be the env id"),
    ("Bad:\n  env: CartPole-v1\n  total_steps: 1.5e6\n", "preset 'Bad': total_steps must be a positive integer"),
    ("Bad: [1, 2]\n", "preset 'Bad': must be a name mapped to env"),
    ("- Bad\n", "must map preset names to their settings"),
    # PyYAML would keep the last of two values silently
    ("Bad:\n  env: CartPole-v1\n  total_steps: 1000\n  num_envs: 2\n  num_envs: 4\n", "duplicate key 'num_envs'"),
    ("Bad: {env: [\n", "not a valid YAML file"),
])
def test_a_malformed_preset_file_is_one_error_naming_the_file_and_the_preset(
        tmp_path: Path, text: str, reason: str) -> None:
    (tmp_path / "classic.yaml").write_text(GOOD)
    bad = tmp_path / "mine.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_presets(tmp_path)
    assert str(info.value).startswith(f"{bad}: ") and reason in str(info.value)


def test_a_preset_name_in_two_files_is_refused_and_files_load_in_family_order(tmp_path: Path) -> None:
    (tmp_path / "zoo.yaml").write_text(GOOD.replace("Good", "Other"))
    (tmp_path / "mujoco.yaml").write_text(GOOD.replace("Good", "Second"))
    (tmp_path / "classic.yaml").write_text(GOOD)
    assert list(load_presets(tmp_path)) == ["Good", "Second", "Other"]  # FAMILIES first, then the others by name
    (tmp_path / "zoo.yaml").write_text(GOOD)
    with pytest.raises(ConfigError, match=r"zoo.yaml: preset 'Good' is also in .*classic.yaml$"):
        load_presets(tmp_path)


def test_trpo_presets_prints_what_reads_back_as_the_same_presets() -> None:
    code, out, _ = run_cli_output(["presets"])
    assert code == 0
    printed = yaml.safe_load(out)
    assert list(printed) == list(PRESETS)
    for name, values in printed.items():
        assert list(values) == ["total_steps", *PRESETS[name]]  # the files' order of fields, too
        assert values == {"total_steps": PRESET_STEPS[name], **PRESETS[name]}
        assert TRPOConfig(**{k: v for k, v in values.items() if k != "total_steps"}) == TRPOConfig(**PRESETS[name])


def test_a_preset_copied_into_a_config_file_trains_the_same_config(tmp_path: Path) -> None:
    # A preset's entry is a `trpo train --config` file (the format of trpo tune's best.yaml): env and total_steps are
    # keys of such a file, the rest config fields; read as `trpo train` reads a file, it gives the preset's config.
    assert set(RECORD_KEYS) <= set(RUN_RECORD_KEYS)
    for file in PACKAGE_FILES:
        for name, entry in yaml.safe_load((resources.files("trpo.presets") / file).read_text("utf-8")).items():
            (tmp_path / "mine.yaml").write_text(yaml.safe_dump(entry, sort_keys=False))
            values = load_yaml(str(tmp_path / "mine.yaml"))
            run = {k: values.pop(k) for k in RUN_RECORD_KEYS if k in values}
            assert run == {"env": PRESET_ENVS[name], "total_steps": PRESET_STEPS[name]}
            assert resolve_config(run["env"], "none", values)[0] == resolve_config(None, name)[0], name


# `max_kl: 0.06  # sb3-contrib's 0.01 per action dimension x 6`: the number is the product the comment states.
DERIVED = re.compile(r"^\s+\w+: ([\d.e-]+)\s+#.*?([\d.]+) per action dimension x (\d+)\s*$")


@pytest.mark.parametrize("file", PACKAGE_FILES)
def test_derived_values_equal_the_derivation_beside_them(file: str) -> None:
    lines = (resources.files("trpo.presets") / file).read_text(encoding="utf-8").splitlines()
    derived = [m.groups() for m in map(DERIVED.match, lines) if m]
    for value, per_dim, dims in derived:
        assert float(value) == round(float(per_dim) * int(dims), 6), (file, value, per_dim, dims)
    assert len(derived) == sum("per action dimension x" in line for line in lines)  # no derivation goes unchecked


def test_importing_resolve_reads_no_preset_file_and_the_registry_imports_no_config() -> None:
    code = ("import sys, trpo.presets; assert 'trpo.config' not in sys.modules; "
            "import trpo.resolve as r; assert '_data' not in vars(r.PRESETS); assert 'Hopper' in r.PRESETS")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_sits_below_resolution_and_still_answers_its_old_names() -> None:
    # trpo.config imports neither trpo.resolve nor trpo.presets; the names that moved to trpo.resolve stay
    # importable from trpo.config (old imports), as the very objects of trpo.resolve, forwarded on first use.
    code = ("import sys, trpo.config as c; assert not {'trpo.resolve', 'trpo.presets', 'yaml'} & set(sys.modules); "
            "from trpo.config import PRESETS, resolve_config, load_yaml, shipped_presets; import trpo.resolve as r; "
            "assert PRESETS is r.PRESETS and resolve_config is r.resolve_config and c.VECTOR_PRESET == 'vector'; "
            "assert c.load_presets is r.load_presets and c.preset_name_for('Hopper-v5') == 'Hopper'; "
            "import pytest; pytest.raises(AttributeError, getattr, c, 'no_such_name')")
    subprocess.run([sys.executable, "-c", code], check=True)
