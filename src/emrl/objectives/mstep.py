"""M-step: weighted maximum likelihood under a KL trust region.

* :func:`token_logprobs` — teacher-forced token log-probabilities, chunked over time.
* :func:`weighted_nll` — ``L_π = −Σ_i w_i Σ_t log π(y_t^i | ·)`` (spec §6 "Sequence-Level
  M-Step", "Token-Level Form"), per-sequence or per-token weights.
* :func:`soft_target_nll` — cross-entropy to a soft target (label smoothing,
  distillation; spec §6) built by the E-steps in :mod:`emrl.objectives.estep`.
* :func:`categorical_kl` (exact, chunked), :func:`kl_k1`, :func:`kl_k2`, :func:`kl_k3`
  (sampled estimators, Schulman 2020).
* :func:`alpha_trust_region` — the KL dual of spec §5 eq. (1).
* :func:`gaussian_kl_decoupled` — V-MPO's decoupled mean / covariance KL for diagonal
  Gaussians (Song et al. 2019, §4.2 / appendix).

Sequence-model tensors are batch-major ``[B, T]`` (``[B, T, V]`` for logits), with
``logits[:, t]`` already aligned to predict ``labels[:, t]`` (shift before calling).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.utils.checkpoint
from torch import Tensor

from emrl.objectives._checks import (
    check_choice,
    check_chunk_size,
    check_logits,
    check_mask,
    check_same_shape,
    check_tensor,
    check_unit_interval,
    chunked,
    upcast,
)
from emrl.objectives.sft_targets import SoftTarget

# the KL estimators and the trust-region dual, importable from here as before the split
from emrl.objectives.trust_region import (
    AlphaInfo,
    alpha_trust_region,
    categorical_kl,
    gaussian_kl_decoupled,
    kl_k1,
    kl_k2,
    kl_k3,
)

__all__ = [
    "token_logprobs",
    "NLLInfo",
    "NLL_REDUCTIONS",
    "weighted_nll",
    "soft_target_nll",
    "categorical_kl",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "AlphaInfo",
    "alpha_trust_region",
    "gaussian_kl_decoupled",
]

# ---------------------------------------------------------------------- log-probs / NLL


def token_logprobs(
    logits: Tensor,
    labels: Tensor,
    chunk_size: int | None = None,
    ignore_index: int | None = -100,
) -> Tensor:
    """``log π(labels[b, t] | ·) = log_softmax(logits[b, t])[labels[b, t]]``.

    Memory-aware: with ``chunk_size`` the time axis is processed ``chunk_size`` steps at
    a time, so no full ``[B, T, V]`` log-softmax is ever materialised (half-precision
    logits are upcast to float32 one chunk at a time; under autograd each chunk is
    checkpointed, so the backward keeps no per-chunk ``[chunk, V]`` temporaries either).
    Equal to the unchunked result, values and gradients.

    Args:
        logits: ``[B, T, V]`` (any ``[..., T, V]`` works; chunks along dim −2).
        labels: ``[B, T]`` integer ids in ``[0, V)``; positions equal to
            ``ignore_index`` get log-prob 0 (exclude them with a mask downstream).
        chunk_size: time steps per chunk, or ``None`` for one pass.

    Returns:
        ``[B, T]`` float32 (or logits' dtype if wider), differentiable w.r.t. logits.
    """
    check_logits(logits)
    check_tensor(labels, "labels", finite=False)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of token ids, got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"labels must have shape {tuple(logits.shape[:-1])} (logits without the vocab dim), "
            f"got {tuple(labels.shape)}"
        )
    cs = check_chunk_size(chunk_size)
    V = logits.shape[-1]
    ignored = (labels == ignore_index) if ignore_index is not None else torch.zeros_like(labels, dtype=torch.bool)
    real = labels[~ignored]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= V):
        raise ValueError(
            f"labels must be token ids in [0, {V}) or ignore_index={ignore_index}, "
            f"got values in [{int(real.min())}, {int(real.max())}]"
        )
    safe = torch.where(ignored, torch.zeros_like(labels), labels)
    if logits.dim() == 1:
        return _logp_block(logits, safe, ignored)
    T = logits.shape[-2]
    step = T if cs is None else cs
    starts = range(0, T, step)
    parts = [
        chunked(
            _logp_block,
            len(starts),
            logits[..., s : s + step, :],
            safe[..., s : s + step],
            ignored[..., s : s + step],
        )
        for s in starts
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def _logp_block(logits: Tensor, labels: Tensor, ignored: Tensor) -> Tensor:
    x = upcast(logits)
    picked = x.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    lp = picked - torch.logsumexp(x, dim=-1)
    return torch.where(ignored, torch.zeros_like(lp), lp)


class NLLInfo(NamedTuple):
    """Diagnostics of a weighted NLL (all detached).

    nll_per_seq: ``[B]`` unweighted ``−Σ_t log π`` over valid tokens. num_tokens: valid
    token count. weight_sum: ``Σ`` of the per-token weights over valid tokens (per-seq
    weights counted once per sequence with a valid token). mean_token_logp: mean log-prob
    of valid tokens. All ``None`` when :func:`weighted_nll` was called with
    ``diagnostics=False``.
    """

    nll_per_seq: Tensor | None
    num_tokens: Tensor | None
    weight_sum: Tensor | None
    mean_token_logp: Tensor | None


_NO_NLL_INFO = NLLInfo(None, None, None, None)


NLL_REDUCTIONS = ("sum", "token_mean", "seq_mean", "weighted_mean")


def weighted_nll(
    token_logp: Tensor,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
    reduction: str = "sum",
    diagnostics: bool = True,
) -> tuple[Tensor, NLLInfo]:
    """Weighted negative log-likelihood, the M-step of every E-step (spec §6).

    Let ``m`` be the token mask, ``w_it`` the weight of token ``t`` of sequence ``i``
    (``w_i`` broadcast over tokens when ``weights`` is ``[B]``; all ones if ``None``):

    * ``"sum"`` — spec §6: ``L = −Σ_i Σ_t w_it m_it log π_it``. With normalised E-step
      weights (Σ w_i = 1) this is the expected sequence NLL under the target.
    * ``"token_mean"`` — the sum divided by the number of valid tokens ``Σ m`` (plain
      SFT cross-entropy when weights are ones).
    * ``"seq_mean"`` — length-normalised: ``−Σ_i w_i (Σ_t m_it log π_it / Σ_t m_it)``
      (for per-token weights, ``w_it`` inside the inner sum); sequences without valid
      tokens contribute 0.
    * ``"weighted_mean"`` — the sum divided by the total weight ``Σ_it w_it m_it``.

    Args:
        token_logp: ``[B, T]`` log-probs (differentiable), finite; or ``[N]`` (one action
            per sample, e.g. control), treated as ``[N, 1]`` with ``mask``/``weights`` ``[N]``.
        mask: ``[B, T]`` or ``None``. weights: ``[B]``, ``[B, T]`` or ``None``; finite,
            detached by the caller if they are a target (they are used as given).
        diagnostics: compute the :class:`NLLInfo` statistics (default); with ``False``
            every field is ``None`` and the loss is bit-for-bit the same.

    Returns:
        ``(loss scalar, NLLInfo)``.
    """
    check_tensor(token_logp, "token_logp", ndim=(1, 2), floating=True)
    if token_logp.dim() == 1:  # one action per sample (control): [N] -> [N, 1]
        token_logp = token_logp.unsqueeze(1)
        if isinstance(mask, Tensor):
            mask = mask.unsqueeze(1) if mask.dim() == 1 else mask
        if isinstance(weights, Tensor) and weights.dim() == 2:
            raise ValueError(f"weights must have shape [N] for 1-D token_logp, got {tuple(weights.shape)}")
    m = check_mask(mask, "mask", token_logp, "token_logp")
    check_choice(reduction, "reduction", NLL_REDUCTIONS)
    B = token_logp.shape[0]
    if weights is None:
        w = torch.ones_like(token_logp)
    else:
        check_tensor(weights, "weights", ndim=(1, 2), floating=True)
        if weights.dim() == 1:
            if weights.shape[0] != B:
                raise ValueError(f"weights must have shape [B]={B} or [B, T], got {tuple(weights.shape)}")
            w = weights.to(token_logp.dtype).unsqueeze(1).expand_as(token_logp)
        else:
            check_same_shape(token_logp, "token_logp", weights, "weights")
            w = weights.to(token_logp.dtype)
    mf = torch.ones_like(token_logp) if m is None else m.to(token_logp.dtype)
    # torch.where keeps a -inf at a masked position from leaking 0 * inf = NaN
    lp = token_logp if m is None else torch.where(m, token_logp, torch.zeros_like(token_logp))
    contrib = w * lp if m is None else w * mf * lp  # (× ones is exact: skipped)
    total = -contrib.sum()
    n_tok = mf.sum()
    if reduction == "sum":
        loss = total
    elif reduction == "token_mean":
        loss = total / n_tok.clamp_min(1)
    elif reduction == "seq_mean":
        lens = mf.sum(dim=1)
        loss = -(contrib.sum(dim=1) / lens.clamp_min(1)).sum()
    else:
        wsum = (w * mf).sum()
        if not bool(wsum.detach() > 0):
            raise ValueError("weights must have a positive sum over valid tokens for reduction='weighted_mean'")
        loss = total / wsum
    if not diagnostics:
        return loss, _NO_NLL_INFO
    with torch.no_grad():
        info = NLLInfo(
            nll_per_seq=-(mf * lp).sum(dim=1),
            num_tokens=n_tok,
            weight_sum=(w * mf).sum(),
            mean_token_logp=(mf * lp).sum() / n_tok.clamp_min(1),
        )
    return loss, info


def soft_target_nll(
    logits: Tensor,
    target: Tensor | SoftTarget,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "token_mean",
    chunk_size: int | None = None,
    ignore_index: int = -100,
) -> tuple[Tensor, NLLInfo]:
    """Cross-entropy to a soft per-token target, weighted as in :func:`weighted_nll`.

    The per-token cross-entropy ``H(q_t, π_t) = −Σ_v q_t(v) log π_t(v)`` replaces
    ``−log π(y_t)``; it equals the forward ``KL(q_t ‖ π_t)`` plus the constant
    ``H(q_t)``, so minimising it fits the E-step target (spec §6: label smoothing,
    distillation).

    ``target`` is one of:

    * an integer ``labels [B, T]`` tensor, mixed with uniform by ``label_smoothing`` ε:
      ``q = (1 − ε) δ_y + ε / V`` (as ``torch.nn.CrossEntropyLoss``);
    * a float ``probs [B, T, V]`` tensor (rows summing to 1);
    * a :class:`~emrl.objectives.estep.SoftTarget` (its ``mask``, ``weights`` and
      ``label_smoothing`` are used where the arguments are left at their defaults;
      an explicit ``mask`` is combined with it).

    ``info.nll_per_seq`` reports the per-sequence summed cross-entropy.
    """
    check_logits(logits)
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape [B, T, V], got {tuple(logits.shape)}")
    B, T, V = logits.shape
    if isinstance(target, SoftTarget):
        labels, probs = target.labels, target.probs
        tmask = target.mask
        m0 = check_mask(mask, "mask", tmask, "target.mask")
        mask = tmask if m0 is None else (tmask & m0)
        if weights is None:
            weights = target.weights
        if label_smoothing == 0.0:
            label_smoothing = target.label_smoothing
    elif isinstance(target, Tensor):
        if target.is_floating_point():
            labels, probs = None, target
        else:
            labels, probs = target, None
    else:
        raise ValueError(f"target must be a labels tensor, a probs tensor or a SoftTarget, got {type(target).__name__}")
    eps = check_unit_interval(label_smoothing, "label_smoothing", high_open=True)
    cs = check_chunk_size(chunk_size)
    if labels is not None:
        if tuple(labels.shape) != (B, T):
            raise ValueError(f"labels must have shape {(B, T)}, got {tuple(labels.shape)}")
        ignored = labels == ignore_index
        m = check_mask(mask, "mask", labels, "labels")
        m = ~ignored if m is None else (m & ~ignored)
        safe = torch.where(ignored, torch.zeros_like(labels), labels)
        real = labels[~ignored]
        if real.numel() and (int(real.min()) < 0 or int(real.max()) >= V):
            raise ValueError(f"labels must be token ids in [0, {V}) or ignore_index, got values in "
                             f"[{int(real.min())}, {int(real.max())}]")
    else:
        check_tensor(probs, "target probs", shape=(B, T, V), floating=True)
        if bool((probs < 0).any()):
            raise ValueError("target probs must be non-negative")
        m = check_mask(mask, "mask", logits[..., 0], "logits[..., 0]")
    step = T if cs is None else cs
    starts = range(0, T, step)

    def block(lg: Tensor, tgt: Tensor) -> Tensor:
        lsm = torch.log_softmax(upcast(lg), dim=-1)
        if labels is not None:
            picked = lsm.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            return (1.0 - eps) * picked + (eps / V) * lsm.sum(dim=-1) if eps > 0 else picked
        q = tgt.to(lsm.dtype)
        # 0 * (-inf) must count as 0 (forward and backward): only q > 0 contributes
        return (q * torch.where(q > 0, lsm, torch.zeros_like(lsm))).sum(dim=-1)

    tgt_all = safe if labels is not None else probs
    parts = [
        chunked(block, len(starts), logits[:, s : s + step], tgt_all[:, s : s + step])
        for s in starts
    ]
    neg_ce = torch.cat(parts, dim=1)
    if m is not None:
        neg_ce = torch.where(m, neg_ce, torch.zeros_like(neg_ce))
    if not bool(torch.isfinite(neg_ce).all()):
        raise ValueError("soft_target_nll: the target puts mass on a token whose logit is -inf")
    return weighted_nll(neg_ce, m, weights, reduction)
