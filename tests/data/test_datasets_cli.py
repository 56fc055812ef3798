"""`offrl datasets ...` through the real console script: info/list/convert/make, and every bad input of
issue 2 section 6 (exit 2, one stderr line naming the file and the problem, no traceback, no cache)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
from helpers.cli import OFFRL, assert_user_error
from helpers.datafiles import cartpole_episodes, write_d4rl, write_minari

from offrl.data import load_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]

INFO_KEYS = {
    "format",
    "transitions",
    "episodes",
    "observation_shape",
    "observation_dtype",
    "action_space",
    "terminated",
    "truncated",
    "episode_length",
    "episode_return",
    "reward",
    "env_id",
    "ref_min_score",
    "ref_max_score",
    "ref_source",
    "warnings",
    "cache",
}


def offrl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [OFFRL, *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


def _cache() -> Path:
    return Path(os.environ["OFFRL_CACHE"])


def test_info_json_and_table(tmp_path):
    arrays = write_d4rl(tmp_path / "hopper-medium-v2.hdf5", obs_dim=11, act_dim=3)
    out = offrl("datasets", "info", str(tmp_path / "hopper-medium-v2.hdf5"), "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert INFO_KEYS <= set(payload)
    assert payload["format"] == "d4rl" and payload["transitions"] == 28 and payload["episodes"] == 3
    assert payload["action_space"] == {"kind": "continuous", "shape": [3], "low": -1.0, "high": 1.0}
    assert set(payload["episode_length"]) == {"min", "mean", "max"}
    assert set(payload["reward"]) == {"min", "mean", "max", "std"}
    assert payload["ref_source"] == "D4RL table" and payload["env_id"] == "Hopper-v5"
    assert Path(payload["cache"]).is_dir()
    # the observation dimensions' spread: population std over the rows kept (column 0 is the row index)
    kept = load_dataset(tmp_path / "hopper-medium-v2.hdf5", cache_dir=_cache()).data["observation"].numpy()
    assert set(kept[:, 0].astype(int)) <= set(range(len(arrays["observations"])))
    std = kept.astype(np.float64).std(0)
    assert payload["observation_std"] == {"min": pytest.approx(std.min(), rel=1e-6),
                                          "max": pytest.approx(std.max(), rel=1e-6), "constant": 0}

    table = offrl("datasets", "info", str(tmp_path / "hopper-medium-v2.hdf5"))
    assert table.returncode == 0, table.stderr
    assert "terminated / truncated   1 / 2" in table.stdout
    assert "source: D4RL table" in table.stdout and "warnings" in table.stdout
    ratio = std.max() / std.min()
    assert f"observation scale        std {std.min():.3g} to {std.max():.3g} per dimension ({ratio:.0f}x apart)" \
        in table.stdout


def test_convert_then_list(tmp_path):
    eps = cartpole_episodes()
    space = gym.make("CartPole-v1")
    write_minari(
        "test/cartpole/cli-v0",
        eps,
        observation_space=space.observation_space,
        action_space=space.action_space,
        env="CartPole-v1",
    )
    write_d4rl(tmp_path / "mine.hdf5")
    conv = offrl("datasets", "convert", str(tmp_path / "mine.hdf5"), "--gamma", "0.9")
    assert conv.returncode == 0, conv.stderr
    assert "mine: 28 transitions, 3 episodes" in conv.stdout
    listing = offrl("datasets", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    assert "offrl/cartpole/medium-v0" in data["bundled"]["datasets"]
    assert data["minari"]["datasets"] == ["test/cartpole/cli-v0"]
    assert [(c["name"], c["gamma"]) for c in data["cached"]["datasets"]] == [("mine", 0.9)]
    human = offrl("datasets", "list")
    assert "test/cartpole/cli-v0" in human.stdout and "mine  d4rl  28 transitions" in human.stdout


def test_make_regenerates_a_bundled_dataset(tmp_path):
    out = offrl("datasets", "make", "cartpole/random", "--root", str(tmp_path))
    assert out.returncode == 0, out.stderr
    made = tmp_path / "offrl" / "cartpole" / "random-v0"
    assert out.stdout.strip() == str(made)
    bundled = REPO_ROOT / "datasets" / "offrl" / "cartpole" / "random-v0"
    assert (made / "data" / "main_data.hdf5").read_bytes() == (
        bundled / "data" / "main_data.hdf5"
    ).read_bytes()
    info = offrl("datasets", "info", str(made), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["ref_source"] == "dataset metadata"


def test_make_unknown_recipe_is_a_user_error():
    out = offrl("datasets", "make", "offrl/nope/none-v0")
    assert assert_user_error(out).startswith("offrl: error: no recipe named 'offrl/nope/none-v0'")


@pytest.mark.parametrize("name", ["offrl/pendulum/medium-v0", "offrl/simple_spread-n2/medium-v0"])
def test_make_transitions_only_for_on_demand_recipes(name, tmp_path):
    """--transitions resizes an on-demand MuJoCo recipe; a bundled or multi-agent one is named, not reported as
    missing, and nothing is written."""
    out = offrl("datasets", "make", name, "--transitions", "2000", "--root", str(tmp_path))
    assert_user_error(out, f"--transitions: {name} is not an on-demand MuJoCo recipe")
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------- bad inputs
def _minari_cartpole(dataset_id: str) -> Path:
    space = gym.make("CartPole-v1")
    return write_minari(
        dataset_id,
        cartpole_episodes(),
        observation_space=space.observation_space,
        action_space=space.action_space,
        env="CartPole-v1",
    )


def bad_nonexistent(tmp: Path) -> tuple[list[str], str]:
    return [str(tmp / "missing.hdf5")], "missing.hdf5: no such file"


def bad_not_hdf5(tmp: Path):
    (tmp / "notes.hdf5").write_text("hello, not hdf5\n" * 100)
    return [str(tmp / "notes.hdf5")], "notes.hdf5: not an HDF5 file"


def bad_truncated(tmp: Path):
    write_d4rl(tmp / "cut.hdf5", lengths=(500, 500), terminal=(False, True))
    data = (tmp / "cut.hdf5").read_bytes()
    (tmp / "cut.hdf5").write_bytes(data[: len(data) // 2])
    return [str(tmp / "cut.hdf5")], "cut.hdf5: truncated or corrupt HDF5"


def bad_corrupt(tmp: Path):
    write_d4rl(tmp / "bad.hdf5")
    data = bytearray((tmp / "bad.hdf5").read_bytes())
    data[100:1500] = os.urandom(1400)  # object headers and the root group's b-tree: gibberish
    (tmp / "bad.hdf5").write_bytes(bytes(data))
    return [str(tmp / "bad.hdf5")], "bad.hdf5: truncated or corrupt HDF5"


def bad_missing_key(tmp: Path):
    write_d4rl(tmp / "nokey.hdf5", drop=("rewards",))
    return [str(tmp / "nokey.hdf5")], "nokey.hdf5: missing required key 'rewards'"


def bad_lengths(tmp: Path):
    arrays = write_d4rl(tmp / "ok.hdf5")
    write_d4rl(tmp / "len.hdf5", overrides={"actions": arrays["actions"][:-3]})
    return [str(tmp / "len.hdf5")], "len.hdf5: 'actions' has 27 rows but 'observations' has 30"


def bad_zero(tmp: Path):
    with h5py.File(tmp / "empty.hdf5", "w") as f:
        for key, shape in (
            ("observations", (0, 3)),
            ("actions", (0, 2)),
            ("rewards", (0,)),
            ("terminals", (0,)),
        ):
            f.create_dataset(key, shape=shape, dtype=np.float32)
    return [str(tmp / "empty.hdf5")], "empty.hdf5: zero transitions"


def bad_nan(tmp: Path):
    arrays = write_d4rl(tmp / "ok.hdf5")
    obs = arrays["observations"].copy()
    obs[4, 1] = np.nan
    write_d4rl(tmp / "nan.hdf5", overrides={"observations": obs})
    return [str(tmp / "nan.hdf5")], "nan.hdf5: NaN/inf values in observation"


def bad_shape_change(tmp: Path):
    folder = _minari_cartpole("test/cartpole/shapes-v0")
    with h5py.File(folder / "data" / "main_data.hdf5", "a") as f:
        del f["episode_1/observations"]
        f["episode_1/observations"] = np.zeros((9, 5), np.float32)
    return [str(folder)], "episode_1 observations have shape (5,) but the dataset's observation shape is (4,)"


def bad_not_minari_folder(tmp: Path):
    (tmp / "somefolder").mkdir()
    (tmp / "somefolder" / "readme.txt").write_text("x")
    return [str(tmp / "somefolder")], "somefolder: a folder but not a Minari dataset"


def bad_unknown_id(tmp: Path):
    return ["D4RL/door/human-v2"], "dataset 'D4RL/door/human-v2' not found"


def bad_unsupported_space(tmp: Path):
    from minari.serialization import serialize_space

    folder = _minari_cartpole("test/cartpole/space-v0")
    meta_file = folder / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["action_space"] = serialize_space(gym.spaces.MultiBinary(2))
    meta_file.write_text(json.dumps(meta))
    return [str(folder)], "space-v0: unsupported action space MultiBinary"


def bad_minari_data_file_missing(tmp: Path):
    """A real Minari dataset whose data/main_data.hdf5 went missing (a copy cut short): by folder or by id."""
    folder = _minari_cartpole("test/cartpole/cut-v0")
    (folder / "data" / "main_data.hdf5").unlink()
    return ["test/cartpole/cut-v0"], "cut-v0: a Minari dataset whose data/main_data.hdf5 is missing"


def bad_cache_not_writable(tmp: Path):
    write_d4rl(tmp / "fine.hdf5")
    (tmp / "a-file").write_text("x")
    return [
        str(tmp / "fine.hdf5"),
        "--cache-dir",
        str(tmp / "a-file" / "cache"),
    ], "cache directory is not writable"


BAD_INPUTS = [
    bad_nonexistent,
    bad_not_hdf5,
    bad_truncated,
    bad_corrupt,
    bad_missing_key,
    bad_lengths,
    bad_zero,
    bad_nan,
    bad_shape_change,
    bad_not_minari_folder,
    bad_unknown_id,
    bad_unsupported_space,
    bad_minari_data_file_missing,
    bad_cache_not_writable,
]


def _assert_user_error(out: subprocess.CompletedProcess, needle: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("offrl: error: ")
    assert needle in lines[0], lines[0]
    datasets = _cache() / "datasets"
    assert not datasets.exists() or not any(datasets.iterdir()), "a cache entry was left behind"
    sources = _cache() / "sources"
    assert not sources.exists() or not any(sources.iterdir())


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=[f.__name__[4:] for f in BAD_INPUTS])
def test_bad_input(tmp_path, make_bad):
    args, needle = make_bad(tmp_path)
    _assert_user_error(offrl("datasets", "info", *args), needle)


def test_nan_is_accepted_with_allow_nan(tmp_path):
    args, _ = bad_nan(tmp_path)
    out = offrl("datasets", "info", *args, "--allow-nan", "--json")
    assert out.returncode == 0, out.stderr
    assert any("NaN/inf values in observation" in w for w in json.loads(out.stdout)["warnings"])


def test_unreadable_file(tmp_path):
    write_d4rl(tmp_path / "secret.hdf5")
    os.chmod(tmp_path / "secret.hdf5", 0)
    prefix: list[str] = []
    if os.geteuid() == 0:
        # root reads anything: run the CLI without the capabilities that bypass file permissions.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        drop = "-dac_override,-dac_read_search"
        prefix = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}"]
    out = subprocess.run(
        [*prefix, OFFRL, "datasets", "info", str(tmp_path / "secret.hdf5")],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ),
    )
    _assert_user_error(out, "secret.hdf5: cannot read the file (permission denied)")
