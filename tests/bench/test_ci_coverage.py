"""benchmarks/ci_coverage.py: the simulated coverage of intervals over seeds, checked where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.bench import benchmark_module


def test_student_t_holds_its_coverage_and_the_bootstrap_over_three_seeds_does_not() -> None:
    cov = benchmark_module("ci_coverage")
    draw, mean = cov.DISTRIBUTIONS["normal"]
    rng = np.random.default_rng(1)
    boot3, t3 = cov.coverage(3, draw, mean, trials=1500, resamples=400, rng=rng)
    assert t3 == pytest.approx(0.95, abs=0.025)  # exact for normal scores
    assert 0.65 < boot3 < 0.85  # the percentile bootstrap of 3 seeds: about 75%
    boot20, _ = cov.coverage(20, draw, mean, trials=600, resamples=400, rng=rng)
    assert boot20 > boot3 + 0.08  # it closes in on 95% as seeds grow


def test_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmark_module("ci_coverage").main(["--trials", "20", "--resamples", "50"]) == 0
    out = capsys.readouterr().out
    assert "| normal | percentile bootstrap |" in out and "| normal | Student-t |" in out
    assert out.count("%") >= 4 * 5
