"""Teacher-forced forward passes and the prompt + completion batch layout.

Every LM batch in emrl (sampled rollouts and SFT demonstrations alike) has one layout,
``[N, P + L]``:

    [pad .. pad | prompt tokens (left-padded to P) | completion tokens .. EOS | pad .. pad]

``attention_mask`` is 1 on real tokens, ``completion_mask`` is True on completion tokens
(EOS included). Position ids are ``cumsum(attention_mask) - 1`` so left padding does
not shift positions. :func:`policy_forward` (training's pass: the policy module with its
optional value head) and :func:`completion_logprobs` (a bare model, inputs checked) share
one implementation (:func:`lm_call` + :func:`shifted_logp`) and return ``logp[:, j] =
log π(x_j | x_<j)`` at completion positions — the per-token terms of
``log π_θ(τ | x) = Σ_t log π_θ(a_t | s_t)`` (spec §6, "Token-Level Form") that the M-step
(weighted NLL), trust regions and PPO ratios use. :mod:`emrl.lm.chunked` is the
vocabulary-chunked variant of :func:`policy_forward`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emrl.errors import ConfigError, EmrlError
from emrl.nn.heads import ValueHead
from emrl.objectives import token_logprobs


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """``[N, T]`` positions counting real tokens only (0 on left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class ForwardOut:
    """One teacher-forced pass of the policy over a batch.

    ``logp[n, S]``: ``log π(token j | tokens < j)`` at completion positions, 0 elsewhere.
    ``logits[n, S-1, V]``: the logits predicting tokens ``1..S-1`` (aligned with
    ``logp[:, 1:]``), when asked for. ``values[n, S]``: value-head output for the state
    before token ``j`` (aligned like ``logp``), when the algorithm has a value head.
    """

    logp: Tensor
    logits: Tensor | None = None
    values: Tensor | None = None


def lm_call(lm: nn.Module, input_ids: Tensor, attention_mask: Tensor, hidden: bool = False):
    """One causal-LM call; positions count real tokens only, as in generation with left padding."""
    return lm(input_ids=input_ids, attention_mask=attention_mask,
              position_ids=position_ids_from_mask(attention_mask),
              output_hidden_states=hidden, use_cache=False)


def shifted_logp(logits: Tensor, input_ids: Tensor, completion_mask: Tensor,
                 chunk_size: int | None = None) -> Tensor:
    """``logp[n, S]`` from full logits ``[n, S, V]``: ``log π(x_j | x_<j)`` where
    ``completion_mask[:, j]``, 0 elsewhere (column 0 is always 0)."""
    lp = token_logprobs(logits[:, :-1], input_ids[:, 1:], chunk_size=chunk_size)
    lp = torch.where(completion_mask[:, 1:].bool(), lp, torch.zeros_like(lp))
    return torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)


def first_index(mask: Tensor) -> Tensor:
    """Index of the first True position of each row of ``mask[n, S]``."""
    S = mask.shape[1]
    pos = torch.arange(S, device=mask.device).expand_as(mask)
    return torch.where(mask, pos, torch.full_like(pos, S)).min(1).values.clamp(max=S - 1)


def make_value_head(hidden_size: int) -> nn.Module:
    """V(s) on the policy's last hidden state: :class:`emrl.nn.heads.ValueHead`,
    zero-initialised (so V starts at 0 and the first advantages are the rewards)."""
    with torch.random.fork_rng(devices=[]):  # building it draws no training random numbers
        head = ValueHead(int(hidden_size))
    nn.init.zeros_(head.linear.weight)
    nn.init.zeros_(head.linear.bias)
    return head


