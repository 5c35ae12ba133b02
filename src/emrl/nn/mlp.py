"""A stateless multi-layer perceptron core (see :mod:`emrl.nn.core` for the interface)."""

from __future__ import annotations

import math

import torch
from torch import nn

from emrl.errors import ConfigError
from emrl.nn.core import Core, State, check_core_inputs

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


def orthogonal_init(layer: nn.Linear, gain: float = math.sqrt(2.0)) -> nn.Linear:
    """Orthogonal weights and zero bias (the usual initialisation for PPO agents)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def mlp(input_size: int, hidden_sizes: tuple[int, ...] | list[int], activation: str = "tanh") -> nn.Sequential:
    """``Linear -> act`` for every hidden size (orthogonally initialised)."""
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; expected one of {sorted(_ACTIVATIONS)}")
    layers: list[nn.Module] = []
    d = input_size
    for h in hidden_sizes:
        if int(h) <= 0:
            raise ConfigError(f"hidden sizes must be positive, got {list(hidden_sizes)}")
        layers += [orthogonal_init(nn.Linear(d, int(h))), _ACTIVATIONS[activation]()]
        d = int(h)
    return nn.Sequential(*layers)


class MLPCore(Core):
    """Applies the same MLP at every step: ``y[t, b] = mlp(x[t, b])``; the state is ``()``.

    ``x`` [T, B, D] -> ``y`` [T, B, hidden_sizes[-1]] (or D when ``hidden_sizes`` is empty).
    """

    def __init__(
        self, input_size: int, hidden_sizes: tuple[int, ...] | list[int] = (64, 64),
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.net = mlp(self.input_size, hidden_sizes, activation)
        self.output_size = int(hidden_sizes[-1]) if len(hidden_sizes) else self.input_size

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> State:
        return ()

    def forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        check_core_inputs(x, reset, self.input_size)
        T, B = x.shape[:2]
        return self.forward_flat(x.reshape(T * B, self.input_size)).reshape(T, B, -1), ()

    def forward_flat(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP on 2-D inputs: ``x`` [M, D] -> [M, output_size] (no shape checks).

        Each Linear on 2-D inputs is one addmm (3-D inputs add view nodes to the graph);
        the layers' forward is called directly (no module hooks are used here, and the
        per-call hook machinery is a noticeable cost for small agents). Callers that
        already hold flat features (the control agent) use this to skip the
        [T, B] reshapes of :meth:`forward`; the values are the same.
        """
        h = x
        for layer in self.net:
            h = layer.forward(h)
        return h
