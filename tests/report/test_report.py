"""build_report / write_run_report on real run directories, and the `offrl report` command."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.cli import OFFRL
from helpers.report import make_run

from offrl.errors import UserError
from offrl.evaluation.findings import mean_ci
from offrl.report import build_report, load_run, load_runs, write_run_report
from offrl.report.aggregate import aggregate_table, group_runs, online_switch, summary_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _offrl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([OFFRL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _last_scores(root: Path, dataset: str, algo: str) -> list[float]:
    """The last normalized score of each seed, read straight from the CSVs."""
    out = []
    for csv in sorted((root / dataset.replace("/", "__") / algo).glob("*/metrics.csv")):
        df = pd.read_csv(csv)
        out.append(float(df["eval_normalized_score"].dropna().iloc[-1]))
    return out


def test_report_aggregates_seeds_and_writes_a_self_contained_page(runs_root: Path, tmp_path: Path):
    rep = build_report([runs_root], tmp_path / "out")
    table = rep.summary.set_index(["dataset", "group"])
    row = table.loc[("offrl/cartpole/mixed-v0", "discrete-cql")]
    lasts = _last_scores(runs_root, "offrl/cartpole/mixed-v0", "discrete-cql")
    assert row["last_mean"] == pytest.approx(np.mean(lasts))
    assert (row["last_low"], row["last_high"]) == pytest.approx(mean_ci(lasts)[1:])  # Student-t over the seeds
    boot = build_report([runs_root], tmp_path / "out-boot", interval="bootstrap").summary.set_index(["dataset", "group"])
    low, high = boot.loc[("offrl/cartpole/mixed-v0", "discrete-cql"), ["last_low", "last_high"]]
    assert min(lasts) - 1e-9 <= low <= np.mean(lasts) <= high <= max(lasts) + 1e-9  # a bootstrap stays in range
    assert row["n_seeds"] == 3 and row["steps"] == 1000 and row["updates_per_s"] == pytest.approx(50.0)
    assert row["behaviour_normalized"] == pytest.approx(40.0)  # fixture: behaviour at 40% of the range
    # the run without summary.json counts, labelled, with what it logged (600 steps)
    dqn = table.loc[("offrl/cartpole/mixed-v0", "dqn")]
    assert dqn["seeds"] == "3 (1 incomplete)"
    runs = rep.runs.set_index(["group", "seed"])
    assert runs.loc[("dqn", 2), "status"] == "incomplete" and runs.loc[("dqn", 2), "steps"] == 600
    # files: PNGs beside the page, embedded in it; nothing fetched from elsewhere
    names = {p.name for p in rep.figures}
    assert {"scores.png", "losses.png", "alpha.png", "diagnostics.png"} <= names
    for p in rep.figures:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
    page = rep.html.read_text()
    srcs = re.findall(r"""src=['"]([^'"]+)""", page)
    assert len(srcs) == len(rep.figures) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in page and "https://" not in page
    assert "Student-t 95% CI of the mean" in page and "10,000 resamples" in page  # across datasets: bootstrap
    assert not list((tmp_path / "out").glob("*.tmp"))  # atomic writes left nothing behind


def test_aggregate_across_datasets_only_uses_normalized_scores(runs_root: Path):
    for seed in range(2):
        make_run(runs_root, dataset="other/raw-v0", seed=seed, refs=False, final_score=500.0)
    groups = group_runs(load_runs([runs_root]), None, [])
    raw = summary_table(groups).set_index("dataset").loc["other/raw-v0"]
    assert raw["unit"] == "eval_return_mean"  # labelled raw, not mixed into normalized numbers
    assert raw["last_mean"] > 400  # the raw return itself (fixture: about 500), not a 0-100 score
    cql = aggregate_table(groups).set_index("group").loc["cql"]
    assert cql["datasets"] == 1 and cql["runs"] == 3  # only the pendulum runs have references
    lasts = _last_scores(runs_root, "offrl/pendulum/medium-v0", "cql")
    assert cql["mean"] == pytest.approx(np.mean(lasts)) and cql["iqm"] == pytest.approx(np.mean(lasts))


def test_mixed_references_within_a_dataset_fall_back_to_raw_returns(tmp_path: Path):
    root = tmp_path / "runs"
    make_run(root, seed=0, refs=True)
    make_run(root, seed=1, refs=False)
    warnings: list[str] = []
    groups = group_runs(load_runs([root]), None, warnings)
    assert [g.unit.column for g in groups] == ["eval_return_mean"]
    assert "raw" in groups[0].unit.label
    assert any("1 of 2 runs have reference scores" in w for w in warnings)


