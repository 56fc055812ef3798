"""Reference scores (precedence and the D4RL table), evaluation-env resolution, missing-package hints,
and where bundled datasets are found."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.envs.registration import EnvSpec

from offrl.data.catalog import bundled_path, bundled_root, list_bundled
from offrl.data.envs import EnvResolution, make_env, resolve_env
from offrl.data.references import D4RL_REF_SCORES, d4rl_reference, reference_scores
from offrl.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------- reference scores


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hopper-medium-v2", (-20.272305, 3234.3)),
        ("halfcheetah-medium-expert-v2", (-280.178953, 12135.0)),
        ("walker2d-full-replay-v2", (1.629008, 4592.3)),
        ("ant-random-v0", (-325.6, 3879.7)),
        ("door-human-v1", (-56.512833, 2880.5693087298737)),
        ("pen-cloned-v1", (96.262799, 3076.8331017826877)),
        ("hammer-expert-v0", (-274.856578, 12794.134825156867)),
        ("relocate-human-v1", (-6.425911, 4233.877797728884)),
        ("kitchen-mixed-v0", (0.0, 4.0)),
        ("antmaze-large-diverse-v2", (0.0, 1.0)),
        ("maze2d-umaze-v1", (23.85, 161.86)),
        ("maze2d-large-dense-v1", (30.569041, 303.4857382709002)),
        # D4RL download file names, paths, and Minari's D4RL ids resolve to the same entries.
        ("/data/d4rl/hopper_medium_replay-v2.hdf5", (-20.272305, 3234.3)),
        ("D4RL/door/human-v2", (-56.512833, 2880.5693087298737)),
        ("D4RL/kitchen/complete-v2", (0.0, 4.0)),
    ],
)
def test_d4rl_table_lookup(name: str, expected: tuple[float, float]) -> None:
    assert d4rl_reference(name) == expected


@pytest.mark.parametrize("name", ["offrl/pendulum/medium-v0", "mujoco/hopper/medium-v0", "my-data", None, ""])
def test_names_outside_d4rl_have_no_table_entry(name: str | None) -> None:
    assert d4rl_reference(name) is None


def test_table_covers_d4rl_tasks() -> None:
    assert len(D4RL_REF_SCORES) == 147  # every entry of REF_MIN_SCORE / REF_MAX_SCORE in d4rl/infos.py
    assert all(lo < hi for lo, hi in D4RL_REF_SCORES.values())


def test_reference_precedence_user_over_metadata_over_table() -> None:
    table = (-20.272305, 3234.3)
    assert reference_scores("hopper-medium-v2", None, None) == (*table, "D4RL table")
    assert reference_scores("hopper-medium-v2", -10.0, 3000.0) == (-10.0, 3000.0, "dataset metadata")
    assert reference_scores("hopper-medium-v2", -10.0, 3000.0, 0.0, 100.0) == (0.0, 100.0, "user")
    assert reference_scores("my-data", None, None, 1.0, 2.0) == (1.0, 2.0, "user")
    assert reference_scores("my-data", None, None) == (None, None, None)
    # One bound from the user, the other from the dataset: both sources are named.
    assert reference_scores("my-data", -5.0, 5.0, override_max=50.0) == (
        -5.0,
        50.0,
        "user + dataset metadata",
    )
    assert reference_scores("hopper-medium-v2", None, None, override_min=0.0) == (
        0.0,
        3234.3,
        "user + D4RL table",
    )


def test_bundled_metadata_references_win_over_nothing() -> None:
    meta = json.loads((REPO_ROOT / "datasets/offrl/pendulum/medium-v0/data/metadata.json").read_text())
    lo, hi, source = reference_scores(
        "offrl/pendulum/medium-v0", meta["ref_min_score"], meta["ref_max_score"]
    )
    assert (lo, hi, source) == (meta["ref_min_score"], meta["ref_max_score"], "dataset metadata")


def test_equal_references_are_a_user_error() -> None:
    with pytest.raises(UserError, match="--ref-min-score and --ref-max-score"):
        reference_scores("my-data", 1.0, 1.0)


# ------------------------------------------------------------------------------------- env resolution


def test_resolve_env_precedence() -> None:
    spec_json = json.loads((REPO_ROOT / "datasets/offrl/pendulum/expert-v0/data/metadata.json").read_text())[
        "env_spec"
    ]
    assert resolve_env("hopper-medium-v2", env_spec=spec_json, override="Pendulum-v1") == EnvResolution(
        "Pendulum-v1", "user"
    )
    from_spec = resolve_env("hopper-medium-v2", env_spec=spec_json)
    assert from_spec.source == "dataset env_spec" and isinstance(from_spec.target, EnvSpec)
    assert from_spec.env_id == "Pendulum-v1" and from_spec.max_episode_steps == 200
    from_name = resolve_env("hopper-medium-v2")
    assert (from_name.env_id, from_name.source) == ("Hopper-v5", "name map")
    assert resolve_env("something-unknown") is None
    assert resolve_env(None) is None


@pytest.mark.parametrize(
    ("name", "env_id", "drift"),
    [
        ("hopper-medium-v2", "Hopper-v5", "Hopper-v3"),
        ("/data/halfcheetah_medium_replay-v2.hdf5", "HalfCheetah-v5", "HalfCheetah-v3"),
        ("walker2d-expert-v2", "Walker2d-v5", "Walker2d-v3"),
        ("ant-medium-v2", "Ant-v4", "111-dim"),
        ("door-human-v1", "AdroitHandDoor-v1", "Gymnasium-Robotics"),
        ("kitchen-partial-v0", "FrankaKitchen-v1", "Gymnasium-Robotics"),
        ("maze2d-umaze-dense-v1", "PointMaze_UMazeDense-v3", "Gymnasium-Robotics"),
        ("antmaze-medium-diverse-v2", "AntMaze_Medium_Diverse_GR-v5", "Gymnasium-Robotics"),
        ("antmaze-umaze-v2", "AntMaze_UMaze-v5", "Gymnasium-Robotics"),
        ("D4RL/pen/expert-v2", "AdroitHandPen-v1", "Gymnasium-Robotics"),
        ("mujoco/hopper/medium-v0", "Hopper-v5", None),
        ("offrl/cartpole/medium-v0", "CartPole-v1", None),
    ],
)
def test_dataset_names_map_to_gymnasium_ids(name: str, env_id: str, drift: str | None) -> None:
    resolved = resolve_env(name)
    assert resolved is not None and resolved.env_id == env_id
    if drift is None:
        assert resolved.note is None
    else:
        assert drift in resolved.note
    if env_id == "Ant-v4":
        assert resolved.kwargs == {"use_contact_forces": True}


def test_make_env_builds_from_id_spec_and_resolution() -> None:
    env = make_env("CartPole-v1")
    assert env.spec.id == "CartPole-v1"
    spec = json.loads((REPO_ROOT / "datasets/offrl/pendulum/expert-v0/data/metadata.json").read_text())[
        "env_spec"
    ]
    env = make_env(resolve_env("offrl/pendulum/expert-v0", env_spec=spec))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3,) and env.spec.max_episode_steps == 200
    env = make_env(resolve_env("offrl/cartpole/mixed-v0"))
    assert isinstance(env.action_space, gym.spaces.Discrete)


def _hide_modules(monkeypatch: pytest.MonkeyPatch, *prefixes: str) -> None:
    """Make ``import <prefix>`` fail as if the package were not installed."""
    for module in list(sys.modules):
        if module.startswith(prefixes):
            monkeypatch.delitem(sys.modules, module)
    for prefix in prefixes:
        if "." not in prefix:
            monkeypatch.setitem(sys.modules, prefix, None)


def test_missing_mujoco_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_modules(monkeypatch, "mujoco", "gymnasium.envs.mujoco.")
    with pytest.raises(UserError) as info:
        make_env(resolve_env("hopper-medium-v2"))
    message = str(info.value)
    assert "Hopper-v5" in message and 'pip install "offrl[mujoco]"' in message and "\n" not in message


def test_missing_robotics_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_modules(monkeypatch, "gymnasium_robotics")
    with pytest.raises(UserError, match=r'AdroitHandDoor-v1 .*pip install "offrl\[robotics\]"'):
        make_env(resolve_env("D4RL/door/human-v2"))
    # A Minari env_spec pointing into gymnasium_robotics gets the same hint.
    spec = EnvSpec(
        id="AdroitHandDoor-v1",
        entry_point="gymnasium_robotics.envs.adroit_hand.adroit_door:AdroitHandDoorEnv",
        max_episode_steps=200,
    )
    with pytest.raises(UserError, match=r"offrl\[robotics\]"):
        make_env(resolve_env("D4RL/door/human-v2", env_spec=spec.to_json()))


def test_unknown_env_id_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown evaluation env 'NoSuchEnv-v0'.*--env"):
        make_env("NoSuchEnv-v0")


def test_unreadable_env_spec_is_a_user_error() -> None:
    with pytest.raises(UserError, match="env_spec metadata cannot be read"):
        resolve_env("x", env_spec="{not json")


def test_missing_package_hint_from_a_fresh_process() -> None:
    """In a real interpreter without MuJoCo the hint is the whole message (no gymnasium traceback)."""
    code = (
        "import sys; sys.modules['mujoco'] = None\n"
        "from offrl.data.envs import make_env\n"
        "from offrl.errors import UserError\n"
        "try:\n    make_env('Walker2d-v5')\n"
        "except UserError as e:\n    print(e); sys.exit(2)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip().endswith('pip install "offrl[mujoco]" (or pass another env with --env)')


# ------------------------------------------------------------------------------------- bundled datasets


def test_bundled_root_defaults_to_repo_and_honours_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("OFFRL_DATASETS", raising=False)
    assert bundled_root() == REPO_ROOT / "datasets"
    assert "offrl/pendulum/medium-v0" in list_bundled()
    monkeypatch.setenv("OFFRL_DATASETS", str(tmp_path))
    assert bundled_root() == tmp_path
    assert list_bundled() == []
    (tmp_path / "ns/task/data-v0/data").mkdir(parents=True)
    (tmp_path / "ns/task/data-v0/data/metadata.json").write_text("{}")
    (tmp_path / "ns/task/.data-v1.tmp-1/data").mkdir(parents=True)  # half-written: ignored
    (tmp_path / "ns/task/.data-v1.tmp-1/data/metadata.json").write_text("{}")
    assert list_bundled() == ["ns/task/data-v0"]


def test_bundled_path_accepts_short_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OFFRL_DATASETS", raising=False)
    full = REPO_ROOT / "datasets/offrl/cartpole/medium-v0"
    assert bundled_path("offrl/cartpole/medium-v0") == full
    assert bundled_path("cartpole/medium-v0") == full
    assert bundled_path("cartpole/medium") == full
    assert bundled_path("cartpole/nope") is None


@pytest.mark.parametrize(("name", "recipe"), [
    ("offrl/hopper/expert-v0", "offrl/hopper/expert-v0"),
    ("hopper/expert", "offrl/hopper/expert-v0"),
    ("simple_spread-n2/medium", "offrl/simple_spread-n2/medium-v0"),
])
def test_an_on_demand_dataset_not_made_yet_says_how_to_make_it(name, recipe):
    """Before `offrl datasets make`, an on-demand id is one line naming the command (not "not found, did you
    mean <another dataset>"); an unknown id still gets the suggestions."""
    from offrl.data import load_dataset
    from offrl.errors import UserError

    with pytest.raises(UserError) as err:
        load_dataset(name)
    assert f"run `offrl datasets make {recipe}` first" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="not found: no such file or folder"):
        load_dataset("hopper/nonsense-v0")
