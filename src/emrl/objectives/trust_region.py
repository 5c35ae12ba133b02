"""The trust region of the M-step: exact and sampled KL estimators and the KL dual α.

* :func:`categorical_kl` (exact, chunked), :func:`kl_k1`, :func:`kl_k2`, :func:`kl_k3`
  (sampled estimators, Schulman 2020).
* :func:`alpha_trust_region` — the KL dual of spec §5 eq. (1).
* :func:`gaussian_kl_decoupled` — V-MPO's decoupled mean / covariance KL for diagonal
  Gaussians (Song et al. 2019, §4.2 / appendix).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from emrl.objectives._checks import (
    check_choice,
    check_chunk_size,
    check_logits,
    check_mask,
    check_positive,
    check_same_shape,
    check_tensor,
    chunked,
    masked_mean,
    upcast,
)
from emrl.objectives.positive import TEMPERATURE_PARAMS, temperature

__all__ = [
    "categorical_kl",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "AlphaInfo",
    "alpha_trust_region",
    "gaussian_kl_decoupled",
]


# ------------------------------------------------------------------------------- KL


def categorical_kl(
    logits_p: Tensor,
    logits_q: Tensor,
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Exact ``KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v))`` per position from logits.

    For the V-MPO trust region use ``p = π_old`` (detached) and ``q = π_θ`` (spec §5).
    Memory-aware: all leading dims are flattened and processed ``chunk_size`` rows
    (positions) at a time, each chunk checkpointed under autograd (its log-softmaxes are
    recomputed in backward rather than stored); values and gradients equal the
    unchunked ones.

    Args:
        logits_p, logits_q: ``[..., V]`` of the same shape (``[B, T, V]`` typically).
        mask: ``[...]`` or ``None``; masked positions are 0.
        chunk_size: positions per chunk or ``None``.

    Returns:
        ``[...]`` KL per position (differentiable w.r.t. both inputs).
    """
    check_logits(logits_p, "logits_p")
    check_logits(logits_q, "logits_q")
    check_same_shape(logits_p, "logits_p", logits_q, "logits_q")
    lead = logits_p.shape[:-1]
    m = check_mask(mask, "mask", logits_p[..., 0], "logits_p[..., 0]")
    cs = check_chunk_size(chunk_size)
    V = logits_p.shape[-1]
    P = logits_p.reshape(-1, V)
    Q = logits_q.reshape(-1, V)
    M = P.shape[0]
    step = M if cs is None else cs
    starts = range(0, M, step)
    parts = [chunked(_kl_block, len(starts), P[s : s + step], Q[s : s + step]) for s in starts]
    kl = (parts[0] if len(parts) == 1 else torch.cat(parts)).reshape(lead)
    if m is not None:
        kl = torch.where(m, kl, torch.zeros_like(kl))
    return kl


def _kl_block(P: Tensor, Q: Tensor) -> Tensor:
    lp = torch.log_softmax(upcast(P), dim=-1)
    lq = torch.log_softmax(upcast(Q), dim=-1)
    p = lp.exp()
    # p = 0 contributes 0 even where log q = -inf; the inner where keeps the NaN of
    # (-inf) - (-inf) out of the backward pass as well
    diff = torch.where(p > 0, lp - lq, torch.zeros_like(lp))
    return (p * diff).sum(dim=-1)


def _sample_logps(logp: Tensor, logq: Tensor) -> None:
    check_tensor(logp, "logp", floating=True)
    check_tensor(logq, "logq", floating=True)
    check_same_shape(logp, "logp", logq, "logq")


def kl_k1(logp: Tensor, logq: Tensor) -> Tensor:
    """Sampled KL(p‖q) estimator k1 = ``log p(x) − log q(x)`` for ``x ~ p`` (unbiased,
    high variance, can be negative). Elementwise; any shape."""
    _sample_logps(logp, logq)
    return logp - logq


def kl_k2(logp: Tensor, logq: Tensor) -> Tensor:
    """Sampled estimator k2 = ``½ (log q(x) − log p(x))²`` for ``x ~ p`` (biased, low
    variance, ≥ 0). Elementwise."""
    _sample_logps(logp, logq)
    d = logq - logp
    return 0.5 * d * d


def kl_k3(logp: Tensor, logq: Tensor) -> Tensor:
    """Sampled KL(p‖q) estimator k3 = ``(r − 1) − log r`` with ``r = q(x)/p(x)``,
    ``x ~ p`` (unbiased, ≥ 0, low variance; Schulman 2020). Elementwise."""
    _sample_logps(logp, logq)
    log_r = logq - logp
    return torch.expm1(log_r) - log_r


# ----------------------------------------------------------------------- trust region


