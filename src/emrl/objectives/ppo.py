"""PPO losses (Schulman et al. 2017; spec §4): clipped surrogate with token- or
sequence-level ratios, (clipped) value loss, entropy, approximate KL.

PPO is emrl's policy-gradient contrast to the EM methods; the functions take the same
``[B, T]`` log-prob tensors as the M-step. For control (one action per sample) pass
``[N]`` tensors: each sample is then its own "token".
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from emrl.objectives._checks import (
    check_choice,
    check_chunk_size,
    check_mask,
    check_positive,
    check_same_shape,
    check_tensor,
    checks_enabled,
    masked_mean,
)

__all__ = [
    "PPOInfo",
    "ppo_clip_loss",
    "ValueInfo",
    "value_loss",
    "entropy_from_logits",
    "approx_kl",
]


class PPOInfo(NamedTuple):
    """Diagnostics of the clipped surrogate (detached 0-dim tensors, or all ``None`` when
    :func:`ppo_clip_loss` was called with ``diagnostics=False``).

    clip_fraction: fraction of valid ratios outside ``[1 − ε, 1 + ε]``.
    approx_kl: k3 estimate of ``KL(π_old ‖ π_new)`` per token (or per sequence at
    sequence level). approx_kl_k1: the spec §4 estimate ``E[ℓ_old − ℓ_new]``.
    ratio_mean, ratio_std: of the valid ratios.
    """

    clip_fraction: Tensor | None
    approx_kl: Tensor | None
    ratio_mean: Tensor | None
    ratio_std: Tensor | None
    approx_kl_k1: Tensor | None


_NO_PPO_INFO = PPOInfo(None, None, None, None, None)


def _logp_pair(logp_new: Tensor, logp_old: Tensor, mask: Tensor | None):
    check_tensor(logp_new, "logp_new", ndim=(1, 2), floating=True)
    check_tensor(logp_old, "logp_old", floating=True)
    check_same_shape(logp_new, "logp_new", logp_old, "logp_old")
    return check_mask(mask, "mask", logp_new, "logp_new")


def ppo_clip_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    clip_eps: float = 0.2,
    level: str = "token",
    max_log_ratio: float = 20.0,
    diagnostics: bool = True,
) -> tuple[Tensor, PPOInfo]:
    """Negative clipped surrogate ``−E[min(r A, clip(r, 1−ε, 1+ε) A)]`` (spec §4).

    * ``level="token"``: ``r_t = exp(ℓ_new,t − ℓ_old,t)`` per valid token, ``A`` is
      ``[B, T]`` or a per-sequence ``[B]`` broadcast over tokens; the mean is over all
      valid tokens.
    * ``level="sequence"`` (spec §4 "Sequence-Level PPO"):
      ``r_seq = exp(Σ_t m_t (ℓ_new,t − ℓ_old,t))``, ``A`` must be ``[B]``; the mean is
      over sequences with at least one valid token.

    Log-ratios are clamped to ``±max_log_ratio`` before ``exp`` so a far-off-policy
    sequence cannot overflow to inf/NaN (the gradient is zero beyond the clamp, where the
    clipped objective would be flat or exploding anyway).

    Args:
        logp_new: ``[B, T]`` (or ``[N]``) differentiable log-probs of the taken actions.
        logp_old: same shape, behaviour-policy log-probs (detached here).
        advantages: ``[B, T]`` or ``[B]`` (detached here).
        mask: same shape as ``logp_new`` or ``None``. clip_eps: ε > 0.
        diagnostics: compute the :class:`PPOInfo` statistics (default). With ``False``
            they are skipped (every field is ``None``): for training steps whose
            diagnostics are not read. The loss and its gradients are bit-for-bit the same.

    Returns:
        ``(loss scalar, PPOInfo)``.
    """
    m = _logp_pair(logp_new, logp_old, mask)
    check_choice(level, "level", ("token", "sequence"))
    eps = check_positive(clip_eps, "clip_eps")
    mlr = check_positive(max_log_ratio, "max_log_ratio")
    check_tensor(advantages, "advantages", floating=True)
    adv = advantages.detach().to(logp_new.dtype)
    log_ratio = logp_new - logp_old.detach()
    if m is not None:
        log_ratio = torch.where(m, log_ratio, torch.zeros_like(log_ratio))
    if level == "sequence":
        if logp_new.dim() != 2:
            raise ValueError(f"level='sequence' needs logp_new of shape [B, T], got {tuple(logp_new.shape)}")
        B = logp_new.shape[0]
        if tuple(adv.shape) != (B,):
            raise ValueError(f"advantages must have shape [B]={B} for level='sequence', got {tuple(adv.shape)}")
        log_ratio = log_ratio.sum(dim=1)
        valid = None if m is None else m.any(dim=1)
    else:
        if adv.shape != logp_new.shape:
            if logp_new.dim() == 2 and tuple(adv.shape) == (logp_new.shape[0],):
                adv = adv.unsqueeze(1).expand_as(logp_new)
            else:
                raise ValueError(
                    f"advantages must have shape {tuple(logp_new.shape)} or [B]={logp_new.shape[0]}, "
                    f"got {tuple(adv.shape)}"
                )
        valid = m
    log_ratio = log_ratio.clamp(-mlr, mlr)
    ratio = torch.exp(log_ratio)
    surr = torch.minimum(ratio * adv, ratio.clamp(1.0 - eps, 1.0 + eps) * adv)
    loss = -masked_mean(surr, valid)
    if not diagnostics:
        return loss, _NO_PPO_INFO
    return loss, _ppo_info(ratio, log_ratio, valid, eps)


def _ppo_info(ratio: Tensor, log_ratio: Tensor, valid: Tensor | None, eps: float) -> PPOInfo:
    with torch.no_grad():
        r = ratio.detach()
        lr = log_ratio.detach()
        clipped = ((r - 1.0).abs() > eps).to(r.dtype)
        vals = r if valid is None else r[valid]
        return PPOInfo(
            clip_fraction=masked_mean(clipped, valid),
            approx_kl=masked_mean(torch.expm1(lr) - lr, valid),
            ratio_mean=vals.mean() if vals.numel() else torch.zeros((), dtype=r.dtype),
            ratio_std=vals.std(correction=0) if vals.numel() else torch.zeros((), dtype=r.dtype),
            approx_kl_k1=masked_mean(-lr, valid),
        )


class ValueInfo(NamedTuple):
    """Diagnostics of the value loss (detached): clip_fraction (of ``V − V_old`` beyond
    the clip), explained_variance ``1 − Var[R − V] / Var[R]`` (0 when Var[R] = 0).
    Both are ``None`` when :func:`value_loss` was called with ``diagnostics=False``."""

    clip_fraction: Tensor | None
    explained_variance: Tensor | None


_NO_VALUE_INFO = ValueInfo(None, None)


def value_loss(
    values: Tensor,
    old_values: Tensor | None,
    returns: Tensor,
    clip: float | None = None,
    mask: Tensor | None = None,
    diagnostics: bool = True,
) -> tuple[Tensor, ValueInfo]:
    """Critic regression ``½ E[(V − R)²]`` (spec §4 ``L^VF``, spec §5 ``L_V`` with ½).

    With ``clip`` (PPO2-style): ``½ E[max((V − R)², (V_old + clip(V − V_old, ±c) − R)²)]``.

    Args:
        values: any shape, differentiable. returns: same shape (targets, detached).
        old_values: same shape, required when ``clip`` is set. mask: same shape or None.
        diagnostics: compute the :class:`ValueInfo` statistics (default; the explained
            variance costs a host sync). With ``False`` they are skipped (both fields
            ``None``); the loss and its gradients are bit-for-bit the same.

    Returns:
        ``(loss scalar, ValueInfo)``.
    """
    check_tensor(values, "values", floating=True)
    check_tensor(returns, "returns", floating=True)
    check_same_shape(values, "values", returns, "returns")
    m = check_mask(mask, "mask", values, "values")
    R = returns.detach()
    if clip is None and m is None and not diagnostics:
        if old_values is not None:
            check_tensor(old_values, "old_values", floating=True)
            check_same_shape(values, "values", old_values, "old_values")
        # ½ mean((V − R)²) as one fused op (one graph node instead of three)
        return 0.5 * F.mse_loss(values, R), _NO_VALUE_INFO
    err = (values - R) ** 2
    if clip is not None:
        c = check_positive(clip, "clip")
        if old_values is None:
            raise ValueError("old_values must be given when clip is set")
        check_tensor(old_values, "old_values", floating=True)
        check_same_shape(values, "values", old_values, "old_values")
        vo = old_values.detach()
        v_clipped = vo + (values - vo).clamp(-c, c)
        err = torch.maximum(err, (v_clipped - R) ** 2)
    elif old_values is not None:
        check_tensor(old_values, "old_values", floating=True)
        check_same_shape(values, "values", old_values, "old_values")
    loss = 0.5 * masked_mean(err, m)
    if not diagnostics:
        return loss, _NO_VALUE_INFO
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    if clip is not None:
        clip_frac = masked_mean(((values.detach() - vo).abs() > c).to(values.dtype), m)
    else:
        clip_frac = zero
    with torch.no_grad():
        v = values.detach()
        rv = R if m is None else R[m]
        res = (R - v) if m is None else (R - v)[m]
        var_r = rv.var(correction=0) if rv.numel() else zero
        ev = 1.0 - res.var(correction=0) / var_r if bool(var_r > 0) else zero
    return loss, ValueInfo(clip_fraction=clip_frac.detach(), explained_variance=ev)


def entropy_from_logits(
    logits: Tensor, mask: Tensor | None = None, chunk_size: int | None = None
) -> Tensor:
    """Entropy ``S = −Σ_a π(a) log π(a)`` per position from logits (spec §4).

    Args:
        logits: ``[..., V]``. mask: ``[...]`` or ``None`` (masked positions are 0).
        chunk_size: positions per chunk (flattened leading dims) or ``None``.

    Returns:
        ``[...]`` entropies (differentiable). Average with a mask yourself, e.g.
        ``entropy_from_logits(l, m).sum() / m.sum()``.
    """
    check_tensor(logits, "logits", floating=True, finite=False)
    if logits.dim() < 1:
        raise ValueError(f"logits must have shape [..., V], got {tuple(logits.shape)}")
    if checks_enabled() and not bool((logits < float("inf")).all()):
        raise ValueError("logits must not contain NaN or +inf (-inf is allowed)")
    m = check_mask(mask, "mask", logits[..., 0], "logits[..., 0]")
    cs = check_chunk_size(chunk_size)
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    step = flat.shape[0] if cs is None else cs
    parts = []
    for s in range(0, flat.shape[0], step):
        x = flat[s : s + step]
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        lp = torch.log_softmax(x, dim=-1)
        p = lp.exp()
        # p = 0 (logit -inf) contributes 0, also in the backward pass
        parts.append(-(p * torch.where(p > 0, lp, torch.zeros_like(lp))).sum(-1))
    ent = (parts[0] if len(parts) == 1 else torch.cat(parts)).reshape(logits.shape[:-1])
    if m is not None:
        ent = torch.where(m, ent, torch.zeros_like(ent))
    return ent


def approx_kl(
    logp_new: Tensor, logp_old: Tensor, mask: Tensor | None = None, estimator: str = "k3"
) -> Tensor:
    """Approximate ``KL(π_old ‖ π_new)`` from log-probs of actions sampled from π_old.

    ``estimator="k1"``: the spec §4 estimate ``E[ℓ_old − ℓ_new]``; ``"k3"``:
    ``E[(r − 1) − log r]`` with ``r = π_new/π_old`` (non-negative, lower variance).
    Mean over valid entries; detached 0-dim tensor.
    """
    m = _logp_pair(logp_new, logp_old, mask)
    check_choice(estimator, "estimator", ("k1", "k3"))
    with torch.no_grad():
        lr = logp_new - logp_old
        vals = -lr if estimator == "k1" else torch.expm1(lr) - lr
        return masked_mean(vals, m)
