"""Returns and advantages: discounted returns, n-step targets, GAE, group baselines.

Control-side tensors are **time-major**: ``[T, B]`` (or ``[T, *batch]``), one row per
environment step of a rollout window of length ``T``.

Conventions shared by :func:`nstep_targets` and :func:`gae` (spec §4, §5):

* ``values[t] = V(s_t)`` and ``next_values[t] = V(s_{t+1})``. For a step that ends an
  episode by *truncation* (time limit), ``s_{t+1}`` is the final observation before the
  environment reset, so ``next_values[t]`` is its value.
* ``terminated[t]``: ``s_{t+1}`` is terminal; its value is 0, nothing is bootstrapped.
* ``dones[t] = terminated[t] | truncated[t]``: the episode ends after step ``t``; sums
  never cross it. A truncated step (done but not terminated) bootstraps from
  ``next_values[t]``; a terminated one does not.
* At the end of the rollout window, sums stop and bootstrap from the last available
  ``next_values`` (the window is a truncation of the data, not of the episode).

Masks / flags may be bool or 0/1 tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from emrl.objectives._checks import (
    check_choice,
    check_positive,
    check_same_shape,
    check_tensor,
    check_unit_interval,
    masked_mean,
)
from emrl.objectives._checks import (
    check_mask as _check_mask,
)

__all__ = [
    "discounted_returns",
    "nstep_targets",
    "gae",
    "group_advantages",
    "normalize_advantages",
]


def _flag(x: object, name: str, like: Tensor, like_name: str) -> Tensor:
    """A required bool/0-1 flag tensor with the shape of ``like``, as float of like's dtype."""
    if x is None:
        raise ValueError(f"{name} must be a tensor with the shape of {like_name}, got None")
    m = _check_mask(x, name, like, like_name)
    assert m is not None
    return m.to(like.dtype)


def _gamma(gamma: object) -> float:
    return check_unit_interval(gamma, "gamma")


def discounted_returns(
    rewards: Tensor,
    dones: Tensor,
    gamma: float,
    bootstrap: Tensor | None = None,
) -> Tensor:
    """Discounted reward-to-go ``R_t = r_t + γ (1 - done_t) R_{t+1}`` (spec §4).

    Args:
        rewards: ``[T, *B]`` rewards.
        dones: ``[T, *B]`` episode ends after step ``t`` (bool or 0/1). No bootstrap
            across a done: use :func:`gae` / :func:`nstep_targets` when truncation should
            bootstrap.
        gamma: discount in [0, 1].
        bootstrap: ``[*B]`` value of the state after the window (used where the last
            step is not done), or ``None`` for 0.

    Returns:
        ``[T, *B]`` returns.
    """
    check_tensor(rewards, "rewards", floating=True)
    if rewards.dim() < 1:
        raise ValueError(f"rewards must have shape [T, *B], got {tuple(rewards.shape)}")
    d = _flag(dones, "dones", rewards, "rewards")
    g = _gamma(gamma)
    if bootstrap is None:
        nxt = torch.zeros_like(rewards[0])
    else:
        check_tensor(bootstrap, "bootstrap", shape=rewards.shape[1:], floating=True)
        nxt = bootstrap.to(rewards.dtype)
    out = torch.empty_like(rewards)
    for t in range(rewards.shape[0] - 1, -1, -1):
        nxt = rewards[t] + g * (1.0 - d[t]) * nxt
        out[t] = nxt
    return out


def _td_inputs(rewards, values, next_values, terminated, dones):
    check_tensor(rewards, "rewards", floating=True)
    if rewards.dim() < 1:
        raise ValueError(f"rewards must have shape [T, *B], got {tuple(rewards.shape)}")
    for name, x in (("values", values), ("next_values", next_values)):
        check_tensor(x, name, floating=True)
        check_same_shape(rewards, "rewards", x, name)
    term = _flag(terminated, "terminated", rewards, "rewards")
    done = _flag(dones, "dones", rewards, "rewards")
    # a terminated step always ends the episode
    done = torch.maximum(done, term)
    return term, done


