"""The bundled datasets: Minari layout (read by minari itself), time-limit semantics, fidelity to the env,
reference scores, flavour ordering, and bit-identical regeneration from the recipes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest

from offrl.data.catalog import list_bundled
from offrl.datagen.bundled import make_bundled
from offrl.datagen.policies import make_policy
from offrl.datagen.recipes import list_recipes, load_recipes
from offrl.datagen.rollout import generator_versions, reference_returns, rollout
from offrl.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT = REPO_ROOT / "datasets"
FLAVOURS = ("random", "medium", "expert", "mixed")
NAMES = [f"offrl/{env}/{flavour}-v0" for env in ("cartpole", "pendulum") for flavour in FLAVOURS]
ENV_IDS = {"cartpole": "CartPole-v1", "pendulum": "Pendulum-v1"}


def _metadata(name: str, root: Path = ROOT) -> dict:
    return json.loads((root / name / "data" / "metadata.json").read_text())


@pytest.fixture(scope="module")
def episode_stats() -> dict[str, dict[str, np.ndarray]]:
    """Per dataset: episode returns and lengths, and the flags at and before each episode's last step."""
    stats = {}
    for name in NAMES:
        returns, lengths, term_last, trunc_last, flags_early = [], [], [], [], 0
        with h5py.File(ROOT / name / "data" / "main_data.hdf5", "r") as f:
            for key in f:
                group = f[key]
                rewards = group["rewards"][()]
                terminations, truncations = group["terminations"][()], group["truncations"][()]
                returns.append(rewards.sum())
                lengths.append(len(rewards))
                term_last.append(terminations[-1])
                trunc_last.append(truncations[-1])
                flags_early += int(terminations[:-1].sum() + truncations[:-1].sum())
        stats[name] = {
            "returns": np.array(returns),
            "lengths": np.array(lengths),
            "terminated": np.array(term_last),
            "truncated": np.array(trunc_last),
            "flags_before_end": flags_early,
        }
    return stats


def test_every_recipe_is_bundled() -> None:
    assert list_recipes() == sorted(NAMES)
    assert list_bundled(ROOT) == sorted(NAMES)


def test_bundled_size_within_budget() -> None:
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert total <= 25 * 1024 * 1024, f"datasets/ is {total / 1e6:.1f} MB"


@pytest.mark.parametrize("name", NAMES)
def test_minari_loads_bundled_dataset(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(ROOT))
    dataset = minari.load_dataset(name)
    meta = _metadata(name)
    env_id = ENV_IDS[name.split("/")[1]]
    assert dataset.total_episodes == meta["total_episodes"]
    assert dataset.total_steps == meta["total_steps"]
    env = dataset.recover_environment()
    assert env.spec.id == env_id
    assert dataset.observation_space == env.observation_space
    assert dataset.action_space == env.action_space
    episode = dataset[dataset.total_episodes - 1]
    steps = len(episode.actions)
    assert episode.observations.shape == (steps + 1, *env.observation_space.shape)
    assert episode.rewards.shape == episode.terminations.shape == episode.truncations.shape == (steps,)
    assert all(env.action_space.contains(a) for a in episode.actions[:20])
    assert math.isfinite(meta["ref_min_score"]) and meta["ref_min_score"] < meta["ref_max_score"]
    # Enough transitions to learn from.
    assert meta["total_steps"] >= 25_000


def test_time_limits_are_truncations(episode_stats: dict) -> None:
    for name, stats in episode_stats.items():
        assert stats["flags_before_end"] == 0, name
        ended = stats["terminated"] | stats["truncated"]
        assert ended.all(), f"{name}: an episode ends without a flag"
        if "pendulum" in name:
            # Pendulum never terminates: every episode is cut by the 200-step limit.
            assert (
                (stats["lengths"] == 200).all() and stats["truncated"].all() and not stats["terminated"].any()
            )
        else:
            # CartPole: a fall is a termination; reaching 500 steps is a truncation.
            assert (stats["truncated"] == (stats["lengths"] == 500)).all(), name
            assert (stats["terminated"] == (stats["lengths"] < 500)).all(), name
    assert episode_stats["offrl/cartpole/random-v0"]["terminated"].all()
    assert episode_stats["offrl/cartpole/expert-v0"]["truncated"].all()
    medium = episode_stats["offrl/cartpole/medium-v0"]
    assert medium["terminated"].any() and medium["truncated"].any()  # the random pushes make it fall


