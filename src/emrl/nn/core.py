"""The memory-core interface shared by every control agent (MLP, LSTM, TrXL, GTrXL).

A *core* maps a sequence of encoded observations to features, carrying a recurrent
state (memory) between calls::

    State = tuple[Tensor, ...]        # every tensor has the batch dimension FIRST: [B, ...]
    core.initial_state(B)    -> State                  # () for stateless cores
    core(x[T, B, D], state, reset[T, B]) -> (y[T, B, H], new_state)

``reset[t, b]`` is True when step ``t`` of environment ``b`` starts a new episode:
nothing from before ``t`` may influence the output at ``t`` or later for that
environment (the core zeroes or masks its memory there).

The actor calls ``forward`` with ``T = 1`` at every environment step, carrying the
state. Rollout storage keeps, for each training segment of length ``T``, the state
at the segment's first step, so the update recomputes the whole segment in one call
``forward(x[T, B, D], stored_state, reset[T, B])`` and gets what the actor saw.
Indexing every tensor of a state along its first dimension (``tuple(s[idx] for s in
state)``) gives the state of those environments, so minibatches over environments
work for every core. Transformer cores (spec §8) keep, per layer, the last ``M``
hidden states (detached: no gradient flows into the memory) and a validity mask.

This module holds the interface only; the cores (:mod:`~emrl.nn.mlp`,
:mod:`~emrl.nn.lstm`, :mod:`~emrl.nn.trxl`) import it, and :func:`emrl.nn.build.build_core`
builds one by name.
"""

from __future__ import annotations

import torch
from torch import nn

State = tuple[torch.Tensor, ...]
"""A core's recurrent state: tensors with the batch dimension first, ``()`` if stateless."""

CORE_NAMES = ("mlp", "lstm", "trxl", "trxl-i", "gtrxl")
"""The cores :func:`emrl.nn.build.build_core` builds."""


class Core(nn.Module):
    """Base class of cores; subclasses set ``output_size`` and implement the two methods."""

    output_size: int

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """The state at the start of an episode for ``batch_size`` environments."""
        raise NotImplementedError

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, state: State, reset: torch.Tensor
    ) -> tuple[torch.Tensor, State]:
        """``x`` [T, B, D], ``state`` (tensors [B, ...]), ``reset`` bool [T, B] ->
        (``y`` [T, B, H], state after step T-1)."""
        raise NotImplementedError


def index_state(state: State, idx: torch.Tensor | slice | int) -> State:
    """The state of the environments ``idx`` (indexes each tensor along dim 0)."""
    return tuple(s[idx] for s in state)


def cat_states(states: list[State]) -> State:
    """Concatenate states of disjoint environment groups along the batch dimension."""
    if not states or len(states[0]) == 0:
        return ()
    return tuple(torch.cat(parts, dim=0) for parts in zip(*states, strict=True))


def check_core_inputs(x: torch.Tensor, reset: torch.Tensor, input_size: int) -> None:
    """Raise a clear ``ValueError`` when ``x``/``reset`` do not have shapes [T, B, D]/[T, B]."""
    if x.dim() != 3 or x.shape[-1] != input_size:
        raise ValueError(f"core input must have shape [T, B, {input_size}], got {tuple(x.shape)}")
    if reset.shape != x.shape[:2]:
        raise ValueError(
            f"reset must have shape [T, B] = {tuple(x.shape[:2])}, got {tuple(reset.shape)}"
        )
