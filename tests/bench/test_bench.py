"""`offrl bench`: runs end to end through the console script (tiny sizes; figures are never asserted)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from helpers.cli import OFFRL

from offrl import bench
from offrl.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RL_WARNINGS": "False"}
    return subprocess.run([OFFRL, "bench", *args], capture_output=True, text=True, env=env, timeout=300)


def test_console_script_json_cql():
    proc = _run("cql", "--updates", "2", "--batch", "16", "--threads", "1", "--transitions", "1000", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    env = report["environment"]
    assert env["threads"] == 1 and env["device"] == "cpu"
    assert {"torch", "torchrl", "tensordict", "offrl"} <= set(env["versions"])
    (result,) = report["results"]
    assert result["workload"] == "cql" and result["batch"] == 16 and result["updates"] == 2
    assert result["updates_per_s"] > 0


def test_cli_text_discrete(capsys):
    from offrl.cli import main

    code = main(["bench", "dqn", "--updates", "3", "--batch", "8", "--threads", "1", "--transitions", "1000",
                 "--warmup", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "updates/s" in out and "threads 1" in out and "dqn" in out


def test_user_error_is_one_line_exit_2(capsys):
    from offrl.cli import main

    assert main(["bench", "dqn", "--updates", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "--updates" in err and "Traceback" not in err


@pytest.mark.parametrize("workload", ["discrete-cql", "dqn"])
@pytest.mark.parametrize("reference", [False, True])
def test_bench_workload_in_process(workload, reference):
    result = bench.bench_workload(workload, updates=2, batch=8, reference=reference, n_transitions=2_000,
                                  warmup=1)
    assert (result["workload"], result["updates"], result["warmup"], result["batch"]) == (workload, 2, 1, 8)
    assert result["impl"] == ("torchrl plain loop (in-process)" if reference else "offrl trainer")
    seconds = result["seconds"]  # rounded to 0.1 ms: the rate of the timed updates lies within that rounding
    assert 2 / (seconds + 5e-5) - 0.01 <= result["updates_per_s"] <= 2 / max(seconds - 5e-5, 1e-9) + 0.01


def test_bf16_workload_runs():
    result = bench.bench_workload("cql", updates=1, batch=8, precision="bf16", n_transitions=2_000, warmup=1)
    assert result["precision"] == "bf16"


def test_unknown_workload_is_a_user_error():
    with pytest.raises(UserError, match="unknown workload"):
        bench.bench_workload("sac", updates=1)


@pytest.mark.parametrize("args,needle", [
    (["--device", "cuda:x"], "--device"),
    (["--cuda-graph", "--reference"], "--reference"),
])
def test_device_options_bad_input_is_one_line_exit_2(capsys, args, needle):
    from offrl.cli import main

    assert main(["bench", "dqn", "--updates", "1", *args]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and needle in err and "Traceback" not in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_is_a_user_error(capsys):
    from offrl.cli import main

    assert main(["bench", "cql", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and err.strip().count("\n") == 0


def test_cuda_graph_flag_runs_eagerly_on_cpu():
    result = bench.bench_workload("dqn", updates=3, batch=8, n_transitions=2_000, warmup=1, cuda_graph=True)
    assert result["updates_per_s"] > 0
    assert result["cuda_graph"] is False and result["device"] == "cpu"  # nothing captured without CUDA


@pytest.mark.parametrize("workload", ["cql", "dqn", "discrete-cql"])
def test_offrl_buffer_holds_the_peers_data(workload, tmp_path):
    """offrl's packed, memmapped buffer and the peers' LazyMemmapStorage buffer serve the same transitions."""
    ours, data = bench.synthetic_buffer(workload, 32, str(tmp_path / "a"), 500)
    (tmp_path / "b").mkdir()
    theirs, data_b = bench.synthetic_buffer(workload, 32, str(tmp_path / "b"), 500, offrl_buffer=False)
    assert (data == data_b).all()
    assert type(ours._storage).__name__ == "DatasetStorage" and type(theirs._storage).__name__ != "DatasetStorage"
    for _ in range(3):
        batch = ours.sample()
        index = batch["index"]
        assert batch.batch_size == (32,) and index.unique().numel() == 32  # without replacement
        expected = data[index]
        for key in expected.keys(True, True):
            assert torch.equal(batch[key], expected[key]), key


def test_bytes_moved_counts_what_an_op_reads_and_writes():
    from offrl.bench.updates import _bytes_moved

    aten = torch.ops.aten
    a, b = torch.ones(100, 10), torch.ones(100, 10)
    c = aten.add.Tensor(a, b)
    assert _bytes_moved(aten.add.Tensor, (a, b), c) == 3 * 4000  # two inputs read, one output written
    assert _bytes_moved(aten.t.default, (a,), aten.t.default(a)) == 0  # a view moves nothing
    assert _bytes_moved(aten.relu_.default, (a,), aten.relu_.default(a)) == 2 * 4000  # in place: read + write
    row = torch.ones(1, 10)
    assert _bytes_moved(aten.mul.Tensor, (a, row.expand(100, 10)), a * row) == 4000 + 40 + 4000  # broadcast once
    index = torch.tensor([3, 7])
    picked = aten.index_select.default(a, 0, index)
    assert _bytes_moved(aten.index_select.default, (a, 0, index), picked) == 80 + 16 + 80  # the rows it gathers
    zeros = aten.new_zeros.default(a, [5])
    assert _bytes_moved(aten.new_zeros.default, (a, [5]), zeros) == 20  # a factory reads nothing


def test_roofline_adds_the_other_ops_traffic_to_the_gemm_bound():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: a busy machine does not stall it on thread barriers
    try:
        result = bench.bench_workload("dqn", updates=3, batch=32, n_transitions=2_000, warmup=1, roofline=True)
    finally:
        torch.set_num_threads(threads)
    r = result["roofline"]
    assert r["bound_updates_per_s"] == pytest.approx(r["gemm_gflops"] / r["gflop_per_update"], rel=0.01)
    assert r["fraction_of_bound"] == pytest.approx(result["updates_per_s"] / r["bound_updates_per_s"], rel=0.02)
    # the other ops' bytes at the stream rate, added to the matmul time: a lower bound than the GEMM one
    seconds = 1 / r["bound_updates_per_s"] + r["other_mb_per_update"] * 1e6 / (r["stream_gb_per_s"] * 1e9)
    assert r["bound_with_traffic_updates_per_s"] == pytest.approx(1 / seconds, rel=0.05)
    assert r["bound_with_traffic_updates_per_s"] < r["bound_updates_per_s"]
    assert r["fraction_of_bound_with_traffic"] > r["fraction_of_bound"]


def test_data_workload_takes_transitions():
    """`offrl bench data --transitions N` measures a buffer of N transitions (it used the 1,000,000 default)."""
    proc = _run("data", "--transitions", "3000", "--batch", "16", "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout.strip().splitlines()[-1])["results"]
    assert result["workload"] == "data" and result["transitions"] == 3000