@pytest.mark.parametrize("name", NAMES)
def test_recorded_episodes_replay_exactly_in_the_env(name: str) -> None:
    """Resetting with the recorded seed and replaying the recorded actions reproduces the data."""
    env = gym.make(ENV_IDS[name.split("/")[1]])
    with h5py.File(ROOT / name / "data" / "main_data.hdf5", "r") as f:
        last = len(f) - 1
        for index in (0, last):
            group = f[f"episode_{index}"]
            obs, _ = env.reset(seed=int(group.attrs["seed"]))
            observations = group["observations"][()]
            np.testing.assert_array_equal(obs, observations[0])
            for t, action in enumerate(group["actions"][()]):
                obs, reward, terminated, truncated, _ = env.step(action)
                np.testing.assert_array_equal(obs, observations[t + 1])
                assert reward == group["rewards"][t]
                assert terminated == group["terminations"][t] and truncated == group["truncations"][t]
            assert group.attrs["total_steps"] == len(group["actions"])


@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
def test_flavours_are_ordered_and_medium_is_medium(env: str, episode_stats: dict) -> None:
    meta = _metadata(f"offrl/{env}/random-v0")
    lo, hi = meta["ref_min_score"], meta["ref_max_score"]
    normalized = {
        f: 100 * (episode_stats[f"offrl/{env}/{f}-v0"]["returns"].mean() - lo) / (hi - lo) for f in FLAVOURS
    }
    assert normalized["random"] < normalized["medium"] < normalized["expert"]
    assert normalized["random"] < normalized["mixed"] < normalized["expert"]
    assert abs(normalized["random"]) < 10 and normalized["expert"] > 95
    # "medium": clearly between random and expert, so a learner has room to beat it.
    assert 25 <= normalized["medium"] <= 65, normalized
    assert normalized["mixed"] <= 75, normalized


@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
def test_reference_scores_are_random_and_expert_means(env: str, episode_stats: dict) -> None:
    env_id = ENV_IDS[env]
    metas = [_metadata(f"offrl/{env}/{f}-v0") for f in FLAVOURS]
    lo, hi = metas[0]["ref_min_score"], metas[0]["ref_max_score"]
    assert all((m["ref_min_score"], m["ref_max_score"]) == (lo, hi) for m in metas)
    assert metas[0]["num_episodes_average_score"] == 100

    # Fresh episodes (seeds the references did not use) agree with the references within sampling error.
    for kind, ref, episodes in (("random", lo, 30), ("expert", hi, 10)):
        returns = np.array(reference_returns(env_id, kind, episodes, 12_345))
        spread = max(float(np.std(returns)), 1.0)
        tolerance = 4 * spread * math.sqrt(1 / episodes + 1 / 100)
        assert abs(returns.mean() - ref) < tolerance, (kind, returns.mean(), ref)
    # The random and expert datasets come from the same policies as the references.
    for flavour, ref in (("random", lo), ("expert", hi)):
        returns = episode_stats[f"offrl/{env}/{flavour}-v0"]["returns"]
        tolerance = 4 * max(float(returns.std()), 1.0) * math.sqrt(1 / len(returns) + 1 / 100)
        assert abs(returns.mean() - ref) < tolerance, (flavour, returns.mean(), ref)
    if env == "cartpole":
        assert hi == 500.0  # the LQR expert never drops the pole
    else:
        assert hi > -200.0 and lo < -1000.0


def test_pendulum_references_recompute_exactly() -> None:
    ref = load_recipes()[1]["Pendulum-v1"]
    meta = _metadata("offrl/pendulum/medium-v0")
    assert (
        float(np.mean(reference_returns("Pendulum-v1", "random", ref.episodes, ref.seed)))
        == meta["ref_min_score"]
    )
    assert (
        float(np.mean(reference_returns("Pendulum-v1", "expert", ref.episodes, ref.seed)))
        == meta["ref_max_score"]
    )


def test_make_bundled_regenerates_bit_identically(tmp_path: Path) -> None:
    name = "offrl/cartpole/random-v0"
    out = make_bundled(name, root=tmp_path)
    assert out == tmp_path / name
    assert list_bundled(tmp_path) == [name]  # no temporary siblings left behind
    committed, fresh = ROOT / name / "data", out / "data"
    meta_committed, meta_fresh = _metadata(name), _metadata(name, tmp_path)
    with h5py.File(committed / "main_data.hdf5", "r") as a, h5py.File(fresh / "main_data.hdf5", "r") as b:
        assert list(a) == list(b)
        for key in a:
            assert dict(a[key].attrs) == dict(b[key].attrs)
            for field in ("observations", "actions", "rewards", "terminations", "truncations"):
                assert a[key][field].dtype == b[key][field].dtype
                np.testing.assert_array_equal(a[key][field][()], b[key][field][()])
    versions = meta_committed.pop("offrl_generator_versions")
    meta_fresh.pop("offrl_generator_versions")
    meta_committed.pop("dataset_size"), meta_fresh.pop("dataset_size")
    assert meta_committed == meta_fresh
    if versions == generator_versions():
        # Same libraries: the files themselves are identical, byte for byte.
        for file in ("main_data.hdf5", "metadata.json"):
            assert (committed / file).read_bytes() == (fresh / file).read_bytes(), file


