"""Multi-agent recipes (datasets/recipes.yaml, section multiagent): the scripted simple_spread policies rank
as intended, a recipe regenerates to identical bytes with its references in the metadata, a file made from
the same recipe is reused, and `load_dataset(<id>)` / `datasets list` find it."""

from __future__ import annotations

import json
import os

import h5py
import pytest
import yaml

pytest.importorskip("mpe2")

from offrl.data import load_dataset  # noqa: E402
from offrl.datagen.marl import load_marl_recipes, make_marl_dataset, marl_status, team_returns  # noqa: E402
from offrl.datagen.recipes import recipes_path  # noqa: E402

ENV = "mpe2/simple_spread-n2"


def test_expert_beats_fixed_assignment_beats_random():
    expert, fixed, rand = (team_returns(ENV, p, 30, 5) for p in ("assign", "fixed", "random"))
    assert expert.mean() > fixed.mean() + 0.5 > rand.mean() + 5, (expert.mean(), fixed.mean(), rand.mean())


def test_the_repository_recipes_parse():
    recipes = load_marl_recipes()
    assert {f"offrl/simple_spread-n2/{f}-v0" for f in ("random", "medium", "expert", "mixed")} <= set(recipes)
    assert recipes["offrl/simple_spread-n2/mixed-v0"].epsilon == (1.0, 0.0)


@pytest.fixture
def small_recipes(tmp_path, monkeypatch):
    """A recipes file with a 6-episode medium recipe and 4-episode references (OFFRL_DATASETS points at it)."""
    real = yaml.safe_load(recipes_path().read_text())
    recipe = dict(real["multiagent"]["offrl/simple_spread-n2/medium-v0"], episodes=6)
    small = {"format": 1, "references": {ENV: {"episodes": 4, "seed": 99}}, "datasets": {},
             "multiagent": {"offrl/simple_spread-n2/medium-v0": recipe}}
    (tmp_path / "bundled").mkdir()
    (tmp_path / "bundled" / "recipes.yaml").write_text(yaml.safe_dump(small))
    monkeypatch.setenv("OFFRL_DATASETS", str(tmp_path / "bundled"))
    return small


def test_recipe_regenerates_bit_identical_with_references(small_recipes, tmp_path, monkeypatch):
    a = make_marl_dataset("simple_spread-n2/medium", tmp_path / "a")
    b = make_marl_dataset("offrl/simple_spread-n2/medium-v0", tmp_path / "b")
    assert a == tmp_path / "a" / "offrl" / "simple_spread-n2" / "medium-v0.hdf5"
    assert a.read_bytes() == b.read_bytes()
    with h5py.File(a, "r") as f:
        assert (f.attrs["n_agents"], f.attrs["n_actions"], f["observations"].shape) == (2, 5, (150, 2, 12))
        assert f.attrs["ref_min_score"] == pytest.approx(team_returns(ENV, "random", 4, 99).mean())
        assert f.attrs["ref_max_score"] == pytest.approx(team_returns(ENV, "assign", 4, 99).mean())
        assert json.loads(f.attrs["offrl_recipe"])["epsilon"] == 0.6
    mtime = a.stat().st_mtime_ns
    assert make_marl_dataset("simple_spread-n2/medium", tmp_path / "a") == a and a.stat().st_mtime_ns == mtime
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "a"))
    assert [s["status"] for s in marl_status()] == ["ready"]
    ds = load_dataset("simple_spread-n2/medium")
    assert ds.name == "offrl/simple_spread-n2/medium-v0" and len(ds) == 150 and ds.info.episodes == 6
    assert (ds.info.ref_source, ds.info.env_id) == ("dataset metadata", ENV)
    assert ds.info.ref_max_score > ds.info.ref_min_score
    # An edited recipe makes the file stale; `make` regenerates it.
    small_recipes["multiagent"]["offrl/simple_spread-n2/medium-v0"]["seed"] = 7
    (tmp_path / "bundled" / "recipes.yaml").write_text(yaml.safe_dump(small_recipes))
    assert [s["status"] for s in marl_status()] == ["stale"]
    make_marl_dataset("simple_spread-n2/medium")
    assert a.read_bytes() != b.read_bytes() and os.path.getsize(a) > 0
