"""Language-model pieces the experiments share, built on stable interfaces only.

* :func:`train_sft` / :func:`train_rl` run ``emrl lm sft`` / ``emrl lm train`` through
  :func:`emrl.cli.main` and read the run directory back (``eval.json``, ``metrics.jsonl``,
  ``final/``): the command line's contract, not the trainer's internals.
* :func:`rollouts` samples completions of the default arithmetic task (reasoning-gym
  ``basic_arithmetic``, scored by reasoning-gym's own verifier) from a saved model with
  transformers' ``generate``, and :func:`sequence_logprobs` scores them under any model,
  so E-step weights can be computed on real batches.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

from emrl.errors import EmrlError

#: the default task of ``emrl lm`` (its options), and its prompt template
TASK_OPTIONS = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=("+", "-"),
                    allow_parentheses=False, allow_negation=False)
TEMPLATE = "{expression}="


def run_cli(argv: list[str], log_path: Path | None = None) -> None:
    """``emrl ARGV`` in this process; its output goes to ``log_path``; a non-zero exit
    raises :class:`EmrlError` with the log's tail."""
    from emrl.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = main(list(argv))
    text = buf.getvalue()
    if log_path is not None:
        log_path.write_text(text, encoding="utf-8")
    if rc == 130:  # emrl's answer to Ctrl-C: the cell was interrupted, not measured
        raise KeyboardInterrupt
    if rc != 0:
        raise EmrlError(f"`emrl {' '.join(argv)}` exited with status {rc}: {text[-800:]}")


def read_run(run_dir: Path) -> dict[str, Any]:
    """``{"eval": eval.json, "metrics": [metrics.jsonl rows]}`` of a finished run."""
    out: dict[str, Any] = {"eval": {}, "metrics": []}
    ev = run_dir / "eval.json"
    if ev.exists():
        out["eval"] = json.loads(ev.read_text())
    mp = run_dir / "metrics.jsonl"
    if mp.exists():
        out["metrics"] = [json.loads(line) for line in mp.read_text().splitlines() if line.strip()]
    return out


def train_sft(run_dir: Path, *, model: str = "tiny", max_steps: int, seed: int = 0, eval_prompts: int = 100,
              extra: list[str] | None = None) -> Path:
    """An SFT start model (from ``model``, default the tiny preset), cached: reused when ``run_dir/final`` and
    its ``eval.json`` exist. Returns the ``final/`` model directory."""
    final = run_dir / "final"
    if final.is_dir() and (run_dir / "eval.json").exists():
        return final
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    argv = ["lm", "sft", "--model", model, "--max-steps", str(max_steps), "--seed", str(seed),
            "--num-threads", "1", "--output-dir", str(run_dir), "--no-eval-at-start",
            "--eval-num-prompts", str(eval_prompts), "--eval-samples", "0", *(extra or [])]
    run_cli(argv, run_dir.parent / f"{run_dir.name}.log")
    return final


def start_models(shared_dir: Path, *, model: str = "tiny", sft_steps: int, rl_steps: int = 0,
                 rl_flags: list[str] | None = None, eval_prompts: int = 100) -> dict[str, str]:
    """The models a grid shares, cached in ``shared_dir``: ``"sft"`` (``model`` after
    ``sft_steps`` SFT updates; ``model`` itself when ``sft_steps`` is 0) and, with
    ``rl_steps``, ``"moved"`` (that model after ``rl_steps`` V-MPO updates: a policy that
    has moved away from its reference)."""
    from emrl.experiments.framework import _say

    out: dict[str, str] = {}
    if sft_steps <= 0:
        if model == "tiny":
            raise EmrlError("the tiny model needs SFT updates (sft_steps >= 1) before RL")
        out["sft"] = model
    else:
        if not (shared_dir / "sft" / "final").is_dir():
            _say(f"training the shared SFT start model ({sft_steps} updates of {model}) in {shared_dir / 'sft'}")
        out["sft"] = str(train_sft(shared_dir / "sft", model=model, max_steps=sft_steps,
                                   eval_prompts=eval_prompts))
    if rl_steps:
        moved = shared_dir / "moved"
        if not ((moved / "final").is_dir() and (moved / "eval.json").exists()):
            _say(f"moving it by {rl_steps} V-MPO updates in {moved}")
            train_rl(moved, out["sft"], "vmpo", ["--max-steps", str(rl_steps), "--eval-every", "0",
                                                 "--no-eval-at-start", "--eval-num-prompts", "20",
                                                 "--eval-samples", "0", *(rl_flags or [])], seed=0)
        out["moved"] = str(moved / "final")
    return out


def train_rl(run_dir: Path, model: str | Path, algo: str, flags: list[str], *, seed: int) -> dict[str, Any]:
    """``emrl lm train --algo ALGO`` from ``model`` into ``run_dir``; returns :func:`read_run`."""
    argv = ["lm", "train", "--algo", algo, "--model", str(model), "--seed", str(seed), "--output-dir",
            str(run_dir), "--num-threads", "1", "--overwrite", *flags]
    run_cli(argv, run_dir.parent / f"{run_dir.name}.log")
    return read_run(run_dir)


