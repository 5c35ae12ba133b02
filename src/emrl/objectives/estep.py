"""E-steps: the target distribution over sampled behaviour, as one weight per sample.

This module holds V-MPO's E-step; the others live in :mod:`~emrl.objectives.awr_dar`
and :mod:`~emrl.objectives.sft_targets` and are re-exported here, as are the positive
maps of :mod:`~emrl.objectives.positive`.

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
from torch import Tensor

from emrl.objectives._checks import check_positive, check_tensor, check_unit_interval, to_float
from emrl.objectives._weights import adv_mask, masked_softmax, weight_stats, wide

# the other E-steps and the positive maps, importable from here as before the split
from emrl.objectives.awr_dar import DARInfo, WeightInfo, awr_weights, dar_weights
from emrl.objectives.positive import TEMPERATURE_PARAMS, inverse_temperature_param, temperature
from emrl.objectives.sft_targets import (
    NBestInfo,
    SoftTarget,
    delta_target,
    distillation_target,
    label_smoothing_target,
    nbest_weights,
)

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
    m, n_valid = adv_mask(advantages, mask)
    rho = check_unit_interval(top_fraction, "top_fraction", low_open=True)
    k = _num_selected(n_valid, rho)
    a = wide(advantages.detach())
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


def _vmpo_from_selection(adv64: Tensor, selected: Tensor, k: int, eta_det: Tensor, n_valid: int,
                         g: Tensor | None = None):
    """Weights and diagnostics at the fixed temperature ``eta_det``; ``g`` = g(η) when the
    caller computed it already (:func:`vmpo_estep`), else computed here."""
    u = adv64 / eta_det
    weights = masked_softmax(u, selected)
    if g is None:
        u_sel = torch.where(selected, u, torch.full_like(u, -math.inf))
        g = torch.logsumexp(u_sel, dim=0) - math.log(k)
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
    adv = wide(advantages.detach())
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
        eta_d = eta.detach().to(wide(advantages.detach()).dtype)
        return (torch.zeros_like(advantages), xi * 0.0,
                _empty_vmpo_info(eta_d, n_valid, selected))
    adv64 = wide(advantages.detach())
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
        weights, info = _vmpo_from_selection(adv64, selected, k, eta64.detach(), n_valid, g.detach())
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