def test_group_by_algo_dataset_and_config_key(tmp_path: Path):
    root = tmp_path / "runs"
    for seed in range(2):
        make_run(root, seed=seed, extra_config={"min_q_weight": 1.0})
        make_run(root, seed=seed + 10, extra_config={"min_q_weight": 10.0})
    runs = [load_run(p.parent) for p in sorted(root.rglob("metrics.csv"))]
    warnings: list[str] = []
    by_config = group_runs(runs, None, warnings)
    assert sorted(g.label for g in by_config) == ["cql (cql.min_q_weight=1.0)", "cql (cql.min_q_weight=10.0)"]
    assert [len(g.runs) for g in by_config] == [2, 2]
    assert [len(g.runs) for g in group_runs(runs, "algo", warnings)] == [4]
    assert [len(g.runs) for g in group_runs(runs, "dataset", warnings)] == [4]
    keyed = group_runs(runs, "cql.min_q_weight", warnings)
    assert sorted(g.label for g in keyed) == ["cql cql.min_q_weight=1.0", "cql cql.min_q_weight=10.0"]
    with pytest.raises(UserError, match="--group-by no.such"):
        group_runs(runs, "no.such", warnings)


def test_damaged_metrics_and_nan_are_reported_not_fatal(tmp_path: Path):
    root = tmp_path / "runs"
    good = make_run(root, seed=0)
    bad = make_run(root, seed=1, nan_loss_from=600)
    lines = (bad / "metrics.csv").read_text().splitlines()
    lines.insert(3, "garbage,with,too,many,fields" + ",x" * 40)
    lines[5] = lines[5].replace(lines[5].split(",")[2], "oops", 1)  # text in the wall_time column
    text = "\n".join(lines) + "\n" + lines[-1][: len(lines[-1]) // 2]  # torn last line (killed mid-write)
    (bad / "metrics.csv").write_text(text)
    (good / "summary.json").write_text("{not json")
    run = load_run(bad)
    assert any("damaged line" in w for w in run.warnings)
    assert any("non-numeric" in w for w in run.warnings)
    assert any("NaN losses" in w and "step 600" in w for w in run.warnings)
    assert run.metrics["eval_normalized_score"].notna().sum() == 5  # every evaluation row survived
    assert load_run(good).status == "incomplete" and any("not valid JSON" in w for w in load_run(good).warnings)
    result = _offrl("report", str(root), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warn_lines = [ln for ln in result.stderr.splitlines() if ln]
    assert warn_lines and all(ln.startswith("offrl: warning: ") for ln in warn_lines)
    assert (tmp_path / "out" / "index.html").is_file()


def test_online_phase_switch_is_found(tmp_path: Path):
    root = tmp_path / "runs"
    make_run(root, seed=0, online_from=700)
    make_run(root, seed=1, online_from=800)
    groups = group_runs([load_run(p.parent) for p in root.rglob("metrics.csv")], None, [])
    assert online_switch(groups[0]) == 700.0


def test_write_run_report_into_the_run_directory(tmp_path: Path):
    run = make_run(tmp_path / "runs", seed=4, status=None)  # written even for a run that has no summary yet
    html = write_run_report(run)
    assert html == run / "report.html" and html.is_file()
    assert (run / "scores.png").read_bytes()[:8] == PNG_MAGIC
    assert "seed 4" in html.read_text() and "incomplete" in html.read_text()


@pytest.mark.parametrize("setup", ["empty", "no_runs", "missing"])
def test_report_bad_input_is_one_line_exit_2(tmp_path: Path, setup: str):
    target = tmp_path / "in"
    if setup != "missing":
        target.mkdir()
    if setup == "no_runs":
        (target / "notes.txt").write_text("not a run")
        (target / "sub").mkdir()
    result = _offrl("report", str(target), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("offrl: error: ") and str(target) in lines[0]
    assert not (tmp_path / "out").exists()


def test_report_cli_writes_index_and_rejects_bad_smooth(runs_root: Path, tmp_path: Path):
    result = _offrl("report", str(runs_root), "--out", "rep", "--smooth", "2", "--group-by", "algo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "rep" / "index.html").is_file() and "index.html" in result.stdout
    bad = _offrl("report", str(runs_root), "--smooth", "0", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_a_config_key_missing_from_older_runs_does_not_split_a_group(tmp_path: Path) -> None:
    """Runs made before a config key existed are still seeds of the same experiment; a real difference
    in a shared key still splits."""
    make_run(tmp_path, seed=0)
    make_run(tmp_path, seed=1, extra_config={"new_key": 0.05})
    groups = group_runs(load_runs([tmp_path]), None, [])
    assert [len(g.runs) for g in groups] == [2] and groups[0].label == "cql"
    make_run(tmp_path, seed=2, extra_config={"lr": 1e-3})
    assert sorted(len(g.runs) for g in group_runs(load_runs([tmp_path]), None, [])) == [1, 2]


def test_a_run_still_going_counts_the_steps_it_has_logged(tmp_path: Path) -> None:
    # a resumed study's summary.json says where the run (re)started; its metrics say how far it has got
    run = make_run(tmp_path / "runs", steps=1000, stop_at=600, status="running")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "steps": 200}))
    assert load_run(run).steps == 600
    (run / "summary.json").write_text(json.dumps({**summary, "steps": 1000}))  # the summary ahead: it counts
    assert load_run(run).steps == 1000


def test_provenance_does_not_split_a_group(tmp_path: Path) -> None:
    # seeds trained by two offrl versions whose config.yaml words config_origins differently: one experiment
    runs = [make_run(tmp_path / "runs", seed=s) for s in range(3)]
    for run, words in zip(runs, ("defaults: d3rlpy 2.8", "defaults: d3rlpy 2.8, torch's default init", "x"), strict=True):
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["config_origins"] = [words]
        config["mirrors_offrl_config"] = words[-4:]
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    rep = build_report(runs, tmp_path / "out")
    assert len(rep.summary) == 1 and rep.summary.iloc[0]["n_seeds"] == 3 and rep.summary.iloc[0]["group"] == "cql"


def test_runs_of_one_seed_count_once_and_one_seed_has_no_interval(tmp_path: Path) -> None:
    # issue 18: two runs with seed 0 (the CLI and the example script) were "2 seeds, 100.5 [100.5, 100.5]"
    root = tmp_path / "runs"
    first = make_run(root, seed=0, final_score=70.0)
    twin = first.parent / "seed0-20260102-000000"  # the same seed again: a re-run, a script, a resumed twin
    shutil.copytree(first, twin)
    rep = build_report([root], tmp_path / "out")
    row = rep.summary.iloc[0]
    assert row["n_seeds"] == 1 and row["seeds"] == "1 (1 duplicate seed not counted)"
    assert np.isnan(row["last_low"]) and row["last_n"] == 1
    assert any("seed 0 has 2 runs; counted once" in w for w in rep.warnings)
    assert sorted(rep.runs["counted"]) == [False, True]
    page = rep.html.read_text()
    assert "(n/a, 1 seed)" in page and "duplicate seed, not counted" in page
    assert not re.search(r"\[(-?[\d,.]+), \1\]", page)  # never an interval [x, x]
    # seeds 0, 0, 1, 2: three seeds
    for seed in (1, 2):
        make_run(root, seed=seed, final_score=70.0 + seed)
    rep = build_report([root], tmp_path / "out2")
    assert rep.summary.iloc[0]["n_seeds"] == 3 and rep.summary.iloc[0]["last_n"] == 3


def test_report_carries_episodes_interval_recent_mean_and_the_critic_in_words(tmp_path: Path) -> None:
    # issue 18: "normalized 100.5" from 5 episodes hid its noise; the critic panel asked and did not answer
    root = tmp_path / "runs"
    run = make_run(root, seed=0, final_score=70.0, steps=1000, eval_every=100, episodes=20, v_s0_eval=-100.0)
    rep = build_report([run], tmp_path / "out")
    evals = pd.read_csv(run / "metrics.csv").dropna(subset=["eval_normalized_score"])
    row = rep.summary.iloc[0]
    assert row["last_episodes"] == 20
    assert row["last_episode_low"] == pytest.approx(evals["eval_normalized_ci_low"].iloc[-1])
    assert row["recent_mean"] == pytest.approx(evals["eval_normalized_score"].tail(5).mean())
    assert row["recent_evals"] == 5
    achieved = evals["diag_achieved_return_s0"].iloc[-1]  # -550: V(s0) -100 is far above it
    assert row["critic"] == f"over-estimates by {-100 - achieved:.1f} (V(s0) -100.0 vs achieved {achieved:.1f}, 82% above)"
    page = rep.html.read_text()
    assert "over 20 episodes" in page and "Mean of last 5 evaluations" in page and "over-estimates by 450.0" in page
    # a run from before the interval columns existed: no episode count is invented
    old = make_run(tmp_path / "old", seed=0)
    assert np.isnan(build_report([old], tmp_path / "out-old").summary.iloc[0]["last_episodes"])


def test_report_says_whether_the_curves_have_settled(tmp_path: Path) -> None:
    # issue 13: a final score from a curve still climbing is not the method's score; the report says which
    from offrl.evaluation.findings import curve_trend

    rising = [make_run(tmp_path / "rising", seed=s, final_score=60.0, steps=3000, eval_every=100) for s in range(3)]
    flat = [make_run(tmp_path / "flat", seed=s, final_score=60.0, steps=3000, eval_every=100, plateau_from=0.5)
            for s in range(3)]
    changes = []
    for run in rising:
        evals = pd.read_csv(run / "metrics.csv").dropna(subset=["eval_normalized_score"])
        changes.append(curve_trend(evals["step"], evals["eval_normalized_score"])[0])
    rep = build_report(rising, tmp_path / "out-rising")
    row = rep.summary.iloc[0]
    assert row["trend_mean"] == pytest.approx(np.mean(changes)) and row["trend_mean"] == pytest.approx(20.0, abs=3)
    assert row["trend_low"] > 5 and row["trend_n"] == 3 and row["trend_tolerance"] == 5.0
    assert row["trend_reading"] == "still rising"
    assert "Last third: trend [95% CI]" in rep.html.read_text() and "still rising" in rep.html.read_text()
    row = build_report(flat, tmp_path / "out-flat").summary.iloc[0]
    assert -5 <= row["trend_low"] <= row["trend_mean"] <= row["trend_high"] <= 5 and row["trend_reading"] == "settled"
    # one seed: the interval of its own least-squares line (10 evaluations in the last third)
    one = build_report(rising[:1], tmp_path / "out-one").summary.iloc[0]
    evals = pd.read_csv(rising[0] / "metrics.csv").dropna(subset=["eval_normalized_score"])
    assert (one["trend_mean"], one["trend_low"], one["trend_high"], one["trend_n"]) == pytest.approx(
        (*curve_trend(evals["step"], evals["eval_normalized_score"])[:3], 1))
    # raw returns (no references): the tolerance is 5% of the range the group's returns cover
    raw = [make_run(tmp_path / "raw", seed=s, refs=False, steps=3000, plateau_from=0.5) for s in range(2)]
    row = build_report(raw, tmp_path / "out-raw").summary.iloc[0]
    returns = pd.concat([pd.read_csv(r / "metrics.csv")["eval_return_mean"].dropna() for r in raw])
    assert row["unit"] == "eval_return_mean"
    assert row["trend_tolerance"] == pytest.approx(0.05 * (returns.max() - returns.min()))


def test_a_group_without_critic_diagnostics_says_so_beside_one_with_them(tmp_path: Path) -> None:
    # a peer's runs (d3rlpy logs no V(s0)) beside offrl's: pandas reads their missing finding as NaN
    with_critic = make_run(tmp_path / "runs", algo="cql", v_s0_eval=-100.0)
    without = make_run(tmp_path / "runs", algo="d3rlpy-cql")
    metrics = pd.read_csv(without / "metrics.csv")
    metrics.drop(columns=[c for c in metrics.columns if c.startswith("diag_")]).to_csv(without / "metrics.csv", index=False)
    rep = build_report([with_critic, without], tmp_path / "out")
    page = rep.html.read_text()
    assert "no critic diagnostic logged" in page and "over-estimates by" in page
    assert not re.search(r">\s*nan\s*<", page)


def test_critic_findings_in_words() -> None:
    from offrl.evaluation.findings import critic_finding, mean_ci

    # the CartPole: V(s0) about 10 against an achieved discounted return about 99
    assert critic_finding(10.0, 99.0) == "under-estimates by 89.0 (V(s0) 10.0 vs achieved 99.0, 90% below)"
    assert critic_finding(-150.0, -100.0) == "under-estimates by 50.0 (V(s0) -150.0 vs achieved -100.0, 50% below)"
    assert critic_finding(95.0, 99.0).startswith("consistent: V(s0) 95.0 vs achieved 99.0 (within 10%")
    assert critic_finding(None, 99.0) is None
    mean, low, high = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])  # t(0.975, 4) = 2.7764, s = 1.5811
    assert (mean, low, high) == pytest.approx((3.0, 3 - 2.7764 * 1.5811 / 5 ** 0.5, 3 + 2.7764 * 1.5811 / 5 ** 0.5), abs=1e-3)
    assert np.isnan(mean_ci([7.0])[1])


