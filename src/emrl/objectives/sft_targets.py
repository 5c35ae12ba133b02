"""SFT targets as E-steps (spec §6 "E-step / M-step for SFT"): the δ target, label
smoothing, n-best weights and teacher distillation. Token-level targets are a
:class:`SoftTarget` that :func:`emrl.objectives.mstep.soft_target_nll` consumes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from emrl.objectives._checks import (
    check_mask,
    check_positive,
    check_tensor,
    check_unit_interval,
)
from emrl.objectives._weights import wide

__all__ = [
    "SoftTarget",
    "delta_target",
    "label_smoothing_target",
    "NBestInfo",
    "nbest_weights",
    "distillation_target",
]


class SoftTarget(NamedTuple):
    """A token-level E-step target for :func:`emrl.objectives.mstep.soft_target_nll`.

    Exactly one of ``labels`` / ``probs`` is set:

    * ``labels [B, T]`` (long): the δ target on demonstrated tokens, mixed with the
      uniform distribution over the vocabulary by ``label_smoothing`` ε:
      ``q = (1 − ε) δ_y + ε / V``.
    * ``probs [B, T, V]``: an explicit target distribution per position (e.g. a teacher).

    ``mask [B, T]`` bool marks positions that count (``labels == ignore_index`` are
    excluded); ``weights`` is ``[B]`` (per sequence, broadcast to tokens) or ``[B, T]``.
    Positions are already aligned: ``logits[:, t]`` predicts ``labels[:, t]``.
    """

    labels: Tensor | None
    probs: Tensor | None
    label_smoothing: float
    mask: Tensor
    weights: Tensor


def _labels_mask(labels: Tensor, mask: Tensor | None, ignore_index: int) -> Tensor:
    check_tensor(labels, "labels", ndim=2)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of token ids, got dtype {labels.dtype}")
    m = check_mask(mask, "mask", labels, "labels")
    valid = labels != ignore_index
    return valid if m is None else (valid & m)


def delta_target(
    labels: Tensor, mask: Tensor | None = None, ignore_index: int = -100
) -> SoftTarget:
    """SFT E-step ``q(τ|x) = δ(τ = y)`` (spec §6 eq. 2): all mass on the demonstration.

    ``labels [B, T]`` token ids aligned with the logits; positions with
    ``labels == ignore_index`` or ``mask == False`` do not count. Weights are all ones,
    so the M-step is plain cross-entropy (spec §6 eq. 3).
    """
    m = _labels_mask(labels, mask, ignore_index)
    w = torch.ones(labels.shape[0], device=labels.device)
    return SoftTarget(labels=labels, probs=None, label_smoothing=0.0, mask=m, weights=w)


def label_smoothing_target(
    labels: Tensor, smoothing: float, mask: Tensor | None = None, ignore_index: int = -100
) -> SoftTarget:
    """Label-smoothing E-step: ``q = (1 − ε) δ_y + ε · uniform(V)`` per token (spec §6).

    ``smoothing`` ε in [0, 1). Same convention as ``torch.nn.CrossEntropyLoss``'s
    ``label_smoothing``.
    """
    m = _labels_mask(labels, mask, ignore_index)
    eps = check_unit_interval(smoothing, "smoothing", high_open=True)
    w = torch.ones(labels.shape[0], device=labels.device)
    return SoftTarget(labels=labels, probs=None, label_smoothing=eps, mask=m, weights=w)


class NBestInfo(NamedTuple):
    """Diagnostics of n-best weights: ``selected [N]`` bool, ``ess [G]`` per group."""

    selected: Tensor
    ess: Tensor


def nbest_weights(
    scores: Tensor,
    group_size: int,
    top_n: int | None = None,
    temperature: float | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, NBestInfo]:
    """n-best E-step: ``q(τ|x) = Σ_j w_j δ(τ = y_j)`` over candidates of each prompt
    (spec §6 "label smoothing, n-best targets ...").

    ``scores [N]`` hold contiguous groups of ``group_size`` candidates per prompt. Within
    each group the ``top_n`` highest-scoring valid candidates are kept (all if ``None``;
    ties: lower index wins) and weighted uniformly (``temperature=None``) or by
    ``softmax(score / temperature)``. Each group's weights sum to 1 (0 for a group with
    no valid candidate); the M-step (``weighted_nll`` with ``reduction="sum"``) then
    gives each prompt equal total mass.

    Returns:
        ``(weights [N] detached, NBestInfo)``.
    """
    check_tensor(scores, "scores", ndim=1, floating=True)
    m = check_mask(mask, "mask", scores, "scores")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    n = scores.shape[0]
    if n % group_size:
        raise ValueError(f"scores length {n} must be a multiple of group_size {group_size}")
    if top_n is not None and (
        isinstance(top_n, bool) or not isinstance(top_n, int) or not 1 <= top_n <= group_size
    ):
        raise ValueError(f"top_n must be an int in [1, group_size={group_size}] or None, got {top_n!r}")
    tau = None if temperature is None else check_positive(temperature, "temperature")
    s = wide(scores.detach()).reshape(-1, group_size)
    valid = (torch.ones_like(s, dtype=torch.bool) if m is None else m.reshape(-1, group_size))
    key = torch.where(valid, s, torch.full_like(s, -math.inf))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(group_size, device=s.device).expand_as(order))
    keep = valid & (rank < (top_n if top_n is not None else group_size))
    logits = torch.zeros_like(s) if tau is None else s / tau
    logits = torch.where(keep, logits, torch.full_like(logits, -math.inf))
    mx = logits.max(dim=1, keepdim=True).values
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    e = torch.where(keep, torch.exp(logits - mx), torch.zeros_like(logits))
    tot = e.sum(dim=1, keepdim=True)
    w = torch.where(tot > 0, e / tot.clamp_min(1e-300), torch.zeros_like(e))
    ess = 1.0 / (w * w).sum(dim=1).clamp_min(1e-300)
    ess = torch.where(tot.squeeze(1) > 0, ess, torch.zeros_like(ess))
    return w.reshape(n).to(scores.dtype), NBestInfo(selected=keep.reshape(n), ess=ess)


def distillation_target(
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
) -> SoftTarget:
    """Teacher-distillation E-step: ``q(·|s_t) = softmax(teacher_logits_t / τ)``
    (spec §6). The M-step's cross-entropy to q is the forward ``KL(q ‖ π_θ)`` up to the
    constant ``H(q)``.

    Args:
        teacher_logits: ``[B, T, V]`` (detached here; ``-inf`` allowed, NaN/+inf not).
        temperature: τ > 0. mask: ``[B, T]`` or ``None``. weights: ``[B]``/``[B, T]`` or
            ``None`` (ones).
    """
    check_tensor(teacher_logits, "teacher_logits", ndim=3, floating=True, finite=False)
    if not bool((teacher_logits < math.inf).all()):
        raise ValueError("teacher_logits must not contain NaN or +inf (-inf is allowed)")
    tau = check_positive(temperature, "temperature")
    B, T, _ = teacher_logits.shape
    ref = teacher_logits[..., 0]
    m = check_mask(mask, "mask", ref, "teacher_logits[..., 0]")
    if m is None:
        m = torch.ones((B, T), dtype=torch.bool, device=teacher_logits.device)
    if weights is None:
        weights = torch.ones(B, device=teacher_logits.device)
    probs = torch.softmax(teacher_logits.detach().float() / tau, dim=-1)
    return SoftTarget(labels=None, probs=probs, label_smoothing=0.0, mask=m, weights=weights)
