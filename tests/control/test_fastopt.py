"""emrl.control.fastopt: the flat parameter/gradient layout gives the updates of
per-parameter Adam with torch's gradient clipping (the gradients and the clipping
norm bit-for-bit, the Adam step to float rounding)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from emrl.control.fastopt import AdamStep, FlatParameters, clip_grad_norm, make_adam


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 3))  # odd sizes: SIMD tails


def test_parameters_become_views_of_one_tensor_with_unchanged_values():
    net = _net()
    ref = copy.deepcopy(net)
    params = list(net.parameters())
    flat = FlatParameters(params)
    assert flat.param.numel() == sum(p.numel() for p in params)
    torch.testing.assert_close(flat.param.detach(), torch.cat([p.detach().reshape(-1) for p in ref.parameters()]),
                               rtol=0, atol=0)
    x = torch.randn(5, 4)
    assert torch.equal(net(x), ref(x))
    with torch.no_grad():  # writing the flat tensor changes the module
        flat.param.add_(1.0)
    assert torch.equal(params[0], next(iter(ref.parameters())) + 1.0)


def test_backward_fills_the_flat_gradient_with_each_parameter_gradient():
    net = _net()
    ref = copy.deepcopy(net)
    flat = FlatParameters(list(net.parameters()))
    x = torch.randn(16, 4)
    for _ in range(2):  # zero_grad between steps: no accumulation across steps
        flat.zero_grad()
        net(x).pow(2).sum().backward()
    ref.zero_grad(set_to_none=True)
    ref(x).pow(2).sum().backward()
    expected = torch.cat([p.grad.reshape(-1) for p in ref.parameters()])
    assert torch.equal(flat.grad, expected)
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_zero_grad_reattaches_a_replaced_gradient():
    net = _net()
    flat = FlatParameters(list(net.parameters()))
    first = next(iter(net.parameters()))
    first.grad = None  # e.g. someone called module.zero_grad()
    flat.zero_grad()
    net(torch.randn(3, 4)).sum().backward()
    assert first.grad is flat.grads[0]
    assert flat.grad[: first.numel()].abs().sum() > 0


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])  # clipping active / inactive
def test_flat_adam_and_clipping_equal_per_parameter_adam(max_norm):
    net, ref = _net(), _net()
    flat = FlatParameters(list(net.parameters()))
    opt = make_adam([{"params": [flat.param]}], lr=0.01, eps=1e-5)
    step = AdamStep(opt)
    ref_params = list(ref.parameters())
    ref_opt = torch.optim.Adam(ref_params, lr=0.01, eps=1e-5, fused=True)
    torch.manual_seed(1)
    for k in range(6):
        x = torch.randn(32, 4)
        lr = 0.01 * (1 - k / 10)  # annealed, as in the control loop
        opt.param_groups[0]["lr"] = ref_opt.param_groups[0]["lr"] = lr
        flat.zero_grad()
        net(x).tanh().sum().backward()
        n1 = clip_grad_norm(flat.params, max_norm, flat_grad=flat.grad)
        step()
        ref_opt.zero_grad(set_to_none=True)
        ref(x).tanh().sum().backward()
        n2 = torch.nn.utils.clip_grad_norm_(ref_params, max_norm)
        ref_opt.step()
        # the norm is summed in another order and the Adam kernel rounds the SIMD
        # tail of each tensor differently: equal to float rounding
        torch.testing.assert_close(n1, n2, rtol=1e-6, atol=0)
        for p, q in zip(net.parameters(), ref_params, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=f"step {k}")
    assert step._cache is not None  # the fast path ran


def test_load_state_dict_writes_into_the_flat_tensor():
    net, other = _net(0), _net(1)
    flat = FlatParameters(list(net.parameters()))
    net.load_state_dict(other.state_dict())
    expected = torch.cat([p.detach().reshape(-1) for p in other.parameters()])
    assert torch.equal(flat.param.detach(), expected)


def test_a_parameter_without_gradient_stays_unchanged():
    """Zero gradient instead of none: plain Adam leaves such a parameter as it is, as
    per-parameter Adam does by skipping it."""
    net = _net()
    unused = nn.Parameter(torch.randn(3))
    params = [*net.parameters(), unused]
    flat = FlatParameters(params)
    before = unused.detach().clone()
    opt = make_adam([{"params": [flat.param]}], lr=0.1, eps=1e-5)
    for _ in range(3):
        flat.zero_grad()
        net(torch.randn(4, 4)).sum().backward()
        opt.step()
    assert torch.equal(unused.detach(), before)
    assert not torch.equal(params[0].detach(), _net().state_dict()["0.weight"])


def test_supported_refuses_mixed_dtypes_and_empty_lists():
    a = nn.Parameter(torch.zeros(2))
    b = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    assert FlatParameters.supported([a])
    assert not FlatParameters.supported([a, b])
    assert not FlatParameters.supported([])
    with pytest.raises(ValueError, match="one dtype and device"):
        FlatParameters([a, b])