def test_make_bundled_replaces_and_accepts_short_names(tmp_path: Path) -> None:
    first = make_bundled("cartpole/expert", root=tmp_path)
    before = (first / "data" / "main_data.hdf5").read_bytes()
    second = make_bundled("offrl/cartpole/expert-v0", root=tmp_path)
    assert first == second == tmp_path / "offrl/cartpole/expert-v0"
    assert (second / "data" / "main_data.hdf5").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "offrl/cartpole").iterdir()) == ["expert-v0"]


def test_unknown_recipe_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no recipe named 'offrl/cartpole/nope-v0'.*offrl/pendulum/medium-v0"):
        make_bundled("offrl/cartpole/nope-v0")


def test_recipe_file_mistakes_are_user_errors(tmp_path: Path) -> None:
    bad = tmp_path / "recipes.yaml"
    bad.write_text(
        "datasets:\n  x/y/z-v0: {env_id: CartPole-v1, policy: expert, seed: 1, episodes: 2, min_transitions: 5}\n"
    )
    with pytest.raises(UserError, match="exactly one of 'episodes' or 'min_transitions'"):
        load_recipes(bad)
    bad.write_text(
        "datasets:\n  x/y/z-v0: {env_id: CartPole-v1, policy: expert, seed: 1, episodes: 2, eps: 1}\n"
    )
    with pytest.raises(UserError, match="unknown keys \\['eps'\\]"):
        load_recipes(bad)


def test_noisy_expert_falls_and_clean_expert_does_not() -> None:
    """The policies behind the flavours: epsilon-greedy pushes drop the CartPole pole; the LQR does not."""
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(0)
    clean = [rollout(env, make_policy("CartPole-v1", "expert"), rng, 50 + i) for i in range(3)]
    noisy = [rollout(env, make_policy("CartPole-v1", "expert", epsilon=0.8), rng, 60 + i) for i in range(5)]
    assert all(e.total_steps == 500 and e.truncations[-1] for e in clean)
    assert all(e.terminations[-1] for e in noisy)


def test_datasets_make_cli_reports_user_errors(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "offrl", "datasets", "make", "--root", str(tmp_path), "no/such/dataset-v0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("offrl: error: no recipe named"), proc.stderr
    assert not any(tmp_path.iterdir())


def test_unwritable_root_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output root should be")
    with pytest.raises(UserError, match="cannot write the dataset .*regenerate elsewhere with --root"):
        make_bundled("offrl/cartpole/expert-v0", root=blocker)
    assert blocker.read_text().startswith("a file")


ON_DEMAND_RECIPES = """\
format: 1
references: {}
datasets: {}
on_demand:
  offrl/pendulum/tiny-random-v0:
    env_id: Pendulum-v1
    policy: random
    episodes: 3
    seed: 5
    d4rl_reference: hopper
    description: three random Pendulum episodes
"""


def test_on_demand_recipe_writes_under_minari_root_and_is_cached(tmp_path: Path, monkeypatch) -> None:
    """On-demand recipes (the MuJoCo random flavours use this path) are not bundled: they are generated
    into MINARI_DATASETS_PATH, load by id, carry D4RL references and are reused when unchanged."""
    from offrl.data import load_dataset
    from offrl.data.references import d4rl_reference
    from offrl.datagen.recipes import list_on_demand

    (tmp_path / "bundled").mkdir()
    (tmp_path / "bundled" / "recipes.yaml").write_text(ON_DEMAND_RECIPES)
    monkeypatch.setenv("OFFRL_DATASETS", str(tmp_path / "bundled"))
    assert list_on_demand() == ["offrl/pendulum/tiny-random-v0"] and list_recipes() == []
    path = make_bundled("offrl/pendulum/tiny-random-v0")  # `offrl datasets make NAME` calls this
    assert path == Path(os.environ["MINARI_DATASETS_PATH"]) / "offrl/pendulum/tiny-random-v0"
    stamp = (path / "data" / "main_data.hdf5").stat().st_mtime_ns
    assert make_bundled("pendulum/tiny-random") == path  # short name; same recipe: the cached copy
    assert (path / "data" / "main_data.hdf5").stat().st_mtime_ns == stamp
    ds = load_dataset("offrl/pendulum/tiny-random-v0")
    assert ds.info.episodes == 3 and ds.info.transitions == 600
    assert (ds.info.ref_min_score, ds.info.ref_max_score) == pytest.approx(d4rl_reference("hopper-random-v2"))
    actions = ds.data["action"]
    assert float(actions.abs().max()) <= 2.0 and float(actions.std()) > 0.5


def test_random_policy_covers_any_box_env() -> None:
    pytest.importorskip("mujoco")
    env = gym.make("HalfCheetah-v5")
    episode = rollout(env, make_policy("HalfCheetah-v5", "random"), np.random.default_rng(0), 0)
    assert episode.actions.shape == (1000, 6) and np.abs(episode.actions).max() <= 1.0
    assert episode.truncations[-1] and not episode.terminations.any()