class AlphaInfo(NamedTuple):
    """Diagnostics of the KL dual (detached): alpha, kl, loss_alpha
    (``α(ε − sg[KL])``), loss_kl (``sg[α] KL``)."""

    alpha: Tensor
    kl: Tensor
    loss_alpha: Tensor
    loss_kl: Tensor


def alpha_trust_region(
    kl: Tensor,
    alpha_param: Tensor,
    eps_alpha: float,
    param: str = "softplus",
    alpha_min: float = 0.0,
) -> tuple[Tensor, AlphaInfo]:
    """KL trust-region term with its Lagrange multiplier, exactly spec §5 eq. (1):

    ``L_α(θ, α) = α (ε_α − sg[KL]) + sg[α] · KL``.

    The first term trains α only (gradient ``ε_α − KL``: gradient descent raises α while
    KL > ε_α, lowers it while KL < ε_α); the second trains the policy only, with gradient
    ``sg[α] ∇KL``. ``α = temperature(alpha_param, param, alpha_min)`` (softplus or exp).

    Args:
        kl: 0-dim differentiable ``E_s KL(π_old ‖ π_θ)`` (e.g. ``categorical_kl(...).mean()``).
        alpha_param: 0-dim unconstrained parameter (``requires_grad=True``).
        eps_alpha: ε_α > 0.

    Returns:
        ``(loss scalar, AlphaInfo)``.
    """
    check_tensor(kl, "kl", ndim=0, floating=True)
    check_tensor(alpha_param, "alpha_param", ndim=0, floating=True)
    check_choice(param, "param", TEMPERATURE_PARAMS)
    eps = check_positive(eps_alpha, "eps_alpha")
    alpha = temperature(alpha_param, param, alpha_min)
    loss_alpha = alpha * (eps - kl.detach())
    loss_kl = alpha.detach() * kl
    info = AlphaInfo(
        alpha=alpha.detach(), kl=kl.detach(), loss_alpha=loss_alpha.detach(), loss_kl=loss_kl.detach()
    )
    return loss_alpha + loss_kl, info


def gaussian_kl_decoupled(
    mu_old: Tensor,
    std_old: Tensor,
    mu: Tensor,
    std: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> tuple[Tensor, Tensor]:
    """V-MPO's decoupled KL for diagonal Gaussians (Song et al. 2019, following MPO):

    * mean part, new mean with the *old* covariance:
      ``KL_μ = KL(N(μ_old, Σ_old) ‖ N(μ, Σ_old)) = ½ Σ_d (μ_d − μ_old,d)² / σ_old,d²``;
    * covariance part, *old* mean with the new covariance:
      ``KL_Σ = KL(N(μ_old, Σ_old) ‖ N(μ_old, Σ)) = ½ Σ_d (σ_old,d²/σ_d² − 1 + 2 log(σ_d/σ_old,d))``.

    When only the mean moves, ``KL_μ`` is the full KL and ``KL_Σ = 0``; when only the
    covariance moves, the reverse (in general their sum differs from the full KL because
    ``KL_μ`` measures the mean step with the old covariance). Each part gets its own
    dual (two calls to
    :func:`alpha_trust_region` with α_μ, α_Σ).

    Args:
        mu_old, std_old, mu, std: ``[..., D]``, standard deviations > 0. Old ones are
            detached here.
        mask: ``[...]`` or ``None``. reduction: ``"mean"`` (over valid rows) or ``"none"``.

    Returns:
        ``(kl_mean, kl_cov)``: scalars, or ``[...]`` for ``reduction="none"``.
    """
    for name, x in (("mu_old", mu_old), ("std_old", std_old), ("mu", mu), ("std", std)):
        check_tensor(x, name, floating=True)
        if x.dim() < 1:
            raise ValueError(f"{name} must have shape [..., D], got {tuple(x.shape)}")
        check_same_shape(mu_old, "mu_old", x, name)
    if not bool((std_old > 0).all()) or not bool((std > 0).all()):
        raise ValueError("std_old and std must be > 0")
    check_choice(reduction, "reduction", ("mean", "none"))
    m = check_mask(mask, "mask", mu_old[..., 0], "mu_old[..., 0]")
    mo, so = mu_old.detach(), std_old.detach()
    kl_mu = 0.5 * (((mu - mo) / so) ** 2).sum(-1)
    ratio = so / std
    kl_cov = 0.5 * (ratio * ratio - 1.0 - 2.0 * torch.log(ratio)).sum(-1)
    if reduction == "none":
        if m is not None:
            kl_mu = torch.where(m, kl_mu, torch.zeros_like(kl_mu))
            kl_cov = torch.where(m, kl_cov, torch.zeros_like(kl_cov))
        return kl_mu, kl_cov
    return masked_mean(kl_mu, m), masked_mean(kl_cov, m)