def nstep_targets(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    dones: Tensor,
    gamma: float,
    n: int,
) -> Tensor:
    """n-step bootstrapped value targets ``G_t^(n)`` (spec §5, Policy Evaluation).

    ``G_t^(n) = Σ_{k=t}^{t+m-1} γ^{k-t} r_k + γ^m (1 - terminated_{t+m-1}) V(s_{t+m})``
    where ``m = min(n, steps to the end of the episode including its done step, T - t)``
    and ``V(s_{t+m}) = next_values[t+m-1]``. See the module docstring for the flag
    conventions (truncation bootstraps, termination does not). ``values`` is accepted
    for a uniform signature with :func:`gae` and shape-checked; ``n = 1`` gives the TD(0)
    target. Cost O(n·T·B).

    Args:
        rewards, values, next_values: ``[T, *B]`` float.
        terminated, dones: ``[T, *B]`` bool or 0/1.
        gamma: discount in [0, 1].
        n: horizon >= 1.

    Returns:
        ``[T, *B]`` targets (no gradient flows to the values: they are detached).
    """
    term, done = _td_inputs(rewards, values, next_values, terminated, dones)
    g = _gamma(gamma)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    nv = next_values.detach()
    T = rewards.shape[0]
    target = torch.zeros_like(rewards)
    alive = torch.ones_like(rewards)  # 1 while the horizon from t has not hit a done
    disc = torch.ones_like(rewards)  # γ^j
    for j in range(min(n, T)):
        L = T - j  # horizons starting at t < L can reach step t + j
        r = rewards[j:]
        a = alive[:L]
        dsc = disc[:L]
        target[:L] += a * dsc * r
        stop = done[j:]
        last_here = torch.ones_like(stop) if j == n - 1 else stop.clone()
        last_here[-1] = 1.0  # step T-1: the rollout window ends here
        boot = a * last_here * dsc * g * (1.0 - term[j:]) * nv[j:]
        target[:L] += boot
        alive[:L] = a * (1.0 - last_here)
        disc[:L] = dsc * g
    return target


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    dones: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation GAE(γ, λ) (spec §4).

    ``δ_t = r_t + γ (1 - terminated_t) next_values_t - values_t`` and
    ``A_t = δ_t + γ λ (1 - dones_t) A_{t+1}`` with ``A_T = 0``, i.e.
    ``A_t = Σ_l (γλ)^l δ_{t+l}`` summed within the episode and window. A truncated step
    bootstraps from ``next_values`` (the final pre-reset observation); a terminated one
    does not. Inputs are detached.

    Args:
        rewards, values, next_values: ``[T, *B]`` float.
        terminated, dones: ``[T, *B]`` bool or 0/1.
        gamma, lam: in [0, 1].

    Returns:
        ``(advantages [T, *B], returns [T, *B])`` with ``returns = advantages + values``
        (the TD(λ) value target).
    """
    term, done = _td_inputs(rewards, values, next_values, terminated, dones)
    g = _gamma(gamma)
    lm = check_unit_interval(lam, "lam")
    v = values.detach()
    delta = rewards.detach() + g * (1.0 - term) * next_values.detach() - v
    # A_t = δ_t + c_t A_{t+1} with c_t = γλ(1 − done_t): one fused op per step, in place
    coef = (g * lm) * (1.0 - done)
    adv = torch.empty_like(delta)
    T = delta.shape[0]
    if T:
        adv[T - 1] = delta[T - 1]
    for t in range(T - 2, -1, -1):
        torch.addcmul(delta[t], coef[t], adv[t + 1], out=adv[t])
    return adv, adv + v


def group_advantages(
    rewards: Tensor,
    group_size: int,
    mode: str = "mean",
    normalize: bool = False,
    eps: float = 1e-8,
) -> Tensor:
    """Group baselines for ``k = group_size`` samples per prompt (GRPO/RLOO-style).

    ``rewards[N]`` holds contiguous groups: samples ``[g*k, (g+1)*k)`` share a prompt.

    * ``mode="mean"``: ``A_i = r_i - mean(group)``.
    * ``mode="loo"`` (leave-one-out): ``A_i = r_i - mean(group without i)``
      ``= k/(k-1) (r_i - mean(group))``; needs ``k >= 2`` (with one sample there is no
      other sample to form the baseline).
    * ``normalize=True`` divides by the group's standard deviation (unbiased; + eps).
      A group with all-equal rewards gives zeros, never NaN.

    Returns:
        ``[N]`` advantages (detached).
    """
    check_tensor(rewards, "rewards", ndim=1, floating=True)
    check_choice(mode, "mode", ("mean", "loo"))
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    n = rewards.shape[0]
    if n % group_size != 0:
        raise ValueError(
            f"rewards length {n} must be a multiple of group_size {group_size} "
            "(contiguous groups of k samples per prompt)"
        )
    if mode == "loo" and group_size < 2:
        raise ValueError(
            "mode='loo' needs group_size >= 2: the leave-one-out baseline of a sample is "
            "the mean of the other samples of its prompt, and with group_size=1 there are none"
        )
    eps = check_positive(eps, "eps")
    r = rewards.detach().reshape(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    adv = centred * (group_size / (group_size - 1)) if mode == "loo" else centred
    if normalize and group_size >= 2:
        std = r.std(dim=1, keepdim=True)
        adv = adv / (std + eps)
    return adv.reshape(n)


def normalize_advantages(adv: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """``(A - mean) / (std + eps)`` over valid entries (spec §4, "batch-normalised").

    The standard deviation is the unbiased one over the valid entries. Entries outside
    ``mask`` are returned as 0. With fewer than two valid entries the result is all
    zeros (nothing to normalise against). Any shape.
    """
    check_tensor(adv, "adv", floating=True)
    m = _check_mask(mask, "mask", adv, "adv")
    eps = check_positive(eps, "eps")
    a = adv.detach()
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    count = a.numel() if m is None else int(m.sum())
    if count < 2:
        return torch.zeros_like(a)
    mean = masked_mean(a, m)
    centred = a - mean
    if m is not None:
        centred = torch.where(m, centred, zero)
    var = (centred * centred).sum() / (count - 1)
    return centred / (var.sqrt() + eps)
