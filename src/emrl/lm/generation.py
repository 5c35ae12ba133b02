"""Batched sampling of completions with Hugging Face ``generate``.

:func:`generate` draws ``k`` completions per prompt from the current policy (in eval
mode, no dropout — spec §9: rollouts are sampled without dropout) and returns a
:class:`Rollout` in the batch layout of :mod:`emrl.lm.forward`, with the sampling
policy's per-token log-probabilities, ready for scoring, the E-step (advantages per
group of ``k``, spec §6) and a teacher-forced M-step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from emrl.errors import ConfigError, EmrlError
from emrl.lm.forward import assemble_batch, fit_to_context, position_ids_from_mask
from emrl.lm.models import context_length


@dataclass
class Rollout:
    """``N = num_prompts · k`` sampled completions; the k samples of a prompt are contiguous.

    Tensors are on the CPU (move them with :meth:`to`).

    Attributes:
        prompts: ``N`` prompt texts (each repeated k times).
        texts: ``N`` completion texts (decoded without special tokens, EOS excluded).
        group: ``[N]`` long, index of the prompt in the input list.
        input_ids: ``[N, P + L]`` long, left-padded prompt then completion then padding.
        attention_mask: ``[N, P + L]`` long, 1 on real tokens.
        completion_mask: ``[N, P + L]`` bool, True on completion tokens (EOS included).
        sample_logprobs: ``[N, P + L]`` float32, log-prob of each completion token under the
            distribution it was sampled from (after temperature / top-p), 0 elsewhere.
        policy_logprobs: ``[N, P + L]`` float32, the model's own log-probs (temperature 1,
            no top-p) of the same tokens; equals ``sample_logprobs`` when temperature=1
            and top_p=1 (and for greedy decoding). Both ``None`` when not asked for.
        completion_lengths: ``[N]`` long, completion tokens incl. EOS.
        finished: ``[N]`` bool, the completion ended with EOS (else hit max_new_tokens).
        prompt_len: ``P``.
    """

    prompts: list[str]
    texts: list[str]
    group: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    sample_logprobs: Tensor | None
    policy_logprobs: Tensor | None
    completion_lengths: Tensor
    finished: Tensor
    prompt_len: int

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_tokens(self) -> int:
        """Completion tokens in the batch."""
        return int(self.completion_lengths.sum())

    def to(self, device) -> Rollout:
        """A copy with every tensor on ``device``."""
        return dataclasses.replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            },
        )

    def select(self, index: Tensor | list[int]) -> Rollout:
        """The rows ``index`` (e.g. a minibatch); lists and tensors are indexed alike."""
        idx = torch.as_tensor(index, dtype=torch.long)
        kw = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                kw[f.name] = v[idx.to(v.device)]
            elif isinstance(v, list):
                kw[f.name] = [v[i] for i in idx.tolist()]
            else:
                kw[f.name] = v
        return Rollout(**kw)


def _shared_prompt_cache(model, rows: list[int], input_ids: Tensor, attn: Tensor) -> dict:
    """``generate``'s cache keyword holding each distinct prompt's key/value states, computed
    once and repeated for the prompt's samples (``{}`` when no prompt repeats, or when the
    model does not return a reorderable cache: then ``generate`` prefills every row).

    The last prompt token is left to ``generate``, which needs its logits for the first
    sampled token; rows of one prompt are identical, so their states are too.
    """
    distinct = len(set(rows))
    if input_ids.shape[1] < 2 or distinct == len(rows):
        return {}
    r = torch.as_tensor(rows)
    first = torch.ones(len(rows), dtype=torch.bool)
    first[1:] = r[1:] != r[:-1]
    if distinct != int(first.sum()):  # needs the rows of one prompt contiguous, as `generate` orders them
        return {}
    heads = first.nonzero().squeeze(1).to(input_ids.device)
    expand = (torch.cumsum(first.long(), 0) - 1).to(input_ids.device)  # row -> its distinct prompt
    ids, mask = input_ids[heads, :-1], attn[heads, :-1]
    if not bool(mask.any(1).all()):  # a one-token prompt: nothing to cache for it
        return {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=True)
    for name in ("cache", "past_key_values"):  # transformers >= 5 names it "cache"
        cache = out.get(name) if hasattr(out, "get") else None
        if cache is not None:
            break
    if cache is None or not hasattr(cache, "reorder_cache") or not hasattr(cache, "get_seq_length"):
        return {}
    cache.reorder_cache(expand)
    return {name: cache}


def _check_sampling(num_samples, max_new_tokens, temperature, top_p, batch_size):
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    batch_size: int | None = None,
    truncate_prompts: bool = False,
    logprobs: bool = True,
) -> Rollout:
    """Sample ``num_samples`` completions for each prompt (stop at EOS).

    Args:
        model: HF causal LM; put in eval mode for sampling and restored afterwards.
        tokenizer: its tokenizer (needs EOS; pad defaults to EOS).
        prompts: ``B`` prompt texts (already templated).
        num_samples: ``k`` completions per prompt (greedy: k identical copies).
        max_new_tokens: completion budget ``L_max`` (EOS included).
        temperature, top_p: sampling distribution (``top_k`` is off).
        greedy: argmax decoding instead of sampling.
        batch_size: sequences per ``generate`` call (default: all ``B·k`` at once).
        truncate_prompts: cut prompts too long for the context (prompt + max_new_tokens)
            from the left instead of raising :class:`EmrlError`.
        logprobs: also return the per-token log-probs (``sample_logprobs``,
            ``policy_logprobs``). transformers keeps every step's ``[b, V]`` scores for
            them, ``b × L × V`` floats; without them generation holds one step's.

    Returns:
        :class:`Rollout` with ``N = B·k`` rows. Uses the global torch RNG.
    """
    from transformers import GenerationConfig

    _check_sampling(num_samples, max_new_tokens, temperature, top_p, batch_size)
    if not prompts:
        raise EmrlError("generate: no prompts given")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise EmrlError("generate: the tokenizer has no EOS token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ctx = context_length(model)
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    encoded = [
        fit_to_context(list(ids), max_new_tokens, ctx, truncate=truncate_prompts, index=i)
        for i, ids in enumerate(encoded)
    ]
    n = len(prompts) * num_samples
    order = [i for i in range(len(prompts)) for _ in range(num_samples)]
    bs = batch_size or n
    same_dist = greedy or (float(temperature) == 1.0 and float(top_p) == 1.0)
    gen_cfg = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else float(temperature),
        top_p=None if greedy else float(top_p),
        top_k=None if greedy else 0,  # off (else transformers fills in its default, 50)
        max_new_tokens=int(max_new_tokens),
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=tokenizer.bos_token_id,
        return_dict_in_generate=True,
        # at temperature 1 without top-p the sampled distribution is the model's own: the
        # raw logits give both log-prob sets, so the processed scores are not kept
        output_scores=logprobs and not same_dist,
        output_logits=logprobs,
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    comp_ids: list[list[int]] = []
    sample_lp: list[list[float]] = []
    policy_lp: list[list[float]] = []
    finished: list[bool] = []
    try:
        for start in range(0, n, bs):
            rows = order[start : start + bs]
            batch = assemble_batch([encoded[i] for i in rows], [[] for _ in rows], pad)
            input_ids = batch["input_ids"].to(device)
            attn = batch["attention_mask"].to(device)
            # synced_gpus off: transformers turns it on for FSDP-managed models, but emrl gathers
            # a sharded policy's weights before generating (emrl.lm.sharding.full_params), so no
            # process waits for another (evaluation runs on the main process alone)
            out = model.generate(input_ids=input_ids, attention_mask=attn, generation_config=gen_cfg,
                                 synced_gpus=False, **_shared_prompt_cache(model, rows, input_ids, attn))
            gen = out.sequences[:, input_ids.shape[1] :].cpu()  # [b, L_b]
            steps = gen.shape[1]
            # one [b, V] step at a time: never hold [b, L_b, V] (large vocabularies)
            tok = out.sequences[:, input_ids.shape[1] :].unsqueeze(-1)  # [b, L_b, 1]
            if logprobs:
                p_lp = torch.stack(  # raw logits: the model at temperature 1
                    [torch.log_softmax(lg.float(), -1).gather(-1, tok[:, t]).squeeze(-1)
                     for t, lg in enumerate(out.logits)], 1).cpu()
                s_lp = p_lp if same_dist else torch.stack(  # processed scores: what was sampled
                    [torch.log_softmax(sc.float(), -1).gather(-1, tok[:, t]).squeeze(-1)
                     for t, sc in enumerate(out.scores)], 1).cpu()
            is_eos = gen == eos
            hit = is_eos.any(1)
            lengths = torch.where(hit, is_eos.int().argmax(1) + 1, torch.full_like(hit, steps, dtype=torch.long))
            gen_rows = gen.tolist()
            if logprobs:
                s_rows, p_rows = s_lp.tolist(), (p_lp.tolist() if not same_dist else None)
            for r, length in enumerate(lengths.tolist()):
                comp_ids.append(gen_rows[r][:length])
                if logprobs:
                    sample_lp.append(s_rows[r][:length])
                    if p_rows is not None:
                        policy_lp.append(p_rows[r][:length])
            finished.extend(hit.tolist())
    finally:
        if was_training:
            model.train()
    layout = assemble_batch([encoded[i] for i in order], comp_ids, pad, sample_lp if logprobs else None)
    policy = None
    if logprobs:  # the same tokens' log-probs at temperature 1 (the sampled ones when T = 1)
        policy = layout["values"].clone() if same_dist else \
            assemble_batch([encoded[i] for i in order], comp_ids, pad, policy_lp)["values"]
    texts = [
        tokenizer.decode(c[:-1] if f else c, skip_special_tokens=True)
        for c, f in zip(comp_ids, finished, strict=True)
    ]
    return Rollout(
        prompts=[prompts[i] for i in order],
        texts=texts,
        group=torch.tensor(order, dtype=torch.long),
        input_ids=layout["input_ids"],
        attention_mask=layout["attention_mask"],
        completion_mask=layout["completion_mask"],
        sample_logprobs=layout.get("values"),
        policy_logprobs=policy,
        completion_lengths=layout["completion_lengths"],
        finished=torch.tensor(finished, dtype=torch.bool),
        prompt_len=layout["prompt_len"],
    )
