"""Cheaper optimiser steps for small agents (same updates, fewer per-call overheads).

A CartPole-sized actor-critic spends most of its training time in per-operator and
per-call overheads, not arithmetic: a gradient step of two 64-64 MLPs is ~1 ms of
which the optimiser step and gradient clipping were a quarter. This module holds
the three pieces the control loop (:mod:`emrl.control.train`) uses to cut them,
each tested against the plain PyTorch calls (bit-for-bit for the per-parameter
clipping and :class:`AdamStep`; to float rounding for the flat layout, see
:class:`FlatParameters`):

* :class:`FlatParameters` — the agent's parameters as views of one contiguous tensor
  and their gradients as views of another, so Adam and the clipping scale run on one
  tensor instead of one per parameter;
* :func:`clip_grad_norm` — ``torch.nn.utils.clip_grad_norm_``'s formula without its
  Python layers;
* :class:`AdamStep` — ``opt.step()`` of a fused Adam without its Python layers.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torch.optim.adam import adam as _functional_adam

# AdamStep relies on torch internals; on a torch without them it always uses opt.step().
_FAST_ADAM_OK = hasattr(torch, "_fused_adam_") and "decoupled_weight_decay" in inspect.signature(
    _functional_adam
).parameters


class FlatParameters:
    """Lay ``params`` out as views of one contiguous tensor, their gradients likewise.

    After ``flat = FlatParameters(list(module.parameters()))`` every parameter ``p`` is
    a view of ``flat.param`` (an ``nn.Parameter`` holding all values, in order) and
    ``p.grad`` a view of ``flat.param.grad``. Autograd accumulates into an existing
    ``.grad`` in place, so after :meth:`zero_grad` and ``loss.backward()`` the flat
    gradient holds every parameter's gradient. An optimiser built on ``[flat.param]``
    then updates all parameters with one tensor operation per step, and its state is
    elementwise the state per-parameter Adam would keep (one shared step count). The
    values equal per-parameter fused Adam's up to float rounding: the fused kernel runs
    whole SIMD vectors and a scalar tail per tensor, which round differently, and the
    flat tensor puts other elements in the tail (about 1 ulp per step).

    The one difference from ``p.grad = None`` between steps: a parameter the loss does
    not reach gets a zero gradient instead of none. For plain Adam (no weight decay)
    a parameter that never gets a gradient stays unchanged either way; the control loss
    has the same structure at every step, so the updates are the same as per-parameter
    Adam's. ``supported(params)`` says whether the layout applies (one dtype and device,
    dense, at least one parameter).
    """

    def __init__(self, params: list[nn.Parameter]) -> None:
        if not self.supported(params):
            raise ValueError("FlatParameters needs dense parameters of one dtype and device")
        self.params = list(params)
        with torch.no_grad():
            data = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.param = nn.Parameter(data)
        self.param.grad = torch.zeros_like(data)
        self.grads: list[torch.Tensor] = []
        offset = 0
        for p in self.params:
            n = p.numel()
            p.data = self.param.data[offset:offset + n].view_as(p)
            p.grad = self.param.grad[offset:offset + n].view_as(p)
            self.grads.append(p.grad)
            offset += n

    @staticmethod
    def supported(params: list[nn.Parameter]) -> bool:
        if not params:
            return False
        p0 = params[0]
        return all(p.dtype == p0.dtype and p.device == p0.device and p.layout == torch.strided
                   and not torch.is_complex(p) for p in params)

    @property
    def grad(self) -> torch.Tensor:
        """The flat gradient (all parameters' gradients, in order)."""
        return self.param.grad  # type: ignore[return-value]

    def zero_grad(self) -> None:
        """Zero the flat gradient; re-attach any parameter whose ``.grad`` was replaced."""
        self.param.grad.zero_()  # type: ignore[union-attr]
        for p, g in zip(self.params, self.grads, strict=True):
            if p.grad is not g:
                p.grad = g


@torch.no_grad()
def clip_grad_norm(
    params: list[torch.Tensor], max_norm: float, flat_grad: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scale the gradients in place so their global L2 norm is at most ``max_norm``;
    return the norm before clipping (0-dim tensor).

    The formula of ``torch.nn.utils.clip_grad_norm_`` (coefficient
    ``min(1, max_norm / (norm + 1e-6))``) in a few tensor operations without its per-call
    Python layers: it runs once per gradient step of small agents. On CPU the scaling is
    one ``mul_`` per gradient (the same products as ``_foreach_mul_``, at a fraction of
    its cost there).

    ``flat_grad``: the one buffer all of ``params``' gradients are views of (see
    :class:`FlatParameters`): the norm is taken over it directly (the same quantity,
    summed in another order: equal to float rounding) and it is scaled with one ``mul_``.
    """
    if flat_grad is not None:
        total = torch.linalg.vector_norm(flat_grad)
        flat_grad.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return total
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    if total.device.type == "cpu":  # per-tensor mul_ (the same products): foreach is slower on CPU
        for g in grads:
            g.mul_(coef)
    else:
        torch._foreach_mul_(grads, coef)
    return total


class AdamStep:
    """``opt.step()`` of a ``torch.optim.Adam`` without its per-call Python layers.

    ``Adam.step`` rebuilds its per-group lists of parameters, gradients and state
    (``_init_group``) and runs profiler/grad-mode wrappers on every call: a noticeable
    share of a small agent's gradient step. This caches those lists after a regular
    ``opt.step()`` has created the state, then calls torch's functional
    ``torch.optim.adam.adam`` (the very function ``Adam.step`` calls, with the group's
    settings) directly — for a fused group on one device and dtype, the two kernels that
    function runs (``_foreach_add_`` of the steps, ``_fused_adam_``): the update is
    bit-for-bit the one of ``opt.step()``.

    It falls back to ``opt.step()`` (and rebuilds the cache) whenever that could differ:
    before the state exists, when a parameter has no gradient, after
    ``opt.load_state_dict`` (a new state dict) or a change of ``param_groups`` (another
    parameter list or length), and
    for AMSGrad, complex or differentiable settings, or grad scaling.
    """

    def __init__(self, opt: torch.optim.Adam) -> None:
        self.opt = opt
        self._cache: list[tuple[list, list, list, list, list, bool]] | None = None
        self._state_ref: Any = None

    def __call__(self) -> None:
        opt = self.opt
        cache = self._cache
        if cache is None or opt.state is not self._state_ref or len(cache) != len(opt.param_groups) or any(
            g["params"] is not c[4] or len(g["params"]) != len(c[0]) or any(p.grad is None for p in g["params"])
            for g, c in zip(opt.param_groups, cache, strict=True)
        ):
            opt.step()
            self._cache = self._build()
            return
        adam = _functional_adam
        with torch.no_grad():
            for g, (params, exp_avgs, exp_avg_sqs, steps, _, direct) in zip(opt.param_groups, cache, strict=True):
                beta1, beta2 = g["betas"]
                if direct:  # what the functional fused adam runs for one device and dtype
                    for t in steps:  # = torch._foreach_add_(steps, 1), cheaper on CPU
                        t.add_(1)
                    torch._fused_adam_(
                        params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps,
                        amsgrad=False, lr=g["lr"], beta1=beta1, beta2=beta2,
                        weight_decay=g["weight_decay"], eps=g["eps"], maximize=g["maximize"],
                        grad_scale=None, found_inf=None,
                    )
                    continue
                adam(
                    params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps,
                    foreach=g["foreach"], capturable=g["capturable"], differentiable=False,
                    fused=g["fused"], grad_scale=None, found_inf=None, has_complex=False,
                    decoupled_weight_decay=g["decoupled_weight_decay"], amsgrad=False,
                    beta1=beta1, beta2=beta2, lr=g["lr"], weight_decay=g["weight_decay"],
                    eps=g["eps"], maximize=g["maximize"],
                )

    def _build(self) -> list[tuple[list, list, list, list, list, bool]] | None:
        opt = self.opt
        if not _FAST_ADAM_OK:
            return None
        if getattr(opt, "grad_scale", None) is not None or getattr(opt, "found_inf", None) is not None:
            return None
        cache = []
        for g in opt.param_groups:
            if g.get("amsgrad") or g.get("differentiable") or "decoupled_weight_decay" not in g:
                return None
            params = list(g["params"])
            if any(p.grad is None or torch.is_complex(p) or p.grad.is_sparse
                   or "exp_avg" not in opt.state.get(p, {}) for p in params):
                return None
            st = [opt.state[p] for p in params]
            steps = [s["step"] for s in st]
            # the fused kernel called directly: one device and dtype (as torch groups them),
            # a float learning rate, plain Adam (not AdamW's decoupled decay)
            direct = (bool(params) and bool(g["fused"]) and not g["decoupled_weight_decay"] and not isinstance(g["lr"], torch.Tensor)
                      and len({(p.device, p.dtype) for p in params}) == 1
                      and all(t.device == params[0].device for t in steps))
            cache.append((params, [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st],
                          steps, g["params"], direct))
        self._state_ref = opt.state
        return cache


def make_adam(groups: list[dict[str, Any]], lr: float, eps: float) -> torch.optim.Adam:
    """Adam, fused where torch supports it (3x cheaper steps for small CPU agents)."""
    try:
        return torch.optim.Adam(groups, lr=lr, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - older torch / device
        return torch.optim.Adam(groups, lr=lr, eps=eps, foreach=True)
