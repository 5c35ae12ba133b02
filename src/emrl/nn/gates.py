"""Gating layers that replace the residual connections of a transformer block (GTrXL).

Parisotto et al. 2019, "Stabilizing Transformers for Reinforcement Learning", §3.2;
spec §8. Each gate combines the residual stream ``x`` with the (ReLU'd) sub-layer
output ``y`` into the next residual stream ``g(x, y)``; all tensors are [..., d].

========== =====================================================================
name       g(x, y)
========== =====================================================================
residual   x + y                                  (plain residual: TrXL-I)
input      σ(W_g x) ⊙ x + y
output     x + σ(W_g x − b_g) ⊙ y
highway    σ(W_g x + b_g) ⊙ x + (1 − σ(W_g x + b_g)) ⊙ y
sigmoid-   x + σ(W_g y − b_g) ⊙ tanh(U_g y)
tanh
gru        r = σ(W_r y + U_r x),  z = σ(W_z y + U_z x − b_g),
           ĥ = tanh(W_g y + U_g (r ⊙ x)),  g = (1 − z) ⊙ x + z ⊙ ĥ   (spec §8)
========== =====================================================================

``b_g`` is a learnable per-feature bias initialised to ``gate_bias`` (2.0 in spec §8),
which puts the gated gates near the identity map ``g(x, y) ≈ x`` at initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from emrl.errors import ConfigError, unknown_name_error

GATE_NAMES = ("gru", "input", "output", "highway", "sigmoid-tanh", "residual")


class ResidualGate(nn.Module):
    """``g(x, y) = x + y``: the ungated residual connection of TrXL-I."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class InputGate(nn.Module):
    """``g(x, y) = σ(W_g x) ⊙ x + y``."""

    def __init__(self, d: int, gate_bias: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.w(x)) * x + y


class OutputGate(nn.Module):
    """``g(x, y) = x + σ(W_g x − b_g) ⊙ y``."""

    def __init__(self, d: int, gate_bias: float = 2.0) -> None:
        super().__init__()
        self.w = nn.Linear(d, d, bias=False)
        self.b_g = nn.Parameter(torch.full((d,), float(gate_bias)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + torch.sigmoid(self.w(x) - self.b_g) * y


class HighwayGate(nn.Module):
    """``g(x, y) = σ(W_g x + b_g) ⊙ x + (1 − σ(W_g x + b_g)) ⊙ y``."""

    def __init__(self, d: int, gate_bias: float = 2.0) -> None:
        super().__init__()
        self.w = nn.Linear(d, d, bias=False)
        self.b_g = nn.Parameter(torch.full((d,), float(gate_bias)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = torch.sigmoid(self.w(x) + self.b_g)
        return c * x + (1.0 - c) * y


class SigmoidTanhGate(nn.Module):
    """``g(x, y) = x + σ(W_g y − b_g) ⊙ tanh(U_g y)``."""

    def __init__(self, d: int, gate_bias: float = 2.0) -> None:
        super().__init__()
        self.w = nn.Linear(d, d, bias=False)
        self.u = nn.Linear(d, d, bias=False)
        self.b_g = nn.Parameter(torch.full((d,), float(gate_bias)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + torch.sigmoid(self.w(y) - self.b_g) * torch.tanh(self.u(y))


class GRUGate(nn.Module):
    """The GRU-type gate of spec §8, exactly::

        r = σ(W_r y + U_r x)
        z = σ(W_z y + U_z x − b_g)
        ĥ = tanh(W_g y + U_g (r ⊙ x))
        g(x, y) = (1 − z) ⊙ x + z ⊙ ĥ

    ``x`` is the residual input, ``y`` the sub-layer output, both [..., d]. The six
    matrices have no bias; ``b_g`` [d] starts at ``gate_bias`` (2.0), so z ≈ σ(−2) ≈ 0.12
    and ``g(x, y)`` is close to ``x`` at initialisation. ``W_r, W_z`` and ``U_r, U_z``
    are stored fused as one [2d, d] matrix each.
    """

    def __init__(self, d: int, gate_bias: float = 2.0) -> None:
        super().__init__()
        self.d = d
        self.w_rz = nn.Linear(d, 2 * d, bias=False)  # [W_r; W_z]
        self.u_rz = nn.Linear(d, 2 * d, bias=False)  # [U_r; U_z]
        self.w_g = nn.Linear(d, d, bias=False)
        self.u_g = nn.Linear(d, d, bias=False)
        self.b_g = nn.Parameter(torch.full((d,), float(gate_bias)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r_pre, z_pre = (self.w_rz(y) + self.u_rz(x)).split(self.d, dim=-1)
        r = torch.sigmoid(r_pre)
        z = torch.sigmoid(z_pre - self.b_g)
        h = torch.tanh(self.w_g(y) + self.u_g(r * x))
        return (1.0 - z) * x + z * h


_GATES = {
    "gru": GRUGate,
    "input": InputGate,
    "output": OutputGate,
    "highway": HighwayGate,
    "sigmoid-tanh": SigmoidTanhGate,
}


def build_gate(name: str, d: int, gate_bias: float = 2.0) -> nn.Module:
    """A gate ``g(x, y)`` on features of size ``d`` by name (one of :data:`GATE_NAMES`)."""
    if name == "residual":
        return ResidualGate()
    if name not in _GATES:
        raise unknown_name_error("gate", name, GATE_NAMES, error=ConfigError, list_choices=True)
    return _GATES[name](d, gate_bias)
