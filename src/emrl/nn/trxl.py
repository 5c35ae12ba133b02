"""Transformer-XL memory cores for RL agents: TrXL, TrXL-I and GTrXL (spec §8).

- **TrXL** (Dai et al. 2019, "Transformer-XL"): relative positional attention with the
  two learned biases ``u`` (content) and ``v`` (position), segment-level recurrence
  over a memory of the last ``M`` hidden states of each layer (no gradient flows into
  it), post-sub-layer layer norm: ``h = LN(h + Attn(h)); h = LN(h + MLP(h))``.
- **TrXL-I** (Parisotto et al. 2019, §3.1): identity-map reordering, layer norm at the
  *input* of each sub-layer and a ReLU on its output, so an identity path runs from the
  core's input to its output: ``h = h + ReLU(Attn(LN(h))); h = h + ReLU(MLP(LN(h)))``.
- **GTrXL** (Parisotto et al. 2019, §3.2): TrXL-I with the residual additions replaced by
  gates ``g(x, y)`` (:mod:`emrl.nn.gates`), the GRU gate of spec §8 with ``b_g = 2`` by
  default: ``h = g1(h, ReLU(Attn(LN(h)))); h = g2(h, ReLU(MLP(LN(h))))``.

Attention of step ``i`` to step ``j`` (Dai et al. 2019, eq. in §3.3), per head::

    score(i, j) = (q_i + u)·k_j + (q_i + v)·(W_R R_{i−j}),    R = sinusoid(distance)

A query sees the keys at distance ``0 ≤ i − j ≤ M`` (itself and the ``M`` steps before
it: a sliding window as long as the memory) that belong to the same episode of the same
environment. Because the window is exactly the memory length, stepping the core one step
at a time (T = 1, as the actor does) gives the same outputs as one call over the whole
segment from the state stored at its start (as the update does).

State (batch first, see :mod:`emrl.nn.core`): ``(memory [B, L, M, d], valid [B, M])``.
``memory[:, l]`` holds the inputs of layer ``l`` at the last ``M`` steps (oldest first,
detached); ``valid`` is 1.0 where that slot holds a step of the environment's current
episode and 0.0 otherwise (before the episode started, or before a reset).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from emrl.errors import ConfigError, unknown_name_error
from emrl.nn.core import Core, State, check_core_inputs
from emrl.nn.gates import GATE_NAMES, build_gate

TRXL_CORE_NAMES = ("trxl", "trxl-i", "gtrxl")


def sinusoid_encoding(positions: torch.Tensor, d: int) -> torch.Tensor:
    """Sinusoidal encodings [K, d] of (relative) positions [K] (Vaswani et al. 2017)."""
    inv_freq = 1.0 / (
        10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32, device=positions.device) / d)
    )
    angles = positions.float()[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[:, :d]


class RelativeMultiHeadAttention(nn.Module):
    """Multi-head attention with Transformer-XL relative positions (Dai et al. 2019).

    ``h`` [B, T, d] (queries and the segment's keys), ``mem`` [B, M, d] (extra keys that
    precede the segment), ``mask`` bool [B, T, M+T] (True: may attend), ``rel`` [M+T, d]
    sinusoidal encodings of distances 0..M+T-1, ``dist`` long [T, M+T] the distance
    ``M + i − j`` of each query/key pair (clamped into range; masked where invalid).
    Returns [B, T, d].
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.q = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.kv = nn.Linear(d_model, 2 * n_heads * d_head, bias=False)
        self.r = nn.Linear(d_model, n_heads * d_head, bias=False)  # W_R of Dai et al.
        self.u = nn.Parameter(torch.zeros(n_heads, d_head))  # content bias
        self.v = nn.Parameter(torch.zeros(n_heads, d_head))  # position bias
        self.out = nn.Linear(n_heads * d_head, d_model, bias=False)
        self.drop = nn.Dropout(attn_dropout)

    def forward(
        self,
        h: torch.Tensor,
        mem: torch.Tensor,
        mask: torch.Tensor,
        rel: torch.Tensor,
        dist: torch.Tensor,
    ) -> torch.Tensor:
        B, T, _ = h.shape
        K = mem.shape[1] + T
        H, dh = self.n_heads, self.d_head
        q = self.q(h).view(B, T, H, dh)
        k, v = self.kv(torch.cat([mem, h], dim=1)).view(B, K, 2, H, dh).unbind(dim=2)
        r = self.r(rel).view(K, H, dh)  # one row per distance 0..K-1
        content = torch.einsum("bthd,bkhd->bhtk", q + self.u, k)
        by_distance = torch.einsum("bthd,rhd->bhtr", q + self.v, r)  # [B, H, T, distance]
        position = by_distance.gather(-1, dist.expand(B, H, T, K))  # -> [B, H, T, key]
        scores = (content + position) / math.sqrt(dh)
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        attn = self.drop(torch.softmax(scores, dim=-1))
        y = torch.einsum("bhtk,bkhd->bthd", attn, v).reshape(B, T, H * dh)
        return self.out(y)