def load(model_dir: str | Path):
    """``(model, tokenizer)`` of a saved model directory, by transformers' Auto classes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"
    model.eval()
    return model, tok


def task_items(n: int, seed: int) -> tuple[list[str], list[dict], Any]:
    """``n`` prompts of the default task, their reasoning-gym items, and the dataset (verifier)."""
    import reasoning_gym

    ds = reasoning_gym.create_dataset("basic_arithmetic", **TASK_OPTIONS, seed=seed, size=n)
    items = [ds[i] for i in range(n)]
    prompts = [TEMPLATE.format(expression=it["metadata"]["expression"]) for it in items]
    return prompts, items, ds


def rollouts(model, tok, prompts: list[str], items: list[dict], ds, *, k: int, seed: int,
             max_new_tokens: int = 8, temperature: float = 1.0) -> dict[str, Any]:
    """``k`` sampled completions per prompt: token tensors, texts and verifier rewards.

    Returns ``{"input_ids" [N, L], "attention_mask" [N, L], "completion_mask" [N, L]
    (True on completion tokens), "completions" [N] str, "rewards" [N] float tensor,
    "group" [N] prompt index}``, N = len(prompts)·k, groups contiguous.
    """
    import torch

    torch.manual_seed(seed)
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                             max_new_tokens=max_new_tokens, num_return_sequences=k,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    L0 = enc["input_ids"].shape[1]
    prompt_mask = enc["attention_mask"].repeat_interleave(k, dim=0).bool()
    gen = out[:, L0:]
    # completion tokens: up to and including the first EOS
    is_eos = gen == tok.eos_token_id
    after = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    comp_mask = after == 0
    attention = torch.cat([prompt_mask, comp_mask], dim=1)
    completion_mask = torch.cat([torch.zeros_like(prompt_mask), comp_mask], dim=1)
    texts = tok.batch_decode(torch.where(comp_mask, gen, torch.full_like(gen, tok.pad_token_id)),
                             skip_special_tokens=True)
    rewards = []
    for i, text in enumerate(texts):
        item = items[i // k]
        rewards.append(float(ds.score_answer(text.strip(), item)))
    return {"input_ids": out, "attention_mask": attention, "completion_mask": completion_mask,
            "completions": texts, "rewards": torch.tensor(rewards, dtype=torch.float64),
            "group": torch.arange(len(prompts)).repeat_interleave(k)}


def sequence_logprobs(model, batch: dict[str, Any]):
    """``[N]`` log-probability of each completion (sum over its tokens) under ``model``."""
    import torch

    import emrl.objectives as O

    ids, att = batch["input_ids"], batch["attention_mask"]
    pos = (torch.cumsum(att.long(), dim=1) - 1).clamp_min(0)  # left padding: positions from the mask
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=att.long(), position_ids=pos).logits[:, :-1]
    lp = O.token_logprobs(logits, ids[:, 1:])
    m = batch["completion_mask"][:, 1:]
    return torch.where(m, lp, torch.zeros_like(lp)).sum(dim=1).double()


#: per-update metrics kept in a training cell's record (the run directory's names)
CURVE_KEYS = ("reward/mean", "estep/eta", "estep/ess", "estep/weight_entropy", "estep/selected_fraction",
              "mstep/kl", "mstep/sequences", "eval/accuracy")


def kl_to_reference(policy_dir: str | Path, ref_dir: str | Path, *, num_prompts: int, k: int, seed: int) -> float:
    """Monte-Carlo ``KL(π ‖ π_ref)`` per completion (nats): the mean of
    ``log π(y) − log π_ref(y)`` over ``k`` samples ``y ~ π`` of ``num_prompts`` held-out prompts."""
    model, tok = load(policy_dir)
    ref, _ = load(ref_dir)
    prompts, items, ds = task_items(num_prompts, seed=2000 + seed)
    batch = rollouts(model, tok, prompts, items, ds, k=k, seed=seed)
    return float((sequence_logprobs(model, batch) - sequence_logprobs(ref, batch)).mean())


def rl_cell(workdir: Path, model: str | Path, algo: str, flags: list[str], *, seed: int,
            kl_prompts: int = 0, kl_samples: int = 4) -> dict[str, Any]:
    """One training cell: ``emrl lm train`` from ``model``; returns the start and final
    held-out accuracy, the per-update curves of :data:`CURVE_KEYS`, and (``kl_prompts``)
    the final policy's KL to ``model``. A run that fails records ``failed`` and the
    error instead of raising (a divergence is a measurement)."""
    run_dir = workdir / "run"
    try:
        run = train_rl(run_dir, model, algo, flags, seed=seed)
    except EmrlError as e:
        return {"failed": True, "error": str(e)[-400:]}
    for ck in run_dir.glob("checkpoint-*"):  # the final model is all a record needs
        shutil.rmtree(ck, ignore_errors=True)
    rows = run["metrics"]
    curves = {key: [[r["step"], r[key]] for r in rows if key in r and r[key] is not None] for key in CURVE_KEYS}
    acc = curves["eval/accuracy"]
    out: dict[str, Any] = {"failed": False, "start_accuracy": acc[0][1] if acc and acc[0][0] == 0 else None,
                           "final_accuracy": run["eval"].get("accuracy"), "steps": rows[-1]["step"] if rows else 0,
                           "curves": curves}
    nonfinite = sum(float(r.get("mstep/nonfinite_skipped", 0.0) or 0.0) for r in rows)
    out["nonfinite_steps"] = nonfinite
    if kl_prompts:
        out["kl_ref"] = kl_to_reference(run_dir / "final", model, num_prompts=kl_prompts, k=kl_samples, seed=seed)
    return out
