"""The tidy CSV logger: one row per step, pandas-readable, resumable to an exact position."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from offrl.errors import UserError
from offrl.runs.metrics_log import EVAL_COLUMNS, TidyCSVLogger, check_logger_available, make_logger


def test_rows_merge_per_step_and_read_back_exactly(tmp_path):
    log = TidyCSVLogger("exp", tmp_path / "run")
    assert not (tmp_path / "run").exists(), "nothing may be written before the first row"
    log.log_row(100, "offline", {"loss_qvalue": torch.tensor(0.1234567890123), "alpha": 0.5})
    log.log_scalar("loss_actor", -1.0 / 3.0, step=100)  # same step: same row
    log.log_row(100, "offline", {"eval_return_mean": 12.5, "eval_normalized_score": 40.0})
    log.log_row(200, "offline", {"loss_qvalue": 0.2, "loss_cql": 3.0})  # a new column appears later
    log.log_row(200, "offline", {"eval_return_mean": 7.0, "eval_new": 1.5})  # merge + widen at once
    log.close()

    df = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(df.columns[:3]) == ["step", "phase", "wall_time"]
    assert set(EVAL_COLUMNS) <= set(df.columns)
    assert df["step"].tolist() == [100, 200]
    assert df["phase"].tolist() == ["offline", "offline"]
    assert df.loc[0, "loss_qvalue"] == torch.tensor(0.1234567890123).item()  # bit-exact float round trip
    assert df.loc[0, "loss_actor"] == -1.0 / 3.0
    assert df.loc[0, "eval_return_mean"] == 12.5
    assert df.loc[1, "eval_return_mean"] == 7.0 and df.loc[1, "eval_new"] == 1.5 and df.loc[1, "loss_qvalue"] == 0.2
    assert math.isnan(df.loc[0, "eval_new"])
    assert math.isnan(df.loc[0, "loss_cql"]) and df.loc[1, "loss_cql"] == 3.0
    assert (df["wall_time"] >= 0).all()


def test_state_dict_restores_position_and_truncates(tmp_path):
    log = TidyCSVLogger("exp", tmp_path)
    for step in (10, 20):
        log.log_row(step, "offline", {"loss": float(step)})
    log.log_row(30, "offline", {"loss": 30.0})
    state = log.state_dict()
    # After the checkpoint the run goes on, then dies without closing (SIGKILL).
    log.log_row(40, "offline", {"loss": 40.0, "late_col": 1.0})
    log.log_row(50, "offline", {"loss": 50.0})
    assert pd.read_csv(tmp_path / "metrics.csv")["step"].tolist() == [10, 20, 30, 40, 50]  # on disk at once

    resumed = TidyCSVLogger("exp", tmp_path)
    resumed.load_state_dict(state)
    assert pd.read_csv(tmp_path / "metrics.csv")["step"].tolist() == [10, 20, 30]
    resumed.log_row(30, "offline", {"eval_return_mean": 1.0})  # same step: merges into the last row
    resumed.log_row(40, "offline", {"loss": 40.0})
    resumed.close()
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert df["step"].tolist() == [10, 20, 30, 40]
    assert df.loc[2, "loss"] == 30.0 and df.loc[2, "eval_return_mean"] == 1.0
    assert "late_col" not in df.columns
    assert resumed.wall_time >= state["local"]["wall_time"]


def test_truncate_refuses_a_file_shorter_than_the_checkpoint(tmp_path):
    log = TidyCSVLogger("exp", tmp_path)
    log.log_row(1, "offline", {"loss": 1.0})
    log.log_row(2, "offline", {"loss": 2.0})
    state = log.state_dict()
    log.close()
    (tmp_path / "metrics.csv").write_text("step,phase,wall_time\n")
    with pytest.raises(UserError, match="metrics.csv"):
        TidyCSVLogger("exp", tmp_path).load_state_dict(state)


def test_missing_logger_packages_name_the_extra(tmp_path):
    check_logger_available("csv")
    import importlib.util

    for kind in ("tensorboard", "wandb"):
        if importlib.util.find_spec(kind) is None:
            with pytest.raises(UserError, match=rf"offrl\[{kind}\]"):
                make_logger(kind, tmp_path, "exp")
    with pytest.raises(UserError, match="unknown logger"):
        check_logger_available("mlflow")
