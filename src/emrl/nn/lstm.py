"""An LSTM core with per-environment resets (see :mod:`emrl.nn.core` for the interface).

State: ``(h, c)``, each [B, num_layers, H] (batch first, so indexing along dim 0 picks
environments). At ``reset[t, b]`` the state of env ``b`` is zeroed before step ``t``.
The sequence is processed in chunks between time steps where any env resets, each
chunk in one call of :class:`torch.nn.LSTM`, so a segment without resets costs one
fused call and the result equals stepping one time step at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from emrl.errors import ConfigError
from emrl.nn.core import Core, State, check_core_inputs


class LSTMCore(Core):
    """``x`` [T, B, D] -> ``y`` [T, B, hidden_size]."""

    def __init__(self, input_size: int, hidden_size: int = 128, num_layers: int = 1) -> None:
        super().__init__()
        if hidden_size <= 0 or num_layers <= 0:
            raise ConfigError(
                f"LSTM hidden_size and num_layers must be positive, got {hidden_size}, {num_layers}"
            )
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.lstm = nn.LSTM(self.input_size, self.hidden_size, self.num_layers)
        for name, p in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.zeros_(p)
            elif "weight" in name:
                nn.init.orthogonal_(p, 1.0)
        self.output_size = self.hidden_size

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> State:
        z = torch.zeros(batch_size, self.num_layers, self.hidden_size, device=device)
        return (z, z.clone())

    def forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        check_core_inputs(x, reset, self.input_size)
        h, c = state
        # nn.LSTM wants [num_layers, B, H]
        h = h.transpose(0, 1)
        c = c.transpose(0, 1)
        keep = (~reset).to(x.dtype)  # [T, B]
        T = x.shape[0]
        bounds = [0] + [t for t in range(1, T) if bool(reset[t].any())] + [T]
        if T == 1:
            bounds = [0, 1]
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            m = keep[a].view(1, -1, 1)
            h, c = h * m, c * m
            y, (h, c) = self.lstm(x[a:b], (h.contiguous(), c.contiguous()))
            outs.append(y)
        y = outs[0] if len(outs) == 1 else torch.cat(outs, 0)
        return y, (h.transpose(0, 1), c.transpose(0, 1))