def split_model(lm: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(decoder, output layer)`` of a transformers causal LM (peft-wrapped or not)."""
    inner = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    cfg = getattr(inner, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(cfg, attr, None):
            raise ConfigError(f"--logp-chunk-size: {type(inner).__name__} transforms its logits "
                              f"({attr}); run it without chunking")
    decoder = getattr(inner, "base_model", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if decoder is None or decoder is inner or not isinstance(head, nn.Linear):
        raise ConfigError(f"--logp-chunk-size: {type(inner).__name__} has no separate decoder and "
                          "linear output layer")
    return decoder, head


def decoder_hidden(lm: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The decoder's last hidden states ``[n, S, H]`` (after its final norm)."""
    decoder, _ = split_model(lm)
    out = decoder(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.last_hidden_state


class PolicyModule(nn.Module):
    """The causal LM plus an optional value head, as one module (so DDP syncs both)."""

    def __init__(self, lm: nn.Module, value_head: nn.Module | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.value_head = value_head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, need_values: bool = False,
                hidden_only: bool = False):
        if hidden_only:  # last hidden states instead of logits (emrl.lm.chunked)
            hidden = decoder_hidden(self.lm, input_ids, attention_mask)
            vh = self.value_head
            return hidden, (vh(hidden) if need_values and vh is not None else None)
        out = lm_call(self.lm, input_ids, attention_mask, hidden=need_values)
        values = None
        if need_values and self.value_head is not None:
            values = self.value_head(out.hidden_states[-1])
        return out.logits, values


def policy_forward(policy: nn.Module, batch, *, need_logits: bool = False, need_values: bool = False,
                   grad: bool = True) -> ForwardOut:
    """The teacher-forced pass training uses (the policy's current train/eval mode applies).

    ``batch`` maps ``input_ids``, ``attention_mask``, ``completion_mask`` to ``[n, S]``
    tensors; ``policy`` is a :class:`PolicyModule` (possibly wrapped by accelerate).
    See :class:`ForwardOut`; :mod:`emrl.lm.chunked` is its vocabulary-chunked variant.
    """
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    with ctx:
        logits, values = policy(batch["input_ids"], batch["attention_mask"], need_values)
    logp = shifted_logp(logits, batch["input_ids"], batch["completion_mask"])
    vals = None
    if values is not None:
        vals = torch.cat([torch.zeros_like(values[:, :1]), values[:, :-1]], dim=1)
    return ForwardOut(logp=logp, logits=logits[:, :-1] if need_logits else None, values=vals)


def frozen_logits(model: nn.Module, batch) -> Tensor:
    """Logits ``[n, S-1, V]`` of a frozen model (teacher), aligned like ``ForwardOut.logits``."""
    with torch.no_grad():
        return lm_call(model, batch["input_ids"], batch["attention_mask"]).logits[:, :-1]


def frozen_logp(model: nn.Module, batch) -> Tensor:
    """``logp[n, S]`` of a frozen model (reference) at completion positions."""
    with torch.no_grad():
        logits = lm_call(model, batch["input_ids"], batch["attention_mask"]).logits
        return shifted_logp(logits, batch["input_ids"], batch["completion_mask"])


def completion_logprobs(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    return_logits: bool = False,
    chunk_size: int | None = None,
):
    """Teacher-forced per-token log-probs of the completion tokens of a bare causal LM:
    the same computation as training's :func:`policy_forward` (:func:`lm_call` then
    :func:`shifted_logp`), with the inputs checked.

    Args:
        model: a HF causal LM (its current train/eval mode is used, so dropout applies
            in train mode; gradients flow unless the caller disables them).
        input_ids: ``[N, T]`` token ids (layout in the module docstring).
        attention_mask: ``[N, T]`` 1 on real tokens.
        completion_mask: ``[N, T]`` bool, True on completion tokens; must be False at
            column 0 (a completion token needs a preceding context).
        return_logits: also return the logits aligned with ``logp``.
        chunk_size: time steps per chunk of the log-softmax (memory; same result).

    Returns:
        ``logp`` ``[N, T]`` float32: ``logp[:, j] = log π(input_ids[:, j] | input_ids[:, <j])``
        where ``completion_mask[:, j]``, 0 elsewhere. With ``return_logits``:
        ``(logp, logits)`` where ``logits[:, j]`` ``[N, T, V]`` are the logits that predict
        token ``j`` (``logits[:, 0]`` is zero).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [N, T], got shape {tuple(input_ids.shape)}")
    for name, t in (("attention_mask", attention_mask), ("completion_mask", completion_mask)):
        if tuple(t.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(t.shape)}"
            )
    cmask = completion_mask.bool()
    if cmask[:, 0].any():
        raise ValueError("completion_mask must be False at column 0 (no context to predict it)")
    logits = lm_call(model, input_ids, attention_mask).logits  # logits[:, j] predicts token j + 1
    logp = shifted_logp(logits, input_ids, cmask, chunk_size=chunk_size)
    if not return_logits:
        return logp
    aligned = torch.cat([logits.new_zeros(logits.shape[0], 1, logits.shape[-1]), logits[:, :-1]], 1)
    return logp, aligned


def assemble_batch(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    pad_token_id: int,
    completion_values: Sequence[Sequence[float]] | None = None,
) -> dict[str, Tensor]:
    """Lay out prompts (left-padded) and completions (right-padded) as ``[N, P + L]``.

    Returns a dict with ``input_ids`` (long), ``attention_mask`` (long),
    ``completion_mask`` (bool), ``completion_lengths`` ``[N]`` (long), ``prompt_len`` (P)
    and, when ``completion_values`` (one float per completion token) is given,
    ``values`` ``[N, P + L]`` float32 placed at the completion positions (0 elsewhere).
    """
    n = len(prompt_ids)
    if len(completion_ids) != n:
        raise ValueError(f"{n} prompts but {len(completion_ids)} completions")
    lp = [len(p) for p in prompt_ids]
    lc = [len(c) for c in completion_ids]
    P, L = max(lp, default=0), max(lc, default=0)
    pad = int(pad_token_id)
    # rows built as Python lists and converted once (a tensor op per row costs more than
    # the whole layout for the short sequences of an RL batch)
    rows = [[pad] * (P - a) + list(p) + list(c) + [pad] * (L - b)
            for p, c, a, b in zip(prompt_ids, completion_ids, lp, lc, strict=True)]
    input_ids = torch.tensor(rows, dtype=torch.long).reshape(n, P + L)
    p_len = torch.tensor(lp, dtype=torch.long).reshape(n, 1)
    lengths = torch.tensor(lc, dtype=torch.long)
    col = torch.arange(P + L).reshape(1, -1)
    completion_mask = (col >= P) & (col < P + lengths.reshape(n, 1))
    attention_mask = (((col >= P - p_len) & (col < P)) | completion_mask).long()
    values = None
    if completion_values is not None:
        if len(completion_values) != n:
            raise ValueError(f"{n} completions but {len(completion_values)} value rows")
        for i, (v, b) in enumerate(zip(completion_values, lc, strict=True)):
            if len(v) != b:
                raise ValueError(f"row {i}: {len(v)} values for {b} completion tokens")
        values = torch.tensor([[0.0] * P + list(v) + [0.0] * (L - b)
                               for v, b in zip(completion_values, lc, strict=True)],
                              dtype=torch.float32).reshape(n, P + L)
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "completion_lengths": lengths,
        "prompt_len": P,
    }
    if values is not None:
        out["values"] = values
    return out


def fit_to_context(
    prompt_ids: list[int],
    n_after: int,
    max_length: int | None,
    *,
    truncate: bool,
    what: str = "prompt",
    index: int = 0,
) -> list[int]:
    """Check ``len(prompt_ids) + n_after <= max_length``; else cut the prompt from the left
    (``truncate``) or raise :class:`EmrlError` naming the index and the lengths."""
    if max_length is None or len(prompt_ids) + n_after <= max_length:
        return prompt_ids
    keep = max_length - n_after
    if not truncate or keep < 1:
        raise EmrlError(
            f"{what} {index} has {len(prompt_ids)} tokens; with {n_after} more tokens it exceeds "
            f"the model's context of {max_length} tokens"
            + ("" if keep < 1 and truncate else " (enable prompt truncation to cut it from the left)")
        )
    return list(prompt_ids[-keep:])


def encode_prompt_completion(
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    add_eos: bool = True,
    max_length: int | None = None,
    truncate: bool = False,
) -> dict[str, Tensor]:
    """Tokenise (prompt, completion) pairs for a teacher-forced M-step (e.g. SFT, spec §6).

    The prompt is encoded with the tokenizer's special tokens (``<bos>`` for ``tiny``), the
    completion without, followed by EOS when ``add_eos``. Prompts that do not fit
    ``max_length`` (the model's context) with their completion raise :class:`EmrlError`,
    or are cut from the left when ``truncate``.

    Returns:
        :func:`assemble_batch`'s dict (``input_ids``, ``attention_mask``,
        ``completion_mask``, ``completion_lengths``, ``prompt_len``), all ``[N, P + L]``.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if add_eos and tokenizer.eos_token_id is None:
        raise EmrlError("the tokenizer has no EOS token")
    p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    c_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    if add_eos:
        c_ids = [list(c) + [tokenizer.eos_token_id] for c in c_ids]
    fitted = []
    for i, (p, c) in enumerate(zip(p_ids, c_ids, strict=True)):
        if max_length is not None and len(c) >= max_length:
            raise EmrlError(
                f"completion {i} has {len(c)} tokens, more than the model's context of {max_length}"
            )
        fitted.append(fit_to_context(list(p), len(c), max_length, truncate=truncate, index=i))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return assemble_batch(fitted, c_ids, pad)
