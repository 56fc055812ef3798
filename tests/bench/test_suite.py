"""benchmarks/suite.py end to end on a tiny budget: runs, report files, and the table's rows."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from helpers.bench import benchmark_module


def _suite():
    return benchmark_module("suite")


def _peer_args() -> list[str]:
    """d3rlpy peer rows when d3rlpy is importable here or OFFRL_D3RLPY_PYTHON names a Python that has it."""
    python = os.environ.get("OFFRL_D3RLPY_PYTHON")
    if python and Path(python).exists():
        return ["--d3rlpy-python", python, "--peer-algos", "dqn"]
    if importlib.util.find_spec("d3rlpy") is not None:
        return ["--d3rlpy-python", sys.executable, "--peer-algos", "dqn"]
    return ["--no-peers"]


def test_suite_tiny_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    out, runs = tmp_path / "reports", tmp_path / "runs"
    peers = _peer_args()
    argv = ["--out", str(out), "--runs", str(runs), "--seeds", "2", "--steps", "8", "--eval-episodes", "1",
            "--datasets", "offrl/cartpole/random-v0", "--algos", "dqn", "--jobs", "2", *peers]
    assert _suite().main(argv) == 0, capsys.readouterr().err

    for name in ("index.html", "scores.png", "summary.csv", "summary.md", "README.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "summary.csv").open()))
    by_algo = {r["group"]: r for r in rows}
    expected = {"dqn"} | ({"d3rlpy-dqn"} if "--no-peers" not in peers else set())
    assert set(by_algo) == expected
    for row in rows:
        assert row["dataset"] == "offrl/cartpole/random-v0"
        assert row["n_seeds"] == "2" and row["steps"] == "8"
        assert row["unit"] == "eval_normalized_score" and row["last_mean"] not in ("", "nan")
    readme = (out / "README.md").read_text()
    assert "python benchmarks/suite.py" in readme and "| offrl/cartpole/random-v0 | dqn | 2 | 8 |" in readme
    scope = readme.split("\n\n")[1]  # the opening paragraph names the peer only when one trained
    assert scope.startswith("Datasets `offrl/cartpole/random-v0` x offrl's dqn")
    assert ("d3rlpy" in scope) == ("--no-peers" not in peers), scope
    # provenance: the CPU of every completed run and the one digest of the dataset they read
    from offrl.hardware import cpu_isa, cpu_model

    n_runs = len(expected) * 2
    assert f"- Trained on: {cpu_model()} ({cpu_isa()}): {n_runs} runs" in readme
    assert "- Dataset bytes: offrl/cartpole/random-v0: " in readme and f"({n_runs} runs)" in readme
    assert "made more than once" not in readme
    # the settled table (and, with peer rows, offrl minus d3rlpy) over the completed runs
    assert "## Did the curves settle, and which library ends higher?" in readme
    assert "| offrl/cartpole/random-v0 | dqn | 2 | 8 | " in readme.split("## Did the curves settle")[1]
    if "--no-peers" not in peers:
        assert "| offrl/cartpole/random-v0 | dqn | 2 / 2 | " in readme
        # both libraries' last evaluation runs eval.final_episodes episodes (the same episodes, the same seeds)
        import pandas as pd

        for algo in ("dqn", "d3rlpy-dqn"):
            metrics = pd.read_csv(runs / "offrl__cartpole__random-v0" / algo / "seed0" / "metrics.csv")
            episodes = metrics.dropna(subset=["eval_return_mean"])["eval_episodes"].tolist()
            assert episodes[-1] == 20, (algo, episodes)
        # the peer keeps each episode's return, so a last evaluation can be cut to the first 10 episodes
        final = json.loads((runs / "offrl__cartpole__random-v0" / "d3rlpy-dqn" / "seed0" / "summary.json").read_text())["final"]
        assert len(final["episode_returns"]) == 20
        assert sum(final["episode_returns"]) / 20 == pytest.approx(final["return_mean"], abs=1e-3)
    html = (out / "index.html").read_text()
    assert "scores.png" in html and "offrl/cartpole/random-v0" in html
    # two seeds, each a run directory in offrl's format
    assert sorted(p.name for p in (runs / "offrl__cartpole__random-v0" / "dqn").iterdir()) == ["seed0", "seed1"]

    # the same command again reuses the finished runs of the same config instead of retraining them
    capsys.readouterr()
    assert _suite().main(argv) == 0
    progress = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert progress and all(": reused" in ln for ln in progress), progress

    # a --report-only rebuild (on another machine, say) names the machine and software the runs trained on
    record = runs / ".suite.json"
    saved = json.loads(record.read_text())
    assert saved["cpu"] and saved["cores"] >= 1 and saved["versions"].startswith("offrl ")
    record.write_text(json.dumps({**saved, "cpu": "Training CPU", "cores": 7, "versions": "offrl 0.0.9, torch 9"}))
    rebuilt = tmp_path / "rebuilt"
    assert _suite().main([*argv[:1], str(rebuilt), *argv[2:], "--report-only"]) == 0
    machine = (rebuilt / "README.md").read_text()
    assert "- Machine of the training call: Training CPU, 7 cores," in machine and "- Software: offrl 0.0.9, torch 9;" in machine
    record.write_text(json.dumps({k: v for k, v in saved.items() if k not in ("cpu", "cores", "versions")}))
    assert _suite().main([*argv[:1], str(rebuilt), *argv[2:], "--report-only"]) == 0  # a record from before
    assert '- Machine of the training call: not recorded ("Trained on" below has each run\'s), shared' in (
        rebuilt / "README.md").read_text()
    record.write_text(json.dumps(saved))

    # --completed-only reports the finished runs of a study still training, and says how many they are
    summary = runs / "offrl__cartpole__random-v0" / "dqn" / "seed1" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "running"}))
    partial = tmp_path / "partial"
    assert _suite().main([*argv[:1], str(partial), *argv[2:], "--report-only", "--completed-only"]) == 0
    rows = {r["group"]: r for r in csv.DictReader((partial / "summary.csv").open())}
    assert rows["dqn"]["n_seeds"] == "1" and all(r["n_seeds"] == "2" for g, r in rows.items() if g != "dqn")
    partial_readme = (partial / "README.md").read_text()
    # a report without the peer does not claim one in its opening paragraph
    bare = tmp_path / "bare"
    base = argv[: len(argv) - len(peers)]
    assert _suite().main([*base[:1], str(bare), *base[2:], "--no-peers", "--report-only"]) == 0
    bare_scope = (bare / "README.md").read_text().split("\n\n")[1]
    assert bare_scope.startswith("Datasets `offrl/cartpole/random-v0` x offrl's dqn, 2 seeds each"), bare_scope
    assert (f"Completed runs only (--completed-only): {n_runs - 1} of the {n_runs} planned; training or stopped: "
            f"offrl/cartpole/random-v0 dqn seed 1 at 8 of 8 steps; no run folder in {runs} yet: 0.") in partial_readme
    assert "| offrl/cartpole/random-v0 | dqn | 1 | 8 | " in partial_readme  # the running seed is left out

    # --last-episodes K: the settled section scores each last evaluation on its episodes 0..K-1 and says so
    cut = tmp_path / "cut"
    assert _suite().main([*argv[:1], str(cut), *argv[2:], "--report-only", "--last-episodes", "20"]) == 0
    section = (cut / "README.md").read_text().split("## Did the curves settle")[1]
    assert "--last-episodes 20` (completed runs only)" in section and "episodes 0-19 only" in section
    assert "| offrl/cartpole/random-v0 | dqn | 1 | 8 | " in section  # seed 1 is still marked running

    # a note given to any call is kept by every later rebuild (in <runs>/.suite.json); --completed-only's is not
    noted = tmp_path / "noted"
    for note in ("first note", "second note"):
        assert _suite().main([*argv[:1], str(noted), *argv[2:], "--report-only", "--note", note]) == 0
    notes = (noted / "README.md").read_text().split("## Notes")[1]
    assert "- first note\n- second note\n" in notes and "Completed runs only" not in notes
    # Student-t intervals over seeds by default, said where they show; --interval bootstrap gives rliable's
    student = tmp_path / "student"
    assert _suite().main([*argv[:1], str(student), *argv[2:], "--report-only"]) == 0
    text = (student / "README.md").read_text()
    assert "(completed runs only)" in text and "--interval" not in text.split("## Did the curves settle")[1]
    assert "Student-t 95% CIs (Welch's for the differences)" in text and "mean over seeds with a Student-t 95% CI" in text
    assert "Student-t 95% CI of the mean" in (student / "index.html").read_text()
    boot = tmp_path / "boot"
    assert _suite().main([*argv[:1], str(boot), *argv[2:], "--report-only", "--interval", "bootstrap"]) == 0
    text = (boot / "README.md").read_text()
    assert "--interval bootstrap` (completed runs only)" in text and "bootstrap 95% CIs" in text
    assert "mean over seeds with a percentile bootstrap 95% CI (10,000 resamples)" in text
    assert "Student-t 95% CI of the mean" not in (boot / "index.html").read_text()

    # --first-seed adds seeds to the study: only the new seed trains, the report covers every run there
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "completed"}))
    capsys.readouterr()
    more = tmp_path / "more"
    more_argv = [*argv[:1], str(more), *argv[2:]]
    more_argv[more_argv.index("--seeds") + 1] = "1"
    assert _suite().main([*more_argv, "--first-seed", "2"]) == 0
    progress = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert len(progress) == len(expected) and all("seed 2: ok" in ln for ln in progress), progress
    assert sorted(p.name for p in (runs / "offrl__cartpole__random-v0" / "dqn").iterdir()) == ["seed0", "seed1", "seed2"]
    rows = list(csv.DictReader((more / "summary.csv").open()))
    assert {r["group"] for r in rows} == expected and all(r["n_seeds"] == "3" for r in rows), rows


@pytest.mark.parametrize("option", [["--first-seed", "-1"], ["--seeds", "0"], ["--last-episodes", "-1"]])
def test_suite_rejects_bad_seed_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _suite().main(["--out", str(tmp_path / "r"), "--no-peers", *option])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option[0] in err[0], err
    assert not (tmp_path / "r").exists()


def test_suite_rejects_unknown_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _suite().main(["--out", str(tmp_path / "r"), "--datasets", "offrl/nope/x-v0", "--no-peers"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--datasets offrl/nope/x-v0" in err[0]


def test_provenance_names_machines_and_mixed_dataset_bytes(tmp_path: Path) -> None:
    import json

    suite = _suite()
    jobs = [suite.Job("offrl/x/y-v0", "cql", seed) for seed in range(3)]
    records = [  # seed 0 resumed on a second CPU; seed 1 read other bytes; seed 2 did not finish
        {"status": "completed", "machines": ["CPU A (avx2)", "CPU B (avx512f)"], "dataset": {"digest": "a" * 64},
         "wall_time": 1800.0},
        {"status": "completed", "machines": ["CPU A (avx2)"], "dataset": {"digest": "b" * 64}, "wall_time": 5400.0},
        {"status": "running", "machines": ["CPU C (avx2)"], "dataset": {"digest": "a" * 64}, "wall_time": 99999.0},
    ]
    for job, record in zip(jobs, records, strict=True):
        job.run_dir(tmp_path).mkdir(parents=True)
        (job.run_dir(tmp_path) / "summary.json").write_text(json.dumps(record))
    text = suite.provenance(jobs, tmp_path)
    assert "- Trained on: CPU A (avx2): 2 runs; CPU B (avx512f): 1 run" in text and "CPU C" not in text
    assert "offrl/x/y-v0: aaaaaaaaaaaa (1 run), bbbbbbbbbbbb (1 run) (made more than once" in text
    # what the completed runs cost, whatever a rebuild reused (the unfinished run not counted)
    assert ("- Training time (each completed run's own wall time, evaluations included): cql 2.0 h over 2 runs, "
            "median 1.0 h a run") in text
    assert suite.provenance(jobs[2:], tmp_path) == ""  # nothing completed: no line
    peer = suite.Job("offrl/x/y-v0", "cql", 0, peer=True)  # d3rlpy's runs are counted apart
    peer.run_dir(tmp_path).mkdir(parents=True)
    (peer.run_dir(tmp_path) / "summary.json").write_text(json.dumps({"status": "completed", "wall_time": 600.0}))
    assert "cql 2.0 h over 2 runs, median 1.0 h a run; d3rlpy-cql 10 min over 1 run, median 10 min a run" in \
        suite.provenance([*jobs, peer], tmp_path)
    assert [suite._duration(x) for x in (7200, 3599, 599, 59)] == ["2.0 h", "60 min", "10.0 min", "59 s"]


def test_peer_reuse_follows_what_the_peer_reads() -> None:
    """A d3rlpy run is reused across offrl-only settings (init, fused kernels) and retrained when anything the
    peer reads changes (a learning rate, the last evaluation's episodes)."""
    suite = _suite()
    job = suite.Job("offrl/pendulum/random-v0", "cql", 0, peer=True)
    base = {"offline_steps": 100, "batch_size": 256, "log_interval": 50, "dataset": {"id": "offrl/pendulum/random-v0"},
            "eval": {"interval": 50, "episodes": 10, "final_episodes": 20, "seed": 0, "heldout_fraction": 0.05},
            "cql": {"critic_lr": 1e-3, "orthogonal_init": True, "fused": True}}

    def changed(section: str, key: str, value: object) -> bool:
        other = {**base, section: {**base[section], key: value}}
        return suite._mirrored(job, other) != suite._mirrored(job, base)

    assert not changed("cql", "orthogonal_init", False) and not changed("cql", "fused", False)
    assert not changed("eval", "heldout_fraction", 0.0)  # the peer trains on every episode either way
    assert changed("cql", "critic_lr", 3e-4) and changed("eval", "final_episodes", 10)
    # a key added after the run (observation_scaler, 2026-12-06): at its old behaviour it is the same config
    assert not changed("cql", "observation_scaler", "none") and changed("cql", "observation_scaler", "standard")
    assert not changed("cql", "reward_scale", 1.0) and changed("cql", "reward_scale", 0.1)
    assert not changed("cql", "reward_bias", 0.0) and changed("cql", "reward_scaler", "return_based")


def test_offrl_reuse_compares_every_setting_that_changes_learning(tmp_path: Path) -> None:
    """An offrl run is reused only when every setting that changes what it learns matches the plan (not just
    its algorithm's section): paths, logging and thread counts may differ."""
    import yaml

    suite = _suite()
    job = suite.Job("offrl/pendulum/random-v0", "cql", 0)
    plan = {"algo": "cql", "offline_steps": 100, "batch_size": 256, "num_threads": 1, "progress_bar": True,
            "clip_norm": None, "precision": "fp32",
            "dataset": {"id": "offrl/pendulum/random-v0", "path": "/a", "digest": "a" * 64},
            "eval": {"interval": 50, "heldout_fraction": 0.05}, "online": {"steps": 0, "scratch_dir": None},
            "cql": {"critic_lr": 1e-3}}
    run = job.run_dir(tmp_path)
    run.mkdir(parents=True)

    def reused(**changes: object) -> bool:
        saved = {**plan, "seed": 0, "created": "now"}
        for dotted, value in changes.items():
            *parents, leaf = dotted.split("__")
            node = saved
            for key in parents:
                node[key] = node = dict(node[key])
            node[leaf] = value
        (run / "config.yaml").write_text(yaml.safe_dump(saved))
        return suite._same_config(job, run, plan)

    assert reused() and reused(dataset__path="/b", progress_bar=False, num_threads=2, online__scratch_dir="/tmp/x")
    assert reused(dataset__digest="b" * 64)  # regenerated on another CPU: reused, and the report lists the bytes
    assert not reused(clip_norm=1.0) and not reused(precision="bf16") and not reused(online__steps=1000)
    assert not reused(eval__heldout_fraction=0.0) and not reused(cql__critic_lr=3e-4)
    # a run recorded before offrl had cql.observation_scaler ran with raw observations: "none", not "standard"
    plan["cql"] = {**plan["cql"], "observation_scaler": "none"}
    assert reused() and not reused(cql__observation_scaler="standard")
    saved_before = {**plan, "seed": 0, "cql": {"critic_lr": 1e-3}}
    (run / "config.yaml").write_text(yaml.safe_dump(saved_before))
    assert suite._same_config(job, run, plan)
    plan["cql"] = {**plan["cql"], "observation_scaler": "standard"}
    assert not suite._same_config(job, run, plan)
    plan["cql"] = {**plan["cql"], "observation_scaler": "none", "reward_scaler": "none", "reward_scale": 1.0,
                   "reward_bias": 0.0}  # and before it had reward scaling: rewards as stored
    assert suite._same_config(job, run, plan)
    plan["cql"] = {**plan["cql"], "reward_scale": 10.0}
    assert not suite._same_config(job, run, plan)


def test_peer_run_of_the_old_last_evaluation_is_not_reused(tmp_path: Path) -> None:
    """A d3rlpy run recorded before the peer ran eval.final_episodes (its last evaluation ran eval.episodes)
    is retrained when the plan's last evaluation runs more episodes, even though the config it was given
    (which had final_episodes) matches the plan."""
    import json

    suite = _suite()
    job = suite.Job("offrl/hopper/medium-v0", "cql", 0, peer=True)
    plan = {"offline_steps": 100, "batch_size": 256, "log_interval": 50, "dataset": {"id": "offrl/hopper/medium-v0"},
            "eval": {"interval": 50, "episodes": 10, "final_episodes": 20, "seed": 0}, "cql": {"critic_lr": 3e-4}}
    given = suite._peer_config_file(job, tmp_path)
    given.parent.mkdir(parents=True)
    given.write_text(json.dumps({**plan, "seed": 0, "config_hash": suite.config_hash(plan)}))
    run = job.run_dir(tmp_path)
    run.mkdir(parents=True)

    def record(ev: dict) -> bool:
        (run / "config.yaml").write_text(json.dumps({"mirrors_offrl_config": suite.config_hash(plan), "eval": ev}))
        return suite._same_config(job, run, plan)

    assert record({"interval": 50, "episodes": 10, "final_episodes": 20, "seed": 0})
    assert not record({"interval": 50, "episodes": 10, "seed": 0})  # the old protocol: 10 episodes last


def test_peer_mirrors_the_reward_scaling() -> None:
    """d3rlpy_peer.py gives d3rlpy the reward scaler offrl's settings name (d3rlpy's own classes), and stops with
    one line where d3rlpy has no single scaler for them (a fitted kind or a multiplier with a shift)."""
    python = os.environ.get("OFFRL_D3RLPY_PYTHON") or (sys.executable if importlib.util.find_spec("d3rlpy") else None)
    if not python or not Path(python).exists():
        pytest.skip("needs d3rlpy 2.x: set OFFRL_D3RLPY_PYTHON to a Python with it")
    import subprocess

    script = (
        "import sys, json; sys.path.insert(0, 'benchmarks'); import d3rlpy_peer as p\n"
        "cases = [('none', 1.0, 0.0), ('none', 10.0, 0.0), ('none', 1.0, -1.0), ('standard', 2.0, 0.0),\n"
        "         ('min_max', 1.0, 0.0), ('return_based', 1000.0, 0.0)]\n"
        "out = []\n"
        "for kind, scale, bias in cases:\n"
        "    s = p._reward_scaler({'reward_scaler': kind, 'reward_scale': scale, 'reward_bias': bias})\n"
        "    out.append(None if s is None else [type(s).__name__, getattr(s, 'multiplier', None),\n"
        "                                       getattr(s, 'shift', None)])\n"
        "print(json.dumps(out))\n"
        "p._reward_scaler({'reward_scaler': 'standard', 'reward_scale': 1.0, 'reward_bias': 1.0})\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([python, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    first = done.stdout.strip().splitlines()[0]
    assert json.loads(first) == [None, ["MultiplyRewardScaler", 10.0, None], ["ConstantShiftRewardScaler", 1.0, -1.0],
                                 ["StandardRewardScaler", 2.0, None], ["MinMaxRewardScaler", 1.0, None],
                                 ["ReturnBasedRewardScaler", 1000.0, None]]
    assert done.returncode == 1 and "reward_scaler=standard with reward_scale=1 and reward_bias=1 has no d3rlpy " \
                                   "equivalent" in done.stderr, done.stderr


def test_the_report_reads_offrl_minus_d3rlpy_when_one_algorithm_ran_beside_its_peer() -> None:
    suite = _suite()
    cql = [suite.Job("offrl/x/y-v0", "cql", 0), suite.Job("offrl/x/y-v0", "cql", 0, peer=True)]
    assert suite.peer_baseline(cql) == "d3rlpy-cql"
    assert suite.peer_baseline(cql[:1]) is None  # no peer: the report's own default
    two = [*(suite.Job("offrl/x/y-v0", a, 0, peer=p) for a in ("dqn", "discrete-cql") for p in (False, True))]
    assert suite.peer_baseline(two) is None  # two algorithms: no single peer to subtract