class TrXLBlock(nn.Module):
    """One layer. ``norm_first=False``: TrXL (post-LN residual); ``True``: TrXL-I / GTrXL
    (pre-LN, ReLU on sub-layer outputs, combined with the stream by ``gate``)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_head: int,
        d_mlp: int,
        *,
        norm_first: bool,
        gate: str,
        gate_bias: float,
        dropout: float,
        attn_dropout: float,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = RelativeMultiHeadAttention(d_model, n_heads, d_head, attn_dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.ReLU(), nn.Linear(d_mlp, d_model))
        self.drop = nn.Dropout(dropout)  # residual dropout on each sub-layer output
        self.gate1 = build_gate(gate, d_model, gate_bias)
        self.gate2 = build_gate(gate, d_model, gate_bias)

    def forward(self, h, mem, mask, rel, dist):
        """``h`` [B, T, d], ``mem`` [B, M, d] -> [B, T, d] (arguments as for the attention)."""
        if not self.norm_first:  # TrXL (Dai et al. 2019)
            h = self.ln1(h + self.drop(self.attn(h, mem, mask, rel, dist)))
            return self.ln2(h + self.drop(self.mlp(h)))
        y = self.attn(self.ln1(h), self.ln1(mem), mask, rel, dist)
        h = self.gate1(h, self.drop(F.relu(y)))
        return self.gate2(h, self.drop(F.relu(self.mlp(self.ln2(h)))))


class TransformerXLCore(Core):
    """A TrXL / TrXL-I / GTrXL memory core: ``x`` [T, B, input_size] -> [T, B, d_model].

    The input is embedded by a linear layer, then passes ``n_layers`` blocks; every
    query attends over the memory and the segment within a window of ``memory_length``
    past steps, never across an episode reset (see the module docstring).
    """

    def __init__(
        self,
        input_size: int,
        *,
        variant: str,
        d_model: int,
        n_layers: int,
        n_heads: int,
        d_head: int,
        d_mlp: int,
        memory_length: int,
        dropout: float,
        attn_dropout: float,
        gate: str,
        gate_bias: float,
    ) -> None:
        super().__init__()
        self.variant = variant
        self.input_size = int(input_size)
        self.d_model, self.n_layers, self.memory_length = d_model, n_layers, memory_length
        self.output_size = d_model
        self.embed = nn.Linear(self.input_size, d_model)
        self.blocks = nn.ModuleList(
            TrXLBlock(
                d_model,
                n_heads,
                d_head,
                d_mlp,
                norm_first=variant != "trxl",
                gate=gate if variant == "gtrxl" else "residual",
                gate_bias=gate_bias,
                dropout=dropout,
                attn_dropout=attn_dropout,
            )
            for _ in range(n_layers)
        )

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> State:
        memory = torch.zeros(
            batch_size, self.n_layers, self.memory_length, self.d_model, device=device
        )
        valid = torch.zeros(batch_size, self.memory_length, device=device)
        return (memory, valid)

    def _check_state(self, state: State, batch_size: int) -> None:
        L, M, d = self.n_layers, self.memory_length, self.d_model
        if (
            len(state) != 2
            or tuple(state[0].shape) != (batch_size, L, M, d)
            or tuple(state[1].shape) != (batch_size, M)
        ):
            got = [tuple(s.shape) for s in state]
            raise ValueError(
                f"{self.variant} state must be (memory [B, {L}, {M}, {d}], valid [B, {M}]) "
                f"with B = {batch_size}, got shapes {got}"
            )

    def forward(
        self, x: torch.Tensor, state: State, reset: torch.Tensor
    ) -> tuple[torch.Tensor, State]:
        """``x`` [T, B, D], ``state`` (memory [B, L, M, d], valid [B, M]), ``reset`` bool
        [T, B] -> (``y`` [T, B, d], the state after step T-1)."""
        check_core_inputs(x, reset, self.input_size)
        T, B, _ = x.shape
        M = self.memory_length
        self._check_state(state, B)
        memory, valid = state[0].detach(), state[1]
        if memory.is_inference() and torch.is_grad_enabled():
            memory = memory.clone()  # a state saved by an inference-mode actor, used in the update
        device = x.device

        # Episode index of every query (segment step) and key (memory slot + segment step):
        # a reset at step t starts episode number (resets so far); valid memory belongs to
        # episode 0 and invalid memory to none (-1), so only same-episode pairs match.
        ep_q = reset.to(device).t().long().cumsum(dim=1)  # [B, T]
        ep_mem = torch.where(valid > 0.5, 0, -1).long()  # [B, M]
        ep_k = torch.cat([ep_mem, ep_q], dim=1)  # [B, K]
        K = M + T
        query_pos = torch.arange(T, device=device)[:, None] + M  # position in [memory; segment]
        dist = query_pos - torch.arange(K, device=device)[None, :]  # i - j: [T, K]
        in_window = (dist >= 0) & (dist <= M)  # causal, at most M steps back: [T, K]
        mask = in_window[None] & (ep_k[:, None, :] == ep_q[:, :, None])  # [B, T, K]
        rel = sinusoid_encoding(torch.arange(K, device=device), self.d_model).to(x.dtype)
        dist = dist.clamp(0, K - 1)

        h = self.embed(x).transpose(0, 1)  # [B, T, d]
        new_memory = []
        for layer, block in enumerate(self.blocks):
            new_memory.append(torch.cat([memory[:, layer], h], dim=1)[:, -M:])
            h = block(h, memory[:, layer], mask, rel, dist)
        new_valid = (ep_k == ep_q[:, -1:])[:, -M:].to(valid.dtype)
        return h.transpose(0, 1), (torch.stack(new_memory, dim=1).detach(), new_valid)


def build_trxl_core(
    name: str,
    input_size: int,
    *,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    d_head: int | None = None,
    d_mlp: int | None = None,
    memory_length: int = 64,
    dropout: float = 0.0,
    attn_dropout: float = 0.0,
    gate: str = "gru",
    gate_bias: float = 2.0,
    unroll_length: int | None = None,
) -> TransformerXLCore:
    """Build a ``trxl``, ``trxl-i`` or ``gtrxl`` core (spec §8).

    ``d_model``: embedding size; ``n_heads`` must divide it. ``d_head``: key/value size
    per head (default ``d_model // n_heads``; spec §8 uses 256 / 4 heads / 32).
    ``d_mlp``: hidden size of each block's MLP (default ``2 * d_model``, as 512 for 256
    in spec §8). ``memory_length``: number ``M`` of past steps kept per layer and the
    attention window. ``dropout``: residual dropout on sub-layer outputs;
    ``attn_dropout``: dropout on attention weights (both act in training mode only, so
    with dropout > 0 the update's recomputation differs from the actor's forward by the
    dropout noise; both default to 0). ``gate`` (GTrXL only): one of
    :data:`emrl.nn.gates.GATE_NAMES`; ``gate_bias``: initial ``b_g``. ``unroll_length``
    (optional): the agent's training segment length, checked to be positive.
    Bad values raise :class:`emrl.errors.ConfigError` naming the argument.
    """
    if name not in TRXL_CORE_NAMES:
        raise unknown_name_error("core", name, TRXL_CORE_NAMES)

    def positive(arg: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name} core: {arg} must be a positive integer, got {value!r}")
        return value

    positive("input_size", input_size)
    positive("d_model", d_model)
    positive("n_layers", n_layers)
    positive("n_heads", n_heads)
    positive("memory_length", memory_length)
    if unroll_length is not None:
        positive("unroll_length", unroll_length)
    if d_model % n_heads != 0:
        raise ConfigError(
            f"{name} core: n_heads={n_heads} must divide d_model={d_model} "
            f"(e.g. n_heads in {[h for h in range(1, d_model + 1) if d_model % h == 0][:8]})"
        )
    d_head = positive("d_head", d_model // n_heads if d_head is None else d_head)
    d_mlp = positive("d_mlp", 2 * d_model if d_mlp is None else d_mlp)
    for arg, p in (("dropout", dropout), ("attn_dropout", attn_dropout)):
        if not 0.0 <= float(p) < 1.0:
            raise ConfigError(f"{name} core: {arg} must be in [0, 1), got {p!r}")
    if gate not in GATE_NAMES:
        build_gate(gate, d_model)  # raises ConfigError naming the gate and the choices
    return TransformerXLCore(
        input_size,
        variant=name,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        memory_length=memory_length,
        dropout=float(dropout),
        attn_dropout=float(attn_dropout),
        gate=gate,
        gate_bias=float(gate_bias),
    )
