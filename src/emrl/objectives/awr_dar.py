"""Fixed-temperature E-steps: AWR (Peng et al. 2019; spec §7 "Advantage Weighted
Regression") and DAR (He et al. 2025; spec §7 "Direct Advantage Regression").

Weights are detached (the fixed target of the M-step); sample-level tensors are ``[N]``
with an optional validity ``mask[N]``; the maths runs in float64 in log space (see
:mod:`emrl.objectives.estep`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from emrl.objectives._checks import check_choice, check_positive, check_same_shape, check_tensor
from emrl.objectives._weights import adv_mask, masked_softmax, weight_stats, wide
from emrl.objectives.returns import normalize_advantages as _normalize_advantages

__all__ = ["WeightInfo", "awr_weights", "DARInfo", "dar_weights"]


# -------------------------------------------------------------------------------- AWR


class WeightInfo(NamedTuple):
    """Diagnostics of fixed-temperature weights (all detached).

    ess: ``1/Σp²`` of the normalised weights p. weight_entropy: ``-Σ p log p``.
    clipped_fraction: fraction of valid samples whose weight hit the clip.
    max_weight: largest returned weight. log_weights: ``[N]`` unnormalised log-weights
    after clipping (``-inf`` where masked).
    """

    ess: Tensor
    weight_entropy: Tensor
    clipped_fraction: Tensor
    max_weight: Tensor
    log_weights: Tensor


def _finish_weights(logw: Tensor, m: Tensor, clip_max: float | None, normalize: bool, what: str):
    """Clip log-weights at log(clip_max), then normalise (softmax) or exponentiate."""
    valid_count = m.sum().clamp_min(1).to(logw.dtype)
    if clip_max is not None:
        cap = math.log(clip_max)
        clipped = (logw >= cap) & m
        logw = torch.clamp(logw, max=cap)
    else:
        clipped = torch.zeros_like(m)
    logw = torch.where(m, logw, torch.full_like(logw, -math.inf))
    p = masked_softmax(logw, m)
    if normalize:
        w = p
    else:
        w = torch.where(m, torch.exp(logw), torch.zeros_like(logw))
        if not bool(torch.isfinite(w).all()):
            raise ValueError(
                f"{what} weights overflow without normalisation (exp of log-weight "
                f"{float(logw.max()):.4g}); pass normalize=True or a max weight"
            )
    ess, ent = weight_stats(p)
    info = WeightInfo(
        ess=ess,
        weight_entropy=ent,
        clipped_fraction=clipped.sum().to(logw.dtype) / valid_count,
        max_weight=w.max(),
        log_weights=logw,
    )
    return w, info


def awr_weights(
    advantages: Tensor,
    temperature: float,
    max_weight: float | None = None,
    mask: Tensor | None = None,
    normalize: bool = True,
) -> tuple[Tensor, WeightInfo]:
    """AWR weights at a fixed temperature (Peng et al. 2019; spec §7 "AWR").

    ``w_i = min(exp(A_i / T), max_weight)`` on every valid sample (no top-k), computed
    in log space. With ``normalize=True`` the clipped weights are then divided by their
    sum (they sum to 1, like V-MPO's); with ``normalize=False`` they are returned as is
    (a ``ValueError`` is raised if they overflow). Masked samples get 0.

    Args:
        advantages: ``[N]``. temperature: T > 0. max_weight: clip (> 0) or ``None``.

    Returns:
        ``(weights [N] detached, WeightInfo)``.
    """
    m, _ = adv_mask(advantages, mask)
    t = check_positive(temperature, "temperature")
    cm = None if max_weight is None else check_positive(max_weight, "max_weight")
    logw = wide(advantages.detach()) / t
    w, info = _finish_weights(logw, m, cm, normalize, "AWR")
    return w.to(advantages.dtype), info


# -------------------------------------------------------------------------------- DAR


class DARInfo(NamedTuple):
    """Diagnostics of DAR weights (all detached, ``[N]`` terms float64).

    ``log w_i = log_ref_term_i + log_sample_term_i + adv_term_i`` (before clipping):
    in the ``"importance"`` form ``log_ref_term = (α/t)·log π_ref``,
    ``log_sample_term = -(α/t)·log π_t``; in the ``"target"`` form
    ``log_sample_term = (β/t)·log π_t``; ``adv_term = A/t`` (A after optional
    normalisation). ``t = α + β``. Other fields as :class:`WeightInfo`.
    """

    log_ref_term: Tensor
    log_sample_term: Tensor
    adv_term: Tensor
    t: float
    ess: Tensor
    weight_entropy: Tensor
    clipped_fraction: Tensor
    max_weight: Tensor
    log_weights: Tensor


def dar_weights(
    logp_ref: Tensor,
    logp_sample: Tensor,
    advantages: Tensor,
    alpha: float,
    beta: float,
    clip_max: float | None = None,
    normalize_advantages: bool = False,
    mask: Tensor | None = None,
    self_normalize: bool = True,
    form: str = "importance",
) -> tuple[Tensor, DARInfo]:
    """Direct Advantage Regression weights (He et al. 2025; spec §7), in log space.

    With ``t = α + β`` the DAR optimal policy is (spec §7 eq. 5)
    ``π*(y) ∝ π_ref(y)^{α/t} π_t(y)^{β/t} exp(A(y)/t)``.

    * ``form="importance"`` (default; what the M-step on samples ``y ~ π_t`` needs — the
      spec's final sampled objective): ``w_i ∝ (π_ref/π_t)^{α/t} exp(A_i/t)``, i.e.
      ``log w = (α/t)(log π_ref − log π_t) + A/t`` = ``π*/π_t`` up to a constant.
    * ``form="target"``: ``log w = (α/t) log π_ref + (β/t) log π_t + A/t``, the
      unnormalised ``π*`` on the sampled sequences (spec §7 ``ℓ_DAR``).

    Limits (spec §7 "Mapping DAR to V-MPO"): when ``π_ref = π_t`` or ``α → 0`` the
    importance form tends to ``exp(A/t)`` — :func:`vmpo_weights` with ``η = t`` and
    ``top_fraction=1`` — and the target form to ``π_t exp(A/t)``.

    Stabilisers: ``normalize_advantages`` standardises A over valid samples first;
    ``clip_max`` caps the *unnormalised* weight ``exp(log w)`` (meaningful in the
    importance form, where it is a ratio around 1 as in AWR) before
    ``self_normalize`` divides by the sum over valid samples.

    Args:
        logp_ref, logp_sample: ``[N]`` sequence log-probabilities under π_ref and π_t
            (sum of token log-probs), finite.
        advantages: ``[N]``. alpha >= 0, beta >= 0 with alpha + beta > 0.
        mask: ``[N]`` validity or ``None``.

    Returns:
        ``(weights [N] detached, DARInfo)``; masked samples get 0.
    """
    m, _ = adv_mask(advantages, mask)
    check_tensor(logp_ref, "logp_ref", ndim=1, floating=True)
    check_tensor(logp_sample, "logp_sample", ndim=1, floating=True)
    check_same_shape(advantages, "advantages", logp_ref, "logp_ref")
    check_same_shape(advantages, "advantages", logp_sample, "logp_sample")
    a = check_positive(alpha, "alpha", allow_zero=True)
    b = check_positive(beta, "beta", allow_zero=True)
    t = a + b
    if not t > 0:
        raise ValueError(f"alpha + beta must be > 0 (the DAR temperature), got {t}")
    check_choice(form, "form", ("importance", "target"))
    cm = None if clip_max is None else check_positive(clip_max, "clip_max")
    adv = wide(advantages.detach())
    if normalize_advantages:
        adv = _normalize_advantages(adv, m)
    lr = wide(logp_ref.detach())
    ls = wide(logp_sample.detach())
    ref_term = (a / t) * lr
    sample_term = -(a / t) * ls if form == "importance" else (b / t) * ls
    adv_term = adv / t
    logw = ref_term + sample_term + adv_term
    w, wi = _finish_weights(logw, m, cm, self_normalize, "DAR")
    info = DARInfo(
        log_ref_term=ref_term,
        log_sample_term=sample_term,
        adv_term=adv_term,
        t=t,
        ess=wi.ess,
        weight_entropy=wi.weight_entropy,
        clipped_fraction=wi.clipped_fraction,
        max_weight=wi.max_weight,
        log_weights=wi.log_weights,
    )
    return w.to(advantages.dtype), info
