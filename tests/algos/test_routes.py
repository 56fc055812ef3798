"""Kernel routes are measured on the machine at first use, recorded per CPU, reused, and the first decision
recorded for a shape wins; a forced route overrides; measuring draws nothing from the caller's RNG."""

from __future__ import annotations

import json

import pytest
import torch

from offrl.algos import kernels, routes


@pytest.fixture(autouse=True)
def fresh_routes(monkeypatch, tmp_path):
    monkeypatch.setenv("OFFRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OFFRL_KERNEL_ROUTE", raising=False)
    monkeypatch.delenv("OFFRL_ONEDNN", raising=False)
    monkeypatch.setattr(routes, "_loaded_from", None)
    monkeypatch.setattr(routes, "_decided", {})
    monkeypatch.setattr(routes, "_busy_cores", lambda: 0.0)  # a quiet machine unless a test says otherwise


def test_first_use_measures_records_and_later_processes_reuse(monkeypatch):
    state = torch.get_rng_state()
    route = routes.route_for(64, 32, 16, True, kernels.onednn_linear)
    assert torch.equal(torch.get_rng_state(), state)  # deterministic inputs: the run's RNG streams untouched
    saved = json.loads(routes.route_file().read_text())
    key = f"64x32x16+relu@{torch.get_num_threads()}t"
    entry = saved["routes"][key]
    assert entry["route"] == route and all(entry[f"{r}_us"] > 0 for r in routes.ROUTES)
    assert saved["isa"] == routes_isa()
    fastest = min(("onednn", "onednn-mm"), key=lambda r: entry[f"{r}_us"])
    expected = fastest if entry[f"{fastest}_us"] < routes.MARGIN * entry["torch_us"] else "torch"
    assert route == expected

    # A new process (in-memory decisions forgotten) reads the file and measures nothing.
    monkeypatch.setattr(routes, "_loaded_from", None)
    monkeypatch.setattr(routes, "_decided", {})
    monkeypatch.setattr(routes, "measure", lambda *a: pytest.fail("measured a recorded shape again"))
    assert routes.route_for(64, 32, 16, True, kernels.onednn_linear) == route


def routes_isa() -> str:
    from offrl.hardware import cpu_isa

    return cpu_isa()


def test_the_first_recorded_decision_wins(monkeypatch):
    """Another process recorded the shape while this one measured: both use the recorded route."""
    key = f"64x32x16@{torch.get_num_threads()}t"

    def racing_measure(rows, out, inp, relu, onednn):
        routes.route_file().parent.mkdir(parents=True, exist_ok=True)
        routes.route_file().write_text(json.dumps({"routes": {key: {"route": "torch"}}}))
        return {"route": "onednn", "torch_us": 2.0, "onednn_us": 1.0}

    monkeypatch.setattr(routes, "measure", racing_measure)
    assert routes.route_for(64, 32, 16, False, kernels.onednn_linear) == "torch"
    assert json.loads(routes.route_file().read_text())["routes"][key] == {"route": "torch"}


def test_forced_route_and_tune_reset(monkeypatch):
    monkeypatch.setattr(routes, "measure", lambda *a: {"route": "onednn", "torch_us": 2.0, "onednn_us": 1.0})
    monkeypatch.setenv("OFFRL_KERNEL_ROUTE", "torch")
    assert routes.route_for(8, 8, 8, True, kernels.onednn_linear) == "torch" and not routes.route_file().exists()
    monkeypatch.setenv("OFFRL_KERNEL_ROUTE", "")
    monkeypatch.setenv("OFFRL_ONEDNN", "0")
    assert routes.route_for(8, 8, 8, True, kernels.onednn_linear) == "torch"
    monkeypatch.delenv("OFFRL_ONEDNN")
    assert routes.route_for(8, 8, 8, True, kernels.onednn_linear) == "onednn" and routes.route_file().exists()
    routes.reset()  # offrl bench --tune
    assert not routes.route_file().exists()
    monkeypatch.setattr(routes, "measure", lambda *a: {"route": "torch", "torch_us": 1.0, "onednn_us": 2.0})
    assert routes.route_for(8, 8, 8, True, kernels.onednn_linear) == "torch"


@pytest.mark.skipif(kernels._onednn() is None, reason="torch without oneDNN: one route only")
@pytest.mark.parametrize("recorded", ["torch", "onednn", "onednn-mm"])
def test_chain_takes_the_recorded_route(monkeypatch, recorded):
    """The fused losses' layer chain runs each layer on the route recorded for its shape."""
    threads = torch.get_num_threads()
    path = routes.route_file()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"routes": {f"10x6x5+relu@{threads}t": {"route": recorded}}}))
    calls = []
    real = kernels._OneDNNLinear.apply
    monkeypatch.setattr(kernels._OneDNNLinear, "apply", lambda *a: calls.append(a[-1]) or real(*a))
    w1, b1, w2, b2 = torch.randn(6, 5), torch.randn(6), torch.randn(1, 6), torch.randn(1)
    x = torch.randn(10, 5)
    out = kernels.chain([(w1, b1), torch.relu, (w2, b2)], x)
    assert torch.allclose(out, torch.relu(x @ w1.t() + b1) @ w2.t() + b2, rtol=1e-5, atol=1e-6)
    # the weight-gradient kernel follows the route: oneDNN's on transposed views, or torch's mm
    assert calls == {"torch": [], "onednn": [False], "onednn-mm": [True]}[recorded]


