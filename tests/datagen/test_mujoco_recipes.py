"""The MuJoCo on-demand recipes (issue 5 section 2): random / medium / medium-replay / expert for Hopper-v5,
HalfCheetah-v5 and Walker2d-v5, with the behaviour checkpoints committed under ``datasets/behaviour/``.

Every recipe parses and names checkpoints that exist, load, fit the env and match their metadata; a small
version of a recipe loads back with its env, D4RL references and size, and regenerates to the same bytes;
a damaged or missing checkpoint is a one-line error (exit 2) that writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")

from helpers.cli import OFFRL

from offrl.data.envs import make_env  # noqa: E402
from offrl.data.references import d4rl_reference  # noqa: E402
from offrl.datagen.on_demand import make_on_demand, on_demand_status  # noqa: E402
from offrl.datagen.policies import fit_problem, load_actor  # noqa: E402
from offrl.datagen.recipes import file_sha256, load_on_demand  # noqa: E402
from offrl.datagen.rollout import segment_targets  # noqa: E402
from offrl.errors import UserError  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS = REPO_ROOT / "datasets"

ENVS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}
FLAVOURS = ("random", "medium", "medium-replay", "expert")
NAMES = [f"offrl/{env}/{flavour}-v0" for env in ENVS for flavour in FLAVOURS]


@pytest.fixture(autouse=True)
def _repo_recipes(monkeypatch):
    monkeypatch.delenv("OFFRL_DATASETS", raising=False)  # the repo's datasets/ and its recipes


def test_every_flavour_has_a_recipe_with_d4rl_references():
    recipes = load_on_demand()
    assert sorted(NAMES) == sorted(n for n in recipes if n.split("/")[1] in ENVS)
    for name in NAMES:
        recipe, task = recipes[name]
        env = name.split("/")[1]
        assert recipe.env_id == ENVS[env] and task == env and d4rl_reference(f"{task}-medium-v2") is not None
        assert recipe.min_transitions == 200_000, name
        flavour = name.split("/")[2].removesuffix("-v0")
        assert recipe.policy == {"random": "random", "medium": "checkpoint", "expert": "checkpoint",
                                 "medium-replay": "replay"}[flavour]
        if flavour == "medium-replay":
            assert recipe.segments[0].checkpoint is None  # the run's uniformly random warm-up
            assert recipe.segments[-1].checkpoint == recipes[f"offrl/{env}/medium-v0"][0].checkpoint


@pytest.mark.parametrize("env", list(ENVS))
def test_behaviour_checkpoints_load_fit_and_match_their_metadata(env):
    recipes = load_on_demand()
    files = {f for flavour in FLAVOURS for f in recipes[f"offrl/{env}/{flavour}-v0"][0].checkpoints()}
    assert files and all(f.startswith(f"behaviour/{env}/") for f in files)
    gym_env = make_env(ENVS[env])
    metas = {}
    for rel in files:
        path = DATASETS / rel
        actor = load_actor(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["weights_sha256"] == file_sha256(path) and meta["env_id"] == ENVS[env]
        assert fit_problem(actor, gym_env) is None
        assert path.stat().st_size < 400_000  # actor weights only
        metas[rel] = meta
    gym_env.close()
    expert = metas[recipes[f"offrl/{env}/expert-v0"][0].checkpoint]["measured_return"]["d4rl_normalized"]
    medium = metas[recipes[f"offrl/{env}/medium-v0"][0].checkpoint]["measured_return"]["d4rl_normalized"]
    assert expert > medium > 0.2 * expert  # D4RL's convention: medium is a partly trained policy


BASE = {"env_id": "Hopper-v5", "seed": 1, "min_transitions": 10, "d4rl_reference": "hopper"}


@pytest.mark.parametrize("entry, message", [
    ({"policy": "checkpoint"}, "goes with .and only with. policy: checkpoint"),
    ({"policy": "random", "checkpoint": "a.npz"}, "goes with .and only with. policy: checkpoint"),
    ({"policy": "replay"}, "'segments' goes with"),
    ({"policy": "replay", "segments": [{"steps": 0}]}, "segments.0..steps must be a positive integer"),
    ({"policy": "replay", "segments": [{"steps": 5, "file": "a.npz"}]}, "segments.0. must be"),
    ({"policy": "replay", "segments": [{"steps": 5}], "min_transitions": None, "episodes": 3},
     "sized by 'min_transitions'"),
    ({"policy": "random", "sample": True}, "'sample' applies"),
    ({"policy": "expert"}, "use policy: checkpoint"),
])
def test_recipe_mistakes_name_the_entry_and_the_fix(tmp_path, entry, message):
    import yaml

    recipe = {k: v for k, v in {**BASE, **entry}.items() if v is not None}
    path = tmp_path / "recipes.yaml"
    path.write_text(yaml.safe_dump({"on_demand": {"x/hopper/y-v0": recipe}}))
    with pytest.raises(UserError, match=f"on_demand.x/hopper/y-v0: .*{message}"):
        load_on_demand(path)


def test_segment_targets_split_by_the_runs_steps():
    from offrl.datagen.recipes import Segment

    segments = [Segment(5000), Segment(10_000, "a"), Segment(5000, "b")]
    assert segment_targets(segments, 200_000) == [50_000, 150_000, 200_000]
    assert segment_targets(segments, 7) == [2, 6, 7]


def test_small_medium_loads_back_and_regenerates_bit_identically(tmp_path, monkeypatch):
    from offrl.data import load_dataset

    name = "offrl/hopper/medium-v0"
    first = make_on_demand(name, tmp_path / "a", transitions=2000)
    second = make_on_demand(name, tmp_path / "b", transitions=2000)
    for file in ("main_data.hdf5", "metadata.json"):
        assert (first / "data" / file).read_bytes() == (second / "data" / file).read_bytes(), file
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "a"))
    ds = load_dataset(name)
    lengths = ds.info.episode_length
    assert ds.info.env_id == "Hopper-v5" and ds.info.ref_source == "dataset metadata"
    assert (ds.info.ref_min_score, ds.info.ref_max_score) == pytest.approx(d4rl_reference("hopper-medium-v2"))
    assert 2000 <= ds.info.transitions < 2000 + lengths["max"]  # whole episodes until at least 2000
    meta = json.loads((first / "data" / "metadata.json").read_text())
    assert meta["offrl_recipe"]["min_transitions"] == 2000 and meta["offrl_recipe"]["sample"] is True
    assert set(meta["offrl_behaviour"]) == {load_on_demand()[name][0].checkpoint}
    # a partly trained hopper: it hops (well above random, D4RL ~-20) but falls (terminations)
    assert ds.info.terminated >= 1 and ds.normalized_score(ds.info.episode_return["mean"]) > 10
    # a full make of the same name does not mistake the small copy for the cached full dataset
    status = {e["name"]: e["status"] for e in on_demand_status(tmp_path / "a")}
    assert status[name] == "stale" and status["offrl/hopper/expert-v0"] == "not generated"


def test_small_medium_replay_visits_every_segment_in_order(tmp_path):
    name = "offrl/walker2d/medium-replay-v0"
    recipe = load_on_demand()[name][0]
    path = make_on_demand(name, tmp_path, transitions=4000)
    import h5py

    with h5py.File(path / "data" / "main_data.hdf5", "r") as f:
        episodes = sorted(f, key=lambda k: int(k.split("_")[1]))
        lengths = np.array([f[k]["actions"].shape[0] for k in episodes])
        returns = np.array([f[k]["rewards"][()].sum() for k in episodes])
    ends = np.cumsum(lengths)
    targets = segment_targets(recipe.segments, 4000)
    # each segment ends at the first episode boundary at or past its target: the episodes of every
    # segment exist (none is skipped) and the last one stops right after 4000
    for target in targets:
        assert (ends >= target).any()
    assert ends[-1] >= 4000 and (len(ends) == 1 or ends[-2] < 4000)
    first_random = returns[: int(np.searchsorted(ends, targets[0])) + 1]
    assert returns[-1] > first_random.mean()  # later snapshots walk further than the random warm-up


def _copy_recipes(tmp_path: Path) -> Path:
    root = tmp_path / "datasets"
    root.mkdir()
    shutil.copy(DATASETS / "recipes.yaml", root / "recipes.yaml")
    shutil.copytree(DATASETS / "behaviour", root / "behaviour")
    return root


def _make_cli(*args: str, datasets: Path, minari: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OFFRL_DATASETS=str(datasets), MINARI_DATASETS_PATH=str(minari))
    return subprocess.run([OFFRL, "datasets", "make", *args], capture_output=True, text=True, timeout=120, env=env)


def test_damaged_or_missing_behaviour_checkpoint_is_a_one_line_error(tmp_path, monkeypatch):
    datasets = _copy_recipes(tmp_path)
    name = "offrl/halfcheetah/medium-v0"
    rel = load_on_demand(datasets / "recipes.yaml")[name][0].checkpoint
    ckpt = datasets / rel
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    minari = tmp_path / "minari"
    proc = _make_cli(name, "--transitions", "1000", datasets=datasets, minari=minari)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("offrl: error: ") and rel.split("/")[-1] in lines[0]
    assert not minari.exists() or not any(minari.rglob("*.hdf5"))

    # missing, through the Python API (same message path)
    ckpt.unlink()
    monkeypatch.setenv("OFFRL_DATASETS", str(datasets))
    with pytest.raises(UserError, match="not found"):
        make_on_demand(name, minari, transitions=1000)
    # a checkpoint whose bytes differ from its metadata's weights_sha256 (silently replaced)
    other = load_on_demand(datasets / "recipes.yaml")["offrl/halfcheetah/expert-v0"][0].checkpoint
    shutil.copy(datasets / other, ckpt)
    with pytest.raises(UserError, match="weights_sha256"):
        make_on_demand(name, minari, transitions=1000)
    assert not minari.exists() or not any(minari.rglob("*.hdf5"))


def test_datasets_list_shows_the_recipes():
    proc = subprocess.run([OFFRL, "datasets", "list", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = {e["name"]: e for e in json.loads(proc.stdout)["on_demand"]["datasets"]}
    assert set(NAMES) <= set(listed)
    assert listed["offrl/walker2d/medium-replay-v0"]["policy"] == "replay"
    assert {e["status"] for e in listed.values()} == {"not generated"}  # the test's own empty Minari root


def test_policy_driven_make_gives_the_same_bytes_whatever_kernels_the_cpu_picks(tmp_path):
    """OpenBLAS and numpy pick their SIMD kernels by the CPU (AVX2 or AVX-512 sum in other orders); with
    float32 actors walker2d medium-replay held other episodes on an AVX2 and an AVX-512 EPYC. Forcing other
    kernels on this CPU stands in for another CPU: the dataset's bytes must not move."""
    other_cpu = {"OPENBLAS_CORETYPE": "Prescott", "NPY_DISABLE_CPU_FEATURES": "AVX2 FMA3 AVX512F AVX512_SKX"}
    name, files = "offrl/walker2d/medium-replay-v0", ("main_data.hdf5", "metadata.json")
    procs = [subprocess.Popen([OFFRL, "datasets", "make", name, "--transitions", "6000", "--root", str(tmp_path / d)],
                              env={**os.environ, "OMP_NUM_THREADS": "1", **extra}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
             for d, extra in (("here", {}), ("other", other_cpu))]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    here, other = (tmp_path / d / name / "data" for d in ("here", "other"))
    for file in files:
        assert (here / file).read_bytes() == (other / file).read_bytes(), file
    meta = json.loads((here / "metadata.json").read_text())
    assert meta["offrl_actor_arithmetic"].startswith("float64")


def test_a_dataset_made_with_float32_actors_is_made_again(tmp_path):
    name = "offrl/hopper/medium-v0"
    target = make_on_demand(name, tmp_path, transitions=1000)
    meta_path = target / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["offrl_actor_arithmetic"]  # what a make with float32 actors (offrl up to 4789f06) wrote
    meta_path.write_text(json.dumps(meta))
    status = {e["name"]: e["status"] for e in on_demand_status(tmp_path)}
    assert status[name] == "stale"
    make_on_demand(name, tmp_path, transitions=1000)
    assert "offrl_actor_arithmetic" in json.loads(meta_path.read_text())
