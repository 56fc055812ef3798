"""Fault injection on run folders (docs/reliability.md): damaged files a run holds, leftovers of killed
writes, a loss that becomes NaN, signals at the end of a run, creation races. In-process through
``offrl.train`` (real files, real trainer, real signals sent to this process); the concurrent and
disk-full cases use real child processes in test_process_faults.py."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from helpers.train import TINY_CQL

import offrl
from offrl.errors import UserError
from offrl.runs.rundir import create_run_dir
from offrl.trainers.checkpoint import CHECKSUM_KEY

STEPS = 40
FAST = [*TINY_CQL, "save_trainer_interval=10", "eval.interval=0", "batch_size=16", "progress_bar=false"]


def _train(pendulum: str, out: Path, name: str = "r", steps: int = STEPS, extra: tuple[str, ...] = ()) -> Path:
    run = offrl.train(pendulum, "cql", dotlist=[*FAST, *extra], out=out, name=name, offline_steps=steps,
                      seed=3)
    return run.dir


def _resume(run: Path, **kwargs):
    return offrl.train(resume=run, **kwargs)


@pytest.fixture(scope="module")
def finished(pendulum, tmp_path_factory) -> Path:
    """One finished run of STEPS steps, copied by each test that damages it."""
    return _train(pendulum, tmp_path_factory.mktemp("runs"), steps=STEPS)


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "copy" / run.name
    shutil.copytree(run, dest)
    return dest


def _stopped_copy(finished: Path, tmp_path: Path) -> Path:
    """A copy of the run whose latest.pt is its step-20 checkpoint: resuming it trains 20 more steps."""
    run = _copy(finished, tmp_path)
    ckpt = run / "checkpoints"
    (ckpt / "latest.pt").write_bytes((ckpt / "step_20.pt").read_bytes())
    return run


@pytest.mark.parametrize("damage", ["truncated", "bitflip", "folder"])
def test_damaged_checkpoint_is_one_line_offering_an_intact_one(finished, tmp_path, damage):
    run = _copy(finished, tmp_path)
    latest = run / "checkpoints" / "latest.pt"
    data = latest.read_bytes()
    if damage == "truncated":
        latest.write_bytes(data[: len(data) // 2])
    elif damage == "bitflip":  # the zip's central directory at the end: where torch looks first
        latest.write_bytes(data[:-40] + bytes(b ^ 0xFF for b in data[-40:]))
    else:
        latest.unlink()
        latest.mkdir()
    with pytest.raises(UserError) as err:
        _resume(run)
    msg = str(err.value)
    assert str(latest) in msg and "step_40.pt" in msg and "weights_only" not in msg, msg


def _flip_tensor_bit(ckpt: Path) -> None:
    """Flip one bit in the middle of the largest tensor record of a torch.save archive (inside the bytes
    of a weight matrix, not the zip's structure)."""
    import struct
    import zipfile

    with zipfile.ZipFile(ckpt) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(ckpt.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[record.header_offset + 26 : record.header_offset + 30])
    data[record.header_offset + 30 + name_len + extra_len + record.file_size // 2] ^= 0x10
    ckpt.write_bytes(bytes(data))


def _load_policy(run: Path, tmp_path: Path):
    from offrl.runs.policy import load_policy

    return load_policy(run)


def _export(run: Path, tmp_path: Path):
    from offrl.runs.shipping import export_policy

    return export_policy(run, "torchscript", tmp_path / "policy.pt")


@pytest.mark.parametrize("reader", ["resume", "evaluate", "export"])
def test_bit_flip_inside_tensor_bytes_is_one_line(finished, tmp_path, reader):
    """Before: torch's zip reader does not check record CRCs: a flipped bit in a weight loaded silently and
    the run resumed (or was evaluated, exported) with the wrong weight, exit 0."""
    run = _copy(finished, tmp_path)
    ckpt = run / "checkpoints"
    for name in ("latest.pt", "step_40.pt"):  # the newest step_N.pt is damaged too: offer the one before
        _flip_tensor_bit(ckpt / name)
        torch.load(ckpt / name, weights_only=True)  # torch itself does not notice
    read = {"resume": lambda: _resume(run), "evaluate": lambda: _load_policy(run, tmp_path),
            "export": lambda: _export(run, tmp_path)}[reader]
    with pytest.raises(UserError) as err:
        read()
    msg = str(err.value)
    assert str(ckpt / "latest.pt") in msg and "CRC-32" in msg, msg
    assert str(ckpt / "step_30.pt") in msg and "weights_only" not in msg, msg
    assert not (tmp_path / "policy.pt").exists()


def test_bit_flip_through_the_cli_is_one_line(finished, tmp_path, offrl_cli, assert_user_error):
    run = _copy(finished, tmp_path)
    _flip_tensor_bit(run / "checkpoints" / "latest.pt")
    result = offrl_cli("eval", str(run), "--episodes", "1")
    assert_user_error(result, str(run / "checkpoints" / "latest.pt"), "CRC-32", "step_40.pt")


def test_bit_flip_in_a_memmap_checkpoint_is_refused(finished, tmp_path):
    from offrl.trainers.checkpoint import load_checkpoint, save_checkpoint

    state = torch.load(finished / "checkpoints" / "latest.pt", weights_only=True)
    ckpt = save_checkpoint(state, tmp_path / "checkpoints" / "latest", backend="memmap")
    assert load_checkpoint(ckpt)["step"] == STEPS
    tensor = max(ckpt.rglob("*.memmap"), key=lambda p: p.stat().st_size)
    data = bytearray(tensor.read_bytes())
    data[len(data) // 2] ^= 0x01
    tensor.write_bytes(bytes(data))
    with pytest.raises(UserError, match="CRC-32"):
        load_checkpoint(ckpt)


def test_checkpoint_without_a_checksum_still_resumes(finished, tmp_path):
    """Checkpoints of offrl versions before the checksum: read unchecked, the resume is exact."""
    run = _stopped_copy(finished, tmp_path)
    latest = run / "checkpoints" / "latest.pt"
    state = torch.load(latest, weights_only=True)
    state.pop(CHECKSUM_KEY, None)
    torch.save(state, latest)
    _resume(run)
    ours, theirs = (torch.load(r / "checkpoints" / "latest.pt", weights_only=True)["loss_module"]
                    for r in (run, finished))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_damaged_config_is_one_line(finished, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "config.yaml").write_text("algo: cql\ndataset: {id: [\n")
    with pytest.raises(UserError, match="config.yaml: not valid YAML"):
        _resume(run)


def test_damaged_summary_is_one_line_and_rewritten_on_resume(finished, tmp_path):
    run = _stopped_copy(finished, tmp_path)
    (run / "summary.json").write_text('{"status": "compl')
    with pytest.raises(UserError, match="summary.json: damaged summary"):
        offrl.Run.load(run).summary  # noqa: B018
    _resume(run, force=True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS


@pytest.mark.parametrize("edit", ["cut-number", "extra-cell", "edited-value"])
def test_torn_or_edited_metrics_are_refused_on_resume(finished, tmp_path, edit):
    """Before: a value cut mid-number (or a row with more cells than the header) was carried into the
    resumed run's metrics.csv and summary.json, exit 0."""
    run = _stopped_copy(finished, tmp_path)
    path = run / "metrics.csv"
    lines = path.read_text().splitlines()
    row = lines[2].split(",")  # the second data row (step 10): before the step-20 checkpoint
    col = lines[0].split(",").index("loss_qvalue")
    if edit == "cut-number":
        row[col] = row[col][:5]
    elif edit == "extra-cell":
        row.append("1.0")
    else:
        row[col] = "0.5"
    lines[2] = ",".join(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as err:
        _resume(run)
    assert str(path) in str(err.value) and "checkpoint" in str(err.value)


def test_intact_metrics_resume_bit_identical(finished, tmp_path):
    run = _stopped_copy(finished, tmp_path)
    _resume(run)
    drop = ("wall_time", "updates_per_s")
    cols = lambda p: [  # noqa: E731
        [c for i, c in enumerate(line.split(",")) if p.read_text().splitlines()[0].split(",")[i] not in drop]
        for line in p.read_text().splitlines()]
    assert cols(run / "metrics.csv") == cols(finished / "metrics.csv")


def test_leftover_temporaries_are_swept_on_resume(finished, tmp_path):
    run = _stopped_copy(finished, tmp_path)
    junk = [run / ".summary.json.abc123.tmp", run / "checkpoints" / ".latest.pt.tmp-4242-deadbeef"]
    for path in junk:
        path.write_bytes(b"half a file")
    (run / "checkpoints" / ".step_30.pt.tmp-4242-cafe").mkdir()  # a memmap checkpoint's temporary folder
    _resume(run)
    assert not [p for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.name.startswith(".")]


def test_nan_loss_stops_with_the_last_finite_checkpoint(pendulum, tmp_path):
    """Before: a loss that became NaN trained on to 'completed', exit 0. A learning rate of 1e12 is
    valid by the schema and diverges within a few steps."""
    with pytest.raises(UserError) as err:
        _train(pendulum, tmp_path, steps=200, extra=("cql.critic_lr=1e12", "cql.actor_lr=1e12", "log_interval=5"))
    msg = str(err.value)
    assert "became" in msg and ("nan" in msg or "inf" in msg), msg
    run = next((tmp_path).glob("*/cql/r"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged"
    latest = run / "checkpoints" / "latest.pt"
    if latest.exists():  # whatever was checkpointed holds finite weights, and summary.json agrees on its step
        state = torch.load(latest, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["loss_module"].values() if v.is_floating_point())
        assert summary["steps"] == state["step"]
    else:
        assert "no checkpoint" in msg and summary["steps"] == 0


def _signal_during_final_eval(signals: list[int]):
    """An evaluator hook: the run's final evaluation receives ``signals`` (real signals to this process)."""
    from offrl.runs import assemble

    build = assemble.build_components

    def patched(*args, **kwargs):
        parts = build(*args, **kwargs)
        trainer = parts.trainer
        evaluate = trainer.evaluator

        def evaluator(policy, step):
            if step == trainer.planned_steps():
                for sig in signals:
                    os.kill(os.getpid(), sig)
            return evaluate(policy, step)

        trainer.evaluator = evaluator
        return parts

    return patched


def test_sigterm_during_final_evaluation_completes_the_run(pendulum, tmp_path, monkeypatch):
    """Before: the run was recorded as 'stopped' (exit 130) although every step and the evaluation ran."""
    from offrl.runs import assemble

    monkeypatch.setattr(assemble, "build_components", _signal_during_final_eval([signal.SIGTERM]))
    run = _train(pendulum, tmp_path, steps=20, extra=("eval.interval=20", "eval.episodes=1"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 20 and summary["final"] is not None


def test_double_interrupt_summary_and_checkpoint_agree(pendulum, tmp_path, monkeypatch):
    from offrl.runs import assemble

    monkeypatch.setattr(assemble, "build_components", _signal_during_final_eval([signal.SIGINT, signal.SIGINT]))
    with pytest.raises(KeyboardInterrupt):
        _train(pendulum, tmp_path, steps=25, extra=("eval.interval=25", "eval.episodes=1"))
    run = next(tmp_path.glob("*/cql/r"))
    summary = json.loads((run / "summary.json").read_text())
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert summary["status"] == "stopped" and summary["steps"] == state["step"] == 20


def test_run_folder_creation_race_is_the_clean_error(tmp_path):
    path = tmp_path / "ds" / "cql" / "same"
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def create() -> None:
        barrier.wait()
        try:
            # a few MB per folder: each creation outlasts the interpreter's thread switch interval, so every
            # thread passes the "exists?" check before the first rename (the race, not a queue)
            create_run_dir(path, {"config.yaml": "algo: cql\n" + "#" * (4 << 20)})
            outcomes.append("created")
        except UserError as err:
            outcomes.append("exists" if "already exists" in str(err) else str(err))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created"] + ["exists"] * 7, outcomes
    assert not [p for p in path.parent.iterdir() if p.name != "same"]  # no temporary folder left