def test_a_decided_shape_costs_no_file_or_cpuinfo_access(monkeypatch, tmp_path):
    """Every layer call asks for its route: once decided, the answer comes from memory (reading
    /proc/cpuinfo and building the cache path per call cost 12 ms per DQN step), until OFFRL_CACHE changes."""
    real_route_file = routes.route_file
    route = routes.route_for(64, 32, 16, True, kernels.onednn_linear)
    monkeypatch.setattr(routes, "route_file", lambda: pytest.fail("looked up the route file again"))
    assert [routes.route_for(64, 32, 16, True, kernels.onednn_linear) for _ in range(3)] == [route] * 3

    # A new cache folder (as a test or a user's shell might set) is read afresh.
    calls = []
    monkeypatch.setattr(routes, "route_file", lambda: calls.append(1) or real_route_file())
    monkeypatch.setenv("OFFRL_CACHE", str(tmp_path / "other"))
    routes.route_for(64, 32, 16, True, kernels.onednn_linear)
    assert calls and (tmp_path / "other" / "kernels").is_dir()


def test_decisions_over_another_route_set_are_not_reused(monkeypatch):
    """A decisions file written before ``onednn-mm`` existed chose between two routes only: it lives under
    another name, so every shape is measured again over all three."""
    old = routes.route_file().with_name(routes.route_file().name.replace(f"-{routes.ROUTE_SET}.json", ".json"))
    assert old != routes.route_file()
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"routes": {f"8x8x8+relu@{torch.get_num_threads()}t": {"route": "onednn"}}}))
    measured = []
    monkeypatch.setattr(routes, "measure", lambda *a: measured.append(a[:4]) or
                        {"route": "onednn-mm", "torch_us": 3.0, "onednn_us": 2.0, "onednn-mm_us": 1.0})
    assert routes.route_for(8, 8, 8, True, kernels.onednn_linear) == "onednn-mm"
    assert measured == [(8, 8, 8, True)]


def test_measure_picks_the_fastest_onednn_route_only_with_a_margin(monkeypatch):
    timings = iter([])

    def fake_time(route, *a):
        return next(timings)[route]

    monkeypatch.setattr(routes, "_time_route", fake_time)
    for times, want in [
        ({"torch": 1.0, "onednn": 0.8, "onednn-mm": 0.9}, "onednn"),
        ({"torch": 1.0, "onednn": 0.8, "onednn-mm": 0.7}, "onednn-mm"),
        ({"torch": 1.0, "onednn": 0.99, "onednn-mm": 0.98}, "torch"),  # within the 3% margin: torch
    ]:
        timings = iter([times] * 3)
        entry = routes.measure(4, 4, 4, True, kernels.onednn_linear)
        assert entry["route"] == want
        assert entry["onednn-mm_us"] == round(times["onednn-mm"] * 1e6, 1)


def test_a_busy_machine_records_plain_torch_unmeasured(monkeypatch):
    import os

    monkeypatch.setattr(routes, "_busy_cores", lambda: float(os.cpu_count()))  # every core taken by other work
    monkeypatch.setattr(routes, "measure", lambda *a: pytest.fail("timed the routes on a busy machine"))
    assert routes.route_for(64, 32, 16, True, kernels.onednn_linear) == "torch"
    entry = json.loads(routes.route_file().read_text())["routes"][f"64x32x16+relu@{torch.get_num_threads()}t"]
    assert entry["measured"] is False and entry["busy_cores"] == float(os.cpu_count())
    # the decision stands for later processes (reruns and resumes take the same route) until --tune
    monkeypatch.setattr(routes, "_loaded_from", None)
    monkeypatch.setattr(routes, "_decided", {})
    monkeypatch.setattr(routes, "_busy_cores", lambda: 0.0)
    assert routes.route_for(64, 32, 16, True, kernels.onednn_linear) == "torch"
    routes.reset()
    monkeypatch.setattr(routes, "measure", lambda *a: {"route": "onednn-mm", "torch_us": 2.0, "onednn_us": 1.5,
                                                       "onednn-mm_us": 1.0})
    assert routes.route_for(64, 32, 16, True, kernels.onednn_linear) == "onednn-mm"


@pytest.mark.skipif(kernels._onednn() is None, reason="torch without oneDNN's fused linear")
@pytest.mark.parametrize("mm_weight_grad", [False, True])
def test_onednn_layer_on_a_strided_input(mm_weight_grad):
    """Observations sliced out of a packed batch row reach the first layer as a strided view: the layer
    computes the reference values and gradients on it, and keeps a contiguous copy for its backward (on a
    strided one oneDNN's weight gradient runs a kernel ~250x slower)."""
    gen = torch.Generator().manual_seed(0)
    packed = torch.randn(256, 32, generator=gen)
    x = packed[:, :11]
    assert not x.is_contiguous()
    w = torch.randn(64, 11, generator=gen).requires_grad_()
    b = torch.randn(64, generator=gen).requires_grad_()
    y = kernels.onednn_linear(x, w, b, True, mm_weight_grad)
    saved_x = y.grad_fn.saved_tensors[0]
    assert saved_x.is_contiguous() and torch.equal(saved_x, x)
    grad = torch.randn(y.shape, generator=gen)
    gw, gb = torch.autograd.grad(y, (w, b), grad)
    w_ref, b_ref = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    y_ref = torch.relu(x @ w_ref.t() + b_ref)
    gw_ref, gb_ref = torch.autograd.grad(y_ref, (w_ref, b_ref), grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gb, gb_ref, rtol=1e-5, atol=1e-4)