def test_experiments_are_compared_with_a_baseline_with_their_noise(tmp_path: Path) -> None:
    # what a change of setting did: seed mean minus the baseline's, each side's seeds resampled on their own
    from offrl.report.stats import difference_ci, welch_ci

    root = tmp_path / "runs"
    for seed in range(4):
        make_run(root, algo="cql", seed=seed, final_score=60.0 + seed)
        make_run(root, algo="d3rlpy-cql", seed=seed, final_score=80.0 + seed)
        make_run(root, algo="dqn-like", seed=seed, final_score=61.0 + seed)  # within the noise of cql
    rep = build_report([root], tmp_path / "out", group_by="algo")
    diffs = rep.differences.set_index("group")
    assert set(diffs["baseline"]) == {"cql"} and sorted(diffs.index) == ["d3rlpy-cql", "dqn-like"]  # first by label
    cql, d3 = _last_scores(root, "offrl/pendulum/medium-v0", "cql"), _last_scores(root, "offrl/pendulum/medium-v0",
                                                                                   "d3rlpy-cql")
    row = diffs.loc["d3rlpy-cql"]
    assert (row["last_diff"], row["last_low"], row["last_high"]) == pytest.approx(welch_ci(d3, cql))  # the default
    boot = build_report([root], tmp_path / "out-boot", group_by="algo", interval="bootstrap").differences
    assert tuple(boot.set_index("group").loc["d3rlpy-cql", ["last_diff", "last_low", "last_high"]]) == pytest.approx(
        difference_ci(d3, cql))
    assert row["last_diff"] == pytest.approx(np.mean(d3) - np.mean(cql)) and row["last_low"] > 0
    assert row["last_reading"] == "higher" and row["recent_reading"] == "higher" and row["n"] == row["n_baseline"] == 4
    assert diffs.loc["dqn-like", "last_reading"] == "no difference shown"
    page = rep.html.read_text()
    assert "Differences between experiments" in page and "minus baseline" in page and "Welch's 95% CI" in page
    # --baseline names the experiment: the others are compared with it
    rep = build_report([root], tmp_path / "out-b", group_by="algo", baseline="d3rlpy")
    assert set(rep.differences["baseline"]) == {"d3rlpy-cql"} and set(rep.differences["last_reading"]) == {"lower"}
    with pytest.raises(UserError, match=r"--baseline 'c': 2 experiments .* match it"):
        build_report([root], tmp_path / "out-c", group_by="algo", baseline="c")
    result = _offrl("report", str(root), "--group-by", "algo", "--baseline", "sac", "--out", str(tmp_path / "no"),
                    cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and not (tmp_path / "no").exists()
    assert result.stderr.strip() == ("offrl: error: --baseline 'sac': no experiment's label contains it; the labels "
                                     "are: cql; d3rlpy-cql; dqn-like")
    # one experiment: nothing to compare, no section
    one = build_report([root / "offrl__pendulum__medium-v0" / "cql"], tmp_path / "out-one")
    assert one.differences.empty and "Differences between experiments" not in one.html.read_text()
    # one seed on a side: the difference, no interval
    assert math.isnan(difference_ci([1.0], [2.0, 3.0])[1]) and difference_ci([1.0], [2.0, 3.0])[0] == -1.5
    # runs of another budget (a study still going): compared as they stand, never ranked
    shorter = tmp_path / "shorter"
    for seed in range(3):
        make_run(shorter, algo="cql", seed=seed, final_score=60.0)
        make_run(shorter, algo="long", seed=seed, final_score=90.0, steps=2000)
    row = build_report([shorter], tmp_path / "out-s", group_by="algo").differences.iloc[0]
    assert (row["group"], row["steps"], row["steps_baseline"]) == ("long", 2000, 1000) and row["last_low"] > 0
    assert row["last_reading"] == row["recent_reading"] == "different budgets: 2,000 vs 1,000 steps"
    # a side with no evaluation at all: nothing to compare, said so (not "one seed")
    silent = tmp_path / "silent"
    for seed in range(2):
        make_run(silent, algo="cql", seed=seed)
        quiet = make_run(silent, algo="quiet", seed=seed)
        metrics = pd.read_csv(quiet / "metrics.csv")
        metrics.drop(columns=[c for c in metrics.columns if c.startswith("eval_")]).to_csv(quiet / "metrics.csv",
                                                                                          index=False)
        summary = json.loads((quiet / "summary.json").read_text())
        (quiet / "summary.json").write_text(json.dumps({**summary, "final": None, "best": None}))
    quiet_rep = build_report([silent], tmp_path / "out-q", group_by="algo")
    row = quiet_rep.differences.iloc[0]
    assert row["group"] == "quiet" and row["last_reading"] == "no score to compare"
    assert "nan" not in quiet_rep.html.read_text().split("Differences between experiments")[1].split("</table>")[0]


def test_student_t_intervals_by_default_and_the_bootstrap_on_request(tmp_path: Path) -> None:
    # percentile bootstrap intervals over 3-5 seeds are too narrow (benchmarks/ci_coverage.py): t by default
    from offrl.evaluation.findings import mean_ci
    from offrl.report.stats import welch_ci

    root = tmp_path / "runs"
    for seed in range(4):
        make_run(root, algo="cql", seed=seed, final_score=60.0 + 3 * seed)
        make_run(root, algo="d3rlpy-cql", seed=seed, final_score=70.0 + 2 * seed)
    rep = build_report([root], tmp_path / "out", group_by="algo")
    cql, d3 = (_last_scores(root, "offrl/pendulum/medium-v0", a) for a in ("cql", "d3rlpy-cql"))
    row = rep.summary.set_index("group").loc["cql"]
    assert (row["last_mean"], row["last_low"], row["last_high"]) == pytest.approx(mean_ci(cql))
    diff = rep.differences.iloc[0]
    assert (diff["last_diff"], diff["last_low"], diff["last_high"]) == pytest.approx(welch_ci(d3, cql))
    page = rep.html.read_text()
    assert "Student-t 95% CI of the mean" in page and "Welch's 95% CI" in page
    boot = build_report([root], tmp_path / "out-b", group_by="algo", interval="bootstrap")
    assert boot.summary.set_index("group").loc["cql", "last_low"] > row["last_low"]
    assert "84% with 5" in boot.html.read_text()
    # the learning curves' band says which interval it draws, in the figure's title and its caption
    assert "band = 95% Student-t CI over seeds" in page and "band = 95% bootstrap CI over seeds" not in page
    assert "band = 95% bootstrap CI over seeds" in boot.html.read_text()
    assert "spans (mean over seeds, Student-t 95% CI;" in page
    assert "spans (mean over seeds, bootstrap 95% CI;" in boot.html.read_text()
    with pytest.raises(UserError, match="--interval z: choose one of bootstrap, t"):
        build_report([root], tmp_path / "out-z", interval="z")


def test_a_difference_between_curves_still_moving_is_one_at_this_budget(tmp_path: Path) -> None:
    # each difference says whether both experiments' curves settled over the last third (group_trend's reading)
    from offrl.report.compare import SETTLED, curves_reading

    root = tmp_path / "runs"
    for seed in range(4):
        make_run(root, algo="flat", seed=seed, final_score=60.0 + seed, plateau_from=0.3)
        make_run(root, algo="level", seed=seed, final_score=61.0 + seed, plateau_from=0.3)
        make_run(root, algo="rising", seed=seed, final_score=80.0 + seed)  # 0 to 80 in a line: +27 in its last third
    rep = build_report([root], tmp_path / "out", group_by="algo")
    diffs = rep.differences.set_index("group")
    assert diffs.loc["level", "curves"] == SETTLED == "settled"
    assert diffs.loc["rising", "curves"] == "not settled over the last third (rising still rising)"
    assert curves_reading({"a": "unclear", "b": "settled", "c": "still falling"}) == (
        "not settled over the last third (a unclear, c still falling)")
    page = rep.html.read_text().split("Differences between experiments")[1]
    assert "Curves over the last third" in page and "rising still rising" in page
    result = _offrl("report", str(root), "--group-by", "algo", "--out", str(tmp_path / "cli"), cwd=tmp_path)
    lines = {ln.split(" minus ")[0].split(": ")[1]: ln for ln in result.stdout.splitlines() if " minus " in ln}
    assert lines["rising"].endswith("; curves not settled over the last third (rising still rising), so a difference "
                                    "at this budget")
    assert lines["level"].endswith("(no difference shown)")  # settled on both sides: nothing added
