"""offrl.trainers.optim: the direct fused-Adam step equals ``optimizer.step()`` bit for bit, and every case it
does not cover falls back to ``optimizer.step()`` (hooks, schedulers, first step, non-fused groups)."""

from __future__ import annotations

import copy

import pytest
import torch

from offrl.trainers.optim import fast_optimizer_step, fast_zero_grad


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _opt(net: torch.nn.Module, cls=torch.optim.Adam, two_groups: bool = False, **kw) -> torch.optim.Optimizer:
    ps = list(net.parameters())
    groups = [{"params": ps[:2], "lr": 1e-2}, {"params": ps[2:], "lr": 3e-3}] if two_groups else [{"params": ps}]
    return cls(groups, lr=1e-3, **kw)


def _train(net, opt, step, zero, n: int = 6, skip_grad_of_last: bool = False) -> None:
    g = torch.Generator().manual_seed(1)
    for i in range(n):
        zero()
        x = torch.randn(32, 4, generator=g)
        loss = net(x).pow(2).mean()
        loss.backward()
        if skip_grad_of_last and i % 2:
            list(net.parameters())[-1].grad = None  # a parameter without a gradient this step
        step()


def _same(a: torch.nn.Module, b: torch.nn.Module, oa, ob) -> None:
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for k in sa["state"]:
        for name in sa["state"][k]:
            assert torch.equal(sa["state"][k][name], sb["state"][k][name]), name


@pytest.mark.parametrize("kw", [
    dict(fused=True),
    dict(fused=True, amsgrad=True),
    dict(fused=True, weight_decay=0.1),
    dict(fused=True, maximize=True, betas=(0.8, 0.95), eps=1e-6),
])
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("two_groups", [False, True])
def test_direct_step_equals_optimizer_step(kw, cls, two_groups, monkeypatch):
    ref_net, fast_net = _net(0), _net(0)
    ref_opt, fast_opt = _opt(ref_net, cls, two_groups, **kw), _opt(fast_net, cls, two_groups, **kw)
    _train(ref_net, ref_opt, ref_opt.step, lambda: ref_opt.zero_grad(set_to_none=True), skip_grad_of_last=True)
    step = fast_optimizer_step(fast_opt)
    adam_step, used = torch.optim.Adam.step, []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a: (used.append(1), adam_step(self, *a))[1])
    _train(fast_net, fast_opt, step, fast_zero_grad(fast_opt), skip_grad_of_last=True)
    assert len(used) == 1  # only the first step (it creates the state) went through Adam.step
    _same(ref_net, fast_net, ref_opt, fast_opt)
    assert int(fast_opt.state_dict()["state"][0]["step"]) == 6  # the counters moved as Adam's do


def test_direct_step_after_load_state_dict_uses_the_loaded_state():
    """A resumed optimizer gets new state tensors: the direct step must read them, not stale ones."""
    ref_net, fast_net = _net(0), _net(0)
    ref_opt, fast_opt = _opt(ref_net, fused=True), _opt(fast_net, fused=True)
    step = fast_optimizer_step(fast_opt)
    _train(ref_net, ref_opt, ref_opt.step, lambda: ref_opt.zero_grad(set_to_none=True), n=3)
    _train(fast_net, fast_opt, step, fast_zero_grad(fast_opt), n=3)
    saved = copy.deepcopy((fast_net.state_dict(), fast_opt.state_dict()))  # state_dict holds live tensors
    _train(fast_net, fast_opt, step, fast_zero_grad(fast_opt), n=2)  # drift, then restore
    fast_net.load_state_dict(saved[0])
    fast_opt.load_state_dict(saved[1])
    _train(ref_net, ref_opt, ref_opt.step, lambda: ref_opt.zero_grad(set_to_none=True), n=3)
    _train(fast_net, fast_opt, step, fast_zero_grad(fast_opt), n=3)
    _same(ref_net, fast_net, ref_opt, fast_opt)


def test_hooks_schedulers_and_other_optimizers_keep_optimizer_step():
    net = _net(0)
    opt = _opt(net, fused=True)
    calls = []
    handle = opt.register_step_post_hook(lambda *a: calls.append(1))
    step = fast_optimizer_step(opt)
    _train(net, opt, step, fast_zero_grad(opt), n=3)
    assert len(calls) == 3  # the hook ran on every step: optimizer.step() was used
    handle.remove()
    _train(net, opt, step, fast_zero_grad(opt), n=2)
    assert len(calls) == 3

    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # wraps opt.step
    lr0 = opt.param_groups[0]["lr"]
    with _no_scheduler_warning():
        _train(net, opt, lambda: (step(), sched.step()), fast_zero_grad(opt), n=2)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 * 0.25)

    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    assert fast_optimizer_step(sgd) == sgd.step  # not Adam: its own step


class _no_scheduler_warning:
    """No "lr_scheduler.step() before optimizer.step()" warning: the scheduler saw the wrapped step run."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self._w = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        assert not [w for w in self._w if "lr_scheduler.step()" in str(w.message)]


def test_non_fused_group_falls_back_bit_identically():
    ref_net, fast_net = _net(0), _net(0)
    ref_opt, fast_opt = _opt(ref_net, foreach=True), _opt(fast_net, foreach=True)
    _train(ref_net, ref_opt, ref_opt.step, lambda: ref_opt.zero_grad(set_to_none=True))
    _train(fast_net, fast_opt, fast_optimizer_step(fast_opt), fast_zero_grad(fast_opt))
    _same(ref_net, fast_net, ref_opt, fast_opt)


def test_zero_grad_keeps_an_overridden_zero_grad():
    class Mine(torch.optim.Adam):
        def zero_grad(self, set_to_none: bool = True) -> None:
            self.zeroed = True
            super().zero_grad(set_to_none)

    net = _net(0)
    opt = Mine(net.parameters(), fused=True)
    net(torch.ones(1, 4)).sum().backward()
    fast_zero_grad(opt)()
    assert opt.zeroed and all(p.grad is None for p in net.parameters())
    assert fast_optimizer_step(opt) == opt.step  # a subclass: its own step
