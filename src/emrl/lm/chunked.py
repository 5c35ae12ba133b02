"""Vocabulary-bounded forward passes: log-probs and the exact KL in chunks of tokens.

A plain teacher-forced pass materialises the logits ``[n, S, V]`` of a minibatch — and,
for the exact trust-region KL, keeps π_old's logits ``[N, S, V]`` of the whole batch
from the rollout to the M-step. With ``--logp-chunk-size C`` the policy returns its last
hidden states ``[n, S, H]`` instead; the output layer, the log-softmax, the log-prob of
each completion token and the exact per-token ``KL(π_old ‖ π_θ)`` (spec §5 eq. 1) are
computed for ``C`` completion tokens at a time, each chunk under activation
checkpointing, so at any moment at most ``C × V`` logits (and their log-softmax) exist,
in the forward and in the backward. π_old is kept as its last hidden states
``[N, S, H]`` plus a snapshot of the output layer taken at the rollout, from which its
logits are recomputed chunk by chunk; so the batch holds ``N × S × H`` floats rather than
``N × S × V``. Prompt and padding positions are never sent through the output layer.
The values and gradients equal those of the plain pass (tests).

Not available with targets that need the full distribution of every position (SFT
label smoothing / distillation, PPO's entropy bonus): :func:`check_config` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from emrl import objectives as O
from emrl.errors import ConfigError
from emrl.lm.forward import ForwardOut, decoder_hidden, split_model  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # pragma: no cover
    from emrl.lm.context import LoopContext
    from emrl.lm.rollout import Batch


@dataclass
class ChunkedOut(ForwardOut):
    """:class:`ForwardOut` without logits; ``kl_old`` is the minibatch's mean per-token
    exact ``KL(π_old ‖ π_θ)`` when the batch carries π_old's hidden states."""

    kl_old: Tensor | None = None


def check_config(cfg: Any, algo_name: str) -> None:
    """Refuse chunking where the loss needs every position's full distribution."""
    if not cfg.logp_chunk_size:
        return
    what = None
    if algo_name == "sft" and getattr(cfg, "target", "delta") in ("label_smoothing", "distill"):
        what = f"SFT target={cfg.target} (a target over the whole vocabulary at every position)"
    elif algo_name == "ppo" and getattr(cfg, "ent_coef", 0.0) > 0:
        what = "PPO's entropy bonus (ent_coef > 0)"
    if what:
        raise ConfigError(f"--logp-chunk-size does not support {what}; drop --logp-chunk-size, or "
                          "use target=delta / ent_coef=0")


def _chunk(h: Tensor, y: Tensor, W: Tensor, b: Tensor | None, old: tuple | None):
    logits = F.linear(h, W, b).float()  # [c, V]
    lp = O.token_logprobs(logits[None], y[None])[0]
    if old is None:
        return lp, None
    old_h, W0, b0 = old
    return lp, O.categorical_kl(F.linear(old_h, W0, b0).float(), logits)


def head_terms(hidden: Tensor, head: nn.Linear, input_ids: Tensor, completion_mask: Tensor,
               chunk_size: int, old: tuple[Tensor, Tensor, Tensor | None] | None = None):
    """``(logp[n, S], kl_tokens[T] | None, mask[n, S-1])`` from hidden states, ``chunk_size``
    completion tokens at a time (see the module docstring). ``old``: π_old's hidden
    states ``[n, S, H]`` and its output layer's weight and bias."""
    n, S, _ = hidden.shape
    m = completion_mask[:, 1:].bool()
    h = hidden[:, :-1][m]  # [T, H]: completion positions only
    y = input_ids[:, 1:][m]
    oh = old[0][:, :-1][m] if old is not None else None
    lps, kls = [], []
    ckpt = torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad)
    for s in range(0, h.shape[0], chunk_size):
        e = s + chunk_size
        o = (oh[s:e], old[1], old[2]) if old is not None else None
        args = (h[s:e], y[s:e], head.weight, head.bias, o)
        lp, kl = checkpoint(_chunk, *args, use_reentrant=False) if ckpt else _chunk(*args)
        lps.append(lp)
        if kl is not None:
            kls.append(kl)
    flat = torch.cat(lps) if lps else hidden.new_zeros(0, dtype=torch.float32)
    lp_full = torch.zeros(n, S - 1, dtype=flat.dtype, device=hidden.device).masked_scatter(m, flat)
    logp = torch.cat([lp_full.new_zeros(n, 1), lp_full], dim=1)
    kl = (torch.cat(kls) if kls else flat.new_zeros(0)) if old is not None else None
    return logp, kl, m


def forward(ctx: LoopContext, batch: Batch, *, train: bool, need_logits: bool = False,
            need_values: bool = False, grad: bool = True) -> ChunkedOut:
    """:meth:`emrl.lm.context.LoopContext.forward` with ``logp_chunk_size`` set (see the
    module docstring).

    The π_old pass of a rollout (no gradient, logits wanted for the exact KL) stores
    ``batch["old_hidden"]`` and a snapshot of the output layer on the context; M-step
    passes over such a batch return ``kl_old``.
    """
    import contextlib

    cs = int(ctx.cfg.logp_chunk_size)
    ctx.policy.train(train)
    grad_ctx = contextlib.nullcontext() if grad else torch.no_grad()
    _, head = split_model(ctx.unwrapped)
    old = None
    if grad and "old_hidden" in batch and getattr(ctx, "_old_head", None) is not None:
        old = (batch["old_hidden"], *ctx._old_head)
    with grad_ctx:
        hidden, values = ctx.policy(batch["input_ids"], batch["attention_mask"], need_values,
                                    hidden_only=True)
        logp, kl, m = head_terms(hidden, head, batch["input_ids"], batch["completion_mask"], cs, old)
    if not grad and need_logits:
        batch["old_hidden"] = hidden.detach()
        ctx._old_head = (head.weight.detach().clone(),
                         None if head.bias is None else head.bias.detach().clone())
    vals = None
    if values is not None:
        vals = torch.cat([torch.zeros_like(values[:, :1]), values[:, :-1]], dim=1)
    kl_mean = kl.sum() / m.sum().clamp(min=1) if kl is not None else None
    return ChunkedOut(logp=logp, logits=None, values=vals, kl_old=kl_mean)
