"""Held-out evaluation: exact-match accuracy (greedy and sampled), pass@k and reward.

For each of the first ``num_prompts`` held-out rows of a task:

* greedy decoding → ``accuracy`` (exact match, :meth:`Task.is_correct`) and
  ``reward/mean`` (the task's reward of the greedy completion);
* ``num_samples = n > 0`` samples at ``temperature`` → ``sampled_accuracy`` (pass@1, the
  fraction of correct samples averaged over prompts), ``pass@k`` for k = 1 and k = n
  with the unbiased estimator ``1 − C(n−c, k) / C(n, k)`` (Chen et al. 2021, c correct
  of n), and ``sampled_reward/mean``.

All values are floats in ``[0, 1]`` except rewards; the model is evaluated in eval mode
(no dropout) and its mode is restored.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from emrl.errors import ConfigError, EmrlError
from emrl.lm.generation import generate


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 − C(n−c, k) / C(n, k)``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def default_max_new_tokens(tokenizer, rows: list[dict], margin: int = 4) -> int:
    """Longest answer (or demonstration) of ``rows`` in tokens plus EOS and ``margin``;
    64 when rows carry neither."""
    texts = [r.get("answer") or r.get("completion") for r in rows]
    texts = [t for t in texts if t]
    if not texts:
        return 64
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return max(len(i) for i in ids) + 1 + margin


def evaluate(
    model,
    tokenizer,
    task,
    *,
    num_prompts: int = 200,
    greedy: bool = True,
    num_samples: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int | None = 256,
    truncate_prompts: bool = False,
    return_samples: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``task.eval[:num_prompts]`` (see module docstring).

    Returns:
        dict with ``num_prompts`` and, as requested, ``accuracy``, ``reward/mean``
        (greedy), ``sampled_accuracy``, ``pass@1``, ``pass@<n>``, ``sampled_reward/mean``,
        ``num_samples``, ``temperature``, ``max_new_tokens``; with ``return_samples`` also
        ``samples``: one dict per prompt (prompt, answer, greedy completion, sampled ones).
        Accuracy keys need an ``answer`` column; reward keys need a task reward.
    """
    if num_prompts < 1:
        raise ConfigError(f"num_prompts must be >= 1, got {num_prompts}")
    if num_samples < 0:
        raise ConfigError(f"num_samples must be >= 0, got {num_samples}")
    if not greedy and num_samples == 0:
        raise ConfigError("nothing to evaluate: greedy=False and num_samples=0")
    rows = task.eval[:num_prompts]
    if not rows:
        raise EmrlError(f"task {task.name!r} has no held-out prompts to evaluate on")
    has_answers = all(r.get("answer") is not None for r in rows)
    has_reward = task.reward_fn is not None
    if not has_answers and not has_reward:
        raise EmrlError(
            f"task {task.name!r} has neither an 'answer' column nor a reward: nothing to measure"
        )
    max_new = max_new_tokens or default_max_new_tokens(tokenizer, rows)
    prompts = [r["prompt"] for r in rows]
    out: dict[str, Any] = {"num_prompts": len(rows), "max_new_tokens": max_new}
    samples = [{"prompt": r["prompt"], "answer": r.get("answer")} for r in rows]
    common = dict(max_new_tokens=max_new, batch_size=batch_size, truncate_prompts=truncate_prompts,
                  logprobs=False)  # texts only: no b x L x V scores kept
    if greedy:
        g = generate(model, tokenizer, prompts, greedy=True, **common)
        if has_answers:
            correct = [task.is_correct(t, r) for t, r in zip(g.texts, rows, strict=True)]
            out["accuracy"] = sum(correct) / len(rows)
        if has_reward:
            out["reward/mean"] = float(torch.tensor(task.reward(prompts, g.texts, rows)).mean())
        for s, t in zip(samples, g.texts, strict=True):
            s["greedy"] = t
    if num_samples > 0:
        n = num_samples
        s_roll = generate(
            model, tokenizer, prompts, num_samples=n, temperature=temperature, top_p=top_p, **common
        )
        srows = [rows[i] for i in s_roll.group.tolist()]
        out.update(num_samples=n, temperature=temperature)
        if has_answers:
            ok = torch.tensor(
                [task.is_correct(t, r) for t, r in zip(s_roll.texts, srows, strict=True)]
            ).view(len(rows), n)
            c = ok.sum(1).tolist()
            out["sampled_accuracy"] = float(ok.float().mean())
            out["pass@1"] = sum(pass_at_k(n, ci, 1) for ci in c) / len(rows)
            out[f"pass@{n}"] = sum(pass_at_k(n, ci, n) for ci in c) / len(rows)
        if has_reward:
            rew = task.reward(s_roll.prompts, s_roll.texts, srows)
            out["sampled_reward/mean"] = float(torch.tensor(rew).mean())
        for i, s in enumerate(samples):
            s["sampled"] = s_roll.texts[i * n : (i + 1) * n]
    if return_samples:
        out["samples"] = samples
    return out
