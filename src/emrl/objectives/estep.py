"""E-steps: the target distribution over sampled behaviour, as one weight per sample.

* :func:`vmpo_estep` — V-MPO with top-k selection and the adaptive temperature dual
  (Song et al. 2019; spec §5 "E-Step" and spec §6 "Full Adaptive EM Procedure").
* :func:`vmpo_weights` — the same weights at a fixed temperature (what ``vmpo_estep``
  uses internally).
* :func:`awr_weights` — AWR at a fixed temperature with max-weight clipping
  (Peng et al. 2019; spec §7 "Advantage Weighted Regression").
* :func:`dar_weights` — Direct Advantage Regression (He et al. 2025; spec §7).
* SFT targets as E-steps (spec §6 "E-step / M-step for SFT"): :func:`delta_target`,
  :func:`label_smoothing_target`, :func:`nbest_weights`, :func:`distillation_target`.
  Token-level targets are returned as a :class:`SoftTarget` that
  :func:`emrl.objectives.mstep.soft_target_nll` consumes.

All weights are detached (they are the fixed target of the M-step). Sample-level
tensors are ``[N]`` (one entry per sampled sequence / state-action pair); an optional
validity ``mask[N]`` excludes samples (they get weight exactly 0).

Numerics: sample-level E-step maths runs in float64 (``N`` is small, so this is
cheap; float32 on devices without float64) and is returned in the input's floating dtype. Everything is in log space with a
max-shift, so advantages of magnitude 1e6 at temperature 1e-8 neither overflow nor
produce NaN.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from emrl.objectives._checks import (
    check_choice,
    check_mask,
    check_positive,
    check_same_shape,
    check_tensor,
    check_unit_interval,
    to_float,
)
from emrl.objectives.returns import normalize_advantages as _normalize_advantages

__all__ = [
    "TEMPERATURE_PARAMS",
    "temperature",
    "inverse_temperature_param",
    "VMPOInfo",
    "vmpo_topk",
    "vmpo_weights",
    "vmpo_estep",
    "WeightInfo",
    "awr_weights",
    "DARInfo",
    "dar_weights",
    "SoftTarget",
    "delta_target",
    "label_smoothing_target",
    "NBestInfo",
    "nbest_weights",
    "distillation_target",
    "weight_stats",
]

TEMPERATURE_PARAMS = ("softplus", "log")
_F64 = torch.float64


def _wide(x: Tensor) -> Tensor:
    """``x`` in the E-step's working precision: float64, or float32 on devices without
    float64 (Apple MPS)."""
    return x.to(torch.float32 if x.device.type == "mps" else _F64)


# --------------------------------------------------------------------------- temperature


def temperature(xi: Tensor, param: str = "softplus", eta_min: float = 1e-8) -> Tensor:
    """Positive temperature from an unconstrained parameter (spec §6 "Positive
    Parameterisation of the Temperature").

    * ``param="softplus"``: ``η = softplus(ξ) + eta_min`` (the spec's form).
    * ``param="log"``: ``η = exp(ξ) + eta_min``.

    Differentiable w.r.t. ``xi``; any shape (usually 0-dim). ``eta_min >= 0`` is the
    floor (use > 0 for a temperature). The same map parameterises the KL dual ``α``.
    """
    check_tensor(xi, "xi", floating=True)
    check_choice(param, "param", TEMPERATURE_PARAMS)
    eta_min = check_positive(eta_min, "eta_min", allow_zero=True)
    base = F.softplus(xi) if param == "softplus" else torch.exp(xi)
    return base + eta_min


def inverse_temperature_param(
    eta: float | Tensor, param: str = "softplus", eta_min: float = 1e-8
) -> Tensor:
    """The ``ξ`` with ``temperature(ξ, param, eta_min) == eta`` (to initialise ξ).

    Requires ``eta > eta_min``. Returns a float32 0-dim tensor (call
    ``.requires_grad_()`` / wrap in ``nn.Parameter`` yourself). Stable for small and
    large ``eta``: ``softplus⁻¹(y) = y + log(-expm1(-y))``.
    """
    check_choice(param, "param", TEMPERATURE_PARAMS)
    e = to_float(eta, "eta")
    eta_min = check_positive(eta_min, "eta_min", allow_zero=True)
    y = e - eta_min
    if not y > 0:
        raise ValueError(f"eta must be > eta_min ({eta_min}), got {e}")
    if param == "log":
        xi = math.log(y)
    else:
        xi = y + math.log(-math.expm1(-y))
    return torch.tensor(xi, dtype=torch.float32)


# ----------------------------------------------------------------------------- helpers


def weight_stats(weights: Tensor) -> tuple[Tensor, Tensor]:
    """``(ess, entropy)`` of a normalised weight vector (zeros contribute nothing).

    ``ess = 1 / Σ w²`` (effective sample size), ``entropy = -Σ w log w`` (nats).
    """
    w = _wide(weights.detach())
    ess = 1.0 / (w * w).sum().clamp_min(1e-300)
    pos = w > 0
    ent = -(torch.where(pos, w * torch.log(torch.where(pos, w, torch.ones_like(w))), 0.0)).sum()
    return ess, ent


def _adv_mask(advantages: Tensor, mask: Tensor | None, name: str = "advantages"):
    check_tensor(advantages, name, ndim=1, floating=True)
    m = check_mask(mask, "mask", advantages, name)
    if m is None:
        m = torch.ones_like(advantages, dtype=torch.bool)
    n_valid = int(m.sum())
    if n_valid == 0:
        raise ValueError("mask must mark at least one sample as valid, got an all-false mask")
    return m, n_valid


def _masked_softmax(logw: Tensor, mask: Tensor) -> Tensor:
    """Softmax of ``logw`` over ``mask`` (max-shifted); exactly 0 outside ``mask``."""
    neg_inf = torch.full_like(logw, -math.inf)
    z = torch.where(mask, logw, neg_inf)
    m = z.max()
    e = torch.where(mask, torch.exp(z - m), torch.zeros_like(z))
    return e / e.sum()


# ------------------------------------------------------------------------------ V-MPO


class VMPOInfo(NamedTuple):
    """Diagnostics of a V-MPO E-step (all detached).

    eta: temperature used (0-dim). g: ``g(η) = log(Z(η)/k)`` (0-dim).
    ess: effective sample size ``1/Σw²`` of the weights. selected_fraction: ``k/N_valid``.
    weight_entropy: ``-Σ w log w`` (nats). kl_to_uniform: ``KL(w ‖ uniform over S)
    = log k - entropy``; the dual drives it to ``ε_η``. selected: ``[N]`` bool, the set
    S. k: ``|S|`` (int). max_weight: largest weight (0-dim). ``g``, ``ess``,
    ``weight_entropy``, ``kl_to_uniform`` and ``max_weight`` are ``None`` when
    :func:`vmpo_estep` was called with ``diagnostics=False``.
    """

    eta: Tensor
    g: Tensor | None
    ess: Tensor | None
    selected_fraction: float
    weight_entropy: Tensor | None
    kl_to_uniform: Tensor | None
    selected: Tensor
    k: int
    max_weight: Tensor | None


def _num_selected(n_valid: int, top_fraction: float) -> int:
    # k = max(1, floor(ρ N)); the 1e-9 guards against ρN landing just below an integer
    # through float rounding (e.g. 0.29 * 100 = 28.999999999999996).
    return max(1, math.floor(top_fraction * n_valid + 1e-9))


def vmpo_topk(
    advantages: Tensor,
    top_fraction: float = 0.5,
    mask: Tensor | None = None,
    min_advantage: float | None = None,
) -> tuple[Tensor, int]:
    """Top-k selection of spec §6: ``k = max(1, ⌊ρ·N_valid⌋)`` valid samples with the
    largest advantage.

    Since ``η > 0``, ranking by ``u = A/η_det`` is ranking by ``A``. **Tie rule:** among
    equal advantages at the k-th value, the lower index is selected (stable sort).

    ``min_advantage`` (``None``: off, the spec's plain top-k) keeps only samples with
    ``A > min_advantage`` among the top k, so ``k = min(max(1, ⌊ρN⌋), #{A > min_advantage})``
    and may be **0** (nothing is selected; the E-step then has no target). Spec §6 selects
    S "to focus the M-step on demonstrably good samples"; with 0/1 rewards and a group
    baseline most advantages are exactly 0 (all-right and all-wrong groups) and plain
    top-k fills S with such ties once fewer than ρN samples beat their group, so the
    M-step would fit samples that are no better than the baseline. ``min_advantage=0``
    keeps S to samples that are demonstrably better than their baseline.

    Returns:
        ``(selected [N] bool, k)``.
    """
    m, n_valid = _adv_mask(advantages, mask)
    rho = check_unit_interval(top_fraction, "top_fraction", low_open=True)
    k = _num_selected(n_valid, rho)
    a = _wide(advantages.detach())
    if min_advantage is not None:
        thr = to_float(min_advantage, "min_advantage")
        m = m & (a > thr)
        k = min(k, int(m.sum()))
    key = torch.where(m, a, torch.full_like(a, -math.inf))
    order = torch.sort(key, descending=True, stable=True).indices
    selected = torch.zeros_like(m)
    selected[order[:k]] = True
    return selected, k


def _empty_vmpo_info(eta: Tensor, n_valid: int, selected: Tensor) -> VMPOInfo:
    zero = torch.zeros((), dtype=eta.dtype, device=eta.device)
    return VMPOInfo(eta=eta, g=zero, ess=zero, selected_fraction=0.0, weight_entropy=zero,
                    kl_to_uniform=zero, selected=selected, k=0, max_weight=zero)


def _vmpo_from_selection(adv64: Tensor, selected: Tensor, k: int, eta_det: Tensor, n_valid: int):
    u = adv64 / eta_det
    weights = _masked_softmax(u, selected)
    u_sel = torch.where(selected, u, torch.full_like(u, -math.inf))
    m = u_sel.max()
    g = m + torch.log(torch.where(selected, torch.exp(u_sel - m), 0.0).sum() / k)
    ess, ent = weight_stats(weights)
    info = VMPOInfo(
        eta=eta_det,
        g=g,
        ess=ess,
        selected_fraction=k / n_valid,
        weight_entropy=ent,
        kl_to_uniform=math.log(k) - ent,
        selected=selected,
        k=k,
        max_weight=weights.max(),
    )
    return weights, info


def vmpo_weights(
    advantages: Tensor,
    eta: float | Tensor,
    top_fraction: float = 0.5,
    mask: Tensor | None = None,
    min_advantage: float | None = None,
) -> tuple[Tensor, VMPOInfo]:
    """V-MPO E-step weights at a fixed temperature (spec §6 "Weight computation").

    ``S = Top-k(A)`` (see :func:`vmpo_topk` for k and the tie rule),
    ``w_i = exp(u_i - m) / Σ_{j∈S} exp(u_j - m)`` for ``i ∈ S`` with ``u = A/η``,
    ``m = max_S u``; ``w_i = 0`` outside S (including masked samples).

    Args:
        advantages: ``[N]`` finite.
        eta: temperature > 0 (number or tensor; detached).
        top_fraction: ρ in (0, 1]; 1 keeps every valid sample.
        mask: ``[N]`` validity, or ``None``.
        min_advantage: select only samples with ``A > min_advantage`` (see
            :func:`vmpo_topk`); ``None``: plain top-k.

    Returns:
        ``(weights [N], VMPOInfo)``: weights detached, sum 1 (all 0 when ``min_advantage``
        leaves nothing to select: ``info.k == 0``), dtype of ``advantages``.
    """
    selected, k = vmpo_topk(advantages, top_fraction, mask, min_advantage)
    n_valid = int(mask.bool().sum()) if mask is not None else advantages.shape[0]
    e = check_positive(eta, "eta")
    adv = _wide(advantages.detach())
    eta_det = torch.tensor(e, dtype=adv.dtype, device=adv.device)
    if k == 0:
        return torch.zeros_like(advantages), _empty_vmpo_info(eta_det, n_valid, selected)
    w, info = _vmpo_from_selection(adv, selected, k, eta_det, n_valid)
    return w.to(advantages.dtype), info


def vmpo_estep(
    advantages: Tensor,
    xi: Tensor,
    eps_eta: float,
    top_fraction: float = 0.5,
    mask: Tensor | None = None,
    param: str = "softplus",
    eta_min: float = 1e-8,
    *,
    selection: tuple[Tensor, int] | None = None,
    diagnostics: bool = True,
    min_advantage: float | None = None,
) -> tuple[Tensor, Tensor, VMPOInfo]:
    """Adaptive-temperature V-MPO E-step (spec §6 "Full Adaptive EM Procedure").

    1. ``η_det = sg[η(ξ)]`` with ``η = temperature(ξ, param, eta_min)``;
    2. ``u_i = A_i / η_det``; 3. ``S = Top-k(u)``, ``k = max(1, ⌊ρ N_valid⌋)``;
    4–5. ``g = m + log((1/k) Σ_S exp(u_i - m))``; weights ``w = softmax_S(u)``;
    6. ``L_η = η(ξ) (ε_η + g(η(ξ)))`` with ``g`` recomputed from the differentiable η
       by a stable log-sum-exp, so that autograd gives the spec's
       ``dL_η/dη = ε_η + g(η) − E_{p_η}[A]/η`` (``p_η`` = the weights).

    Minimising ``L_η`` w.r.t. ``ξ`` drives ``KL(w ‖ uniform over S)`` to ``ε_η``.

    Args:
        advantages: ``[N]`` finite sequence-/sample-level advantages (detached here).
        xi: 0-dim float tensor, usually ``requires_grad=True``; the temperature parameter.
        eps_eta: KL budget ε_η > 0.
        top_fraction: ρ in (0, 1].
        mask: ``[N]`` validity or ``None``; masked samples are never selected.
        param: ``"softplus"`` (spec) or ``"log"``.
        eta_min: temperature floor.
        selection: ``(selected [N] bool, k)`` as returned by :func:`vmpo_topk` for these
            ``advantages``, ``top_fraction`` and ``mask``, to reuse a selection across
            steps on the same advantages (the selection does not depend on η); ``None``
            computes it.
        diagnostics: compute the :class:`VMPOInfo` statistics (default). With ``False``
            only ``eta``, ``selected``, ``k`` and ``selected_fraction`` are filled (the
            rest is ``None``) and the weights are the softmax of the same ``u`` the loss
            uses: equal to the default's to float rounding.
        min_advantage: select only samples with ``A > min_advantage`` (see
            :func:`vmpo_topk`); ``None``: plain top-k. Ignored when ``selection`` is given.

    Returns:
        ``(weights [N], loss_eta, VMPOInfo)``: weights detached (sum 1, zero outside S);
        ``loss_eta`` a scalar differentiable w.r.t. ``xi`` only. When nothing is selected
        (``info.k == 0``, possible only with ``min_advantage``) the weights are all 0 and
        ``loss_eta = 0·ξ``: the temperature has no data to adapt to and stays put.
    """
    check_tensor(xi, "xi", floating=True)
    if xi.dim() != 0:
        raise ValueError(f"xi must be a 0-dim tensor, got shape {tuple(xi.shape)}")
    eps = check_positive(eps_eta, "eps_eta")
    if selection is None:
        selected, k = vmpo_topk(advantages, top_fraction, mask, min_advantage)
    else:
        check_tensor(advantages, "advantages", ndim=1, floating=True)
        selected, k = _check_selection(selection, advantages)
    n_valid = int(mask.bool().sum()) if mask is not None else advantages.shape[0]
    eta = temperature(xi, param, eta_min)
    if k == 0:
        eta_d = eta.detach().to(_wide(advantages.detach()).dtype)
        return (torch.zeros_like(advantages), xi * 0.0,
                _empty_vmpo_info(eta_d, n_valid, selected))
    adv64 = _wide(advantages.detach())
    eta64 = eta.to(adv64.dtype)
    # g recomputed with the differentiable η (stable logsumexp over S only)
    u = torch.where(selected, adv64 / eta64, torch.full_like(adv64, -math.inf))
    g = torch.logsumexp(u, dim=0) - math.log(k)
    loss = (eta64 * (eps + g)).to(xi.dtype)
    if not bool(torch.isfinite(loss.detach())):
        raise ValueError(
            f"advantages / temperature overflows: max |A| = {float(adv64.abs().max()):.4g} at "
            f"eta = {float(eta64.detach()):.4g}; rescale the advantages or raise eta_min"
        )
    if diagnostics:
        weights, info = _vmpo_from_selection(adv64, selected, k, eta64.detach(), n_valid)
    else:  # the softmax over S of the same u (exp(-inf) = 0 outside S)
        weights = torch.softmax(u.detach(), dim=0)
        info = VMPOInfo(eta=eta64.detach(), g=None, ess=None, selected_fraction=k / n_valid,
                        weight_entropy=None, kl_to_uniform=None, selected=selected, k=k,
                        max_weight=None)
    return weights.to(advantages.dtype), loss, info


def _check_selection(selection, advantages: Tensor) -> tuple[Tensor, int]:
    if not (isinstance(selection, tuple) and len(selection) == 2):
        raise ValueError("selection must be the (selected, k) pair returned by vmpo_topk, "
                         f"got {type(selection).__name__}")
    selected, k = selection
    if not isinstance(selected, Tensor) or selected.dtype != torch.bool or selected.shape != advantages.shape:
        raise ValueError(f"selection[0] must be a bool tensor of shape {tuple(advantages.shape)} "
                         "(vmpo_topk's selected)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"selection[1] must be an int k >= 1 (vmpo_topk's k), got {k!r}")
    return selected, k


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
    p = _masked_softmax(logw, m)
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
    m, _ = _adv_mask(advantages, mask)
    t = check_positive(temperature, "temperature")
    cm = None if max_weight is None else check_positive(max_weight, "max_weight")
    logw = _wide(advantages.detach()) / t
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
    m, _ = _adv_mask(advantages, mask)
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
    adv = _wide(advantages.detach())
    if normalize_advantages:
        adv = _normalize_advantages(adv, m)
    lr = _wide(logp_ref.detach())
    ls = _wide(logp_sample.detach())
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


# ------------------------------------------------------------------------ SFT targets


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
    s = _wide(scores.detach()).reshape(-1, group_size)
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
