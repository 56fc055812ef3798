"""The trainer's speed options: ``precision="bf16"`` (opt-in autocast) and ``cuda_graph=True`` (issue 6).

Without a CUDA device, ``cuda_graph=True`` runs the same step eagerly: a run must end bit-identical to a
run without it. With a device, the captured run must match the eager one within float tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers.engine import ListLogger, make_trainer, weights
from helpers.train import TINY_CQL, offrl_cli, pendulum_file

from offrl.errors import UserError

STEPS = 30


def _run(kind: str, data, **kwargs):
    log = ListLogger()
    trainer, parts = make_trainer(kind, data, offline_steps=STEPS, log_interval=10, logger=log, **kwargs)
    trainer.train()
    return trainer, weights(parts.loss_module), log.comparable()


@pytest.mark.parametrize("kind", ["cql", "dcql", "dqn"])
def test_cuda_graph_on_cpu_is_the_eager_step(kind, request):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device captures the graph: see test_cuda_graph_matches_eager_on_gpu")
    data = request.getfixturevalue("pendulum_medium" if kind == "cql" else "cartpole_medium")
    _, w_eager, rows_eager = _run(kind, data)
    trainer, w_graph, rows_graph = _run(kind, data, cuda_graph=True)
    assert trainer._graphed is not None  # the wrapper was built and used, capture skipped on CPU
    assert w_eager.keys() == w_graph.keys()
    for key, value in w_eager.items():
        assert torch.equal(value, w_graph[key]), key
    # CudaGraphModule hands the step a contiguous copy of the batch, so batch statistics (action_mean)
    # may be summed in another order: equal to float rounding. The update itself is bit-identical.
    assert [(s, p, sorted(m)) for s, p, m in rows_eager] == [(s, p, sorted(m)) for s, p, m in rows_graph]
    for (_, _, m1), (_, _, m2) in zip(rows_eager, rows_graph, strict=True):
        for key, value in m1.items():
            assert m2[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["cql", "dqn"])
def test_cuda_graph_matches_eager_on_gpu(kind, request):
    data = request.getfixturevalue("pendulum_medium" if kind == "cql" else "cartpole_medium")
    _, w_eager, _ = _run(kind, data, device="cuda")
    trainer, w_graph, rows = _run(kind, data, device="cuda", cuda_graph=True)
    assert trainer._graphed.counter >= trainer._graphed._warmup  # captured and replayed
    for key, value in w_eager.items():
        torch.testing.assert_close(w_graph[key], value, rtol=1e-4, atol=1e-5)
    assert all(math.isfinite(v) for row in rows for v in row[2].values() if isinstance(v, float))


@pytest.mark.parametrize("kind", ["cql", "dqn"])
def test_bf16_trains_and_differs_from_fp32(kind, request):
    data = request.getfixturevalue("pendulum_medium" if kind == "cql" else "cartpole_medium")
    _, w32, _ = _run(kind, data)
    trainer, w16, rows = _run(kind, data, precision="bf16")
    assert trainer.precision == "bf16"
    # parameters stay fp32, training moved them, and bf16 matmuls really ran (the numbers differ)
    assert all(v.dtype == w32[k].dtype for k, v in w16.items())
    assert any(not torch.equal(v, w32[k]) for k, v in w16.items() if v.is_floating_point())
    losses = [v for row in rows for k, v in row[2].items() if k.startswith("loss")]
    assert losses and all(math.isfinite(v) for v in losses)


def test_precision_must_be_known(request):
    data = request.getfixturevalue("cartpole_medium")
    with pytest.raises(UserError, match="precision"):
        make_trainer("dqn", data, offline_steps=5, precision="fp16")


def test_cli_rejects_unknown_precision_in_one_line(tmp_path):
    data = pendulum_file(tmp_path)
    out = tmp_path / "runs"
    proc = offrl_cli("train", "--dataset", str(data), "--algo", "cql", "--steps", "10", "--out", str(out),
                     *[a for item in (*TINY_CQL, "precision=fp16") for a in ("--set", item)], timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "precision" in lines[0] and "bf16" in lines[0], proc.stderr
    assert not out.exists() or not any(out.rglob("metrics.csv"))
