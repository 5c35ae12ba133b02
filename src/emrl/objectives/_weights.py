"""Helpers shared by the sample-level E-steps (:mod:`~emrl.objectives.estep`,
:mod:`~emrl.objectives.awr_dar`, :mod:`~emrl.objectives.sft_targets`): working
precision, validity masks, the masked softmax and weight statistics."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from emrl.objectives._checks import check_mask, check_tensor


def wide(x: Tensor) -> Tensor:
    """``x`` in the E-step's working precision: float64, or float32 on devices without
    float64 (Apple MPS)."""
    return x.to(torch.float32 if x.device.type == "mps" else torch.float64)


def weight_stats(weights: Tensor) -> tuple[Tensor, Tensor]:
    """``(ess, entropy)`` of a normalised weight vector (zeros contribute nothing).

    ``ess = 1 / Σ w²`` (effective sample size), ``entropy = -Σ w log w`` (nats).
    """
    w = wide(weights.detach())
    ess = 1.0 / (w * w).sum().clamp_min(1e-300)
    pos = w > 0
    ent = -(torch.where(pos, w * torch.log(torch.where(pos, w, torch.ones_like(w))), 0.0)).sum()
    return ess, ent


def adv_mask(advantages: Tensor, mask: Tensor | None, name: str = "advantages"):
    check_tensor(advantages, name, ndim=1, floating=True)
    m = check_mask(mask, "mask", advantages, name)
    if m is None:
        m = torch.ones_like(advantages, dtype=torch.bool)
    n_valid = int(m.sum())
    if n_valid == 0:
        raise ValueError("mask must mark at least one sample as valid, got an all-false mask")
    return m, n_valid


def masked_softmax(logw: Tensor, mask: Tensor) -> Tensor:
    """Softmax of ``logw`` over ``mask`` (max-shifted); exactly 0 outside ``mask``."""
    neg_inf = torch.full_like(logw, -math.inf)
    z = torch.where(mask, logw, neg_inf)
    m = z.max()
    e = torch.where(mask, torch.exp(z - m), torch.zeros_like(z))
    return e / e.sum()
