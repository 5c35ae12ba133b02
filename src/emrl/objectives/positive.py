"""Positive parameterisations of the duals: the one place where an unconstrained
parameter ``ξ`` becomes a positive temperature η or Lagrange multiplier α (spec §6
"Positive Parameterisation of the Temperature"; the same map serves α of spec §5 eq. 1).

:func:`temperature` is the map (softplus, the spec's form, or exp), and
:func:`inverse_temperature_param` its inverse (to initialise ``ξ`` from a value).
:class:`emrl.objectives.duals.Duals` holds the parameters and their optimiser.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from emrl.objectives._checks import check_choice, check_positive, check_tensor, to_float

__all__ = ["TEMPERATURE_PARAMS", "temperature", "inverse_temperature_param"]

TEMPERATURE_PARAMS = ("softplus", "log")


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
