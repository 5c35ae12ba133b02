"""Shared helpers of the LM-trainer tests: a very small real model and a synthetic task.

The synthetic task has a known optimum: the reward of a completion is the fraction of its
characters that are digits (``digit_fraction``), so the best policy writes only digits. A
fresh tiny model writes a digit about one time in ten.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from emrl.lm.models import TinyModelConfig, load_model_and_tokenizer
from emrl.lm.tasks import load_task
from emrl.lm.train_config import RLConfig, SFTConfig
from emrl.lm.trainer import LMTrainer

SMALL = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                        max_position_embeddings=64)


def digit_fraction(prompts, completions, **_):
    """Reward: fraction of digit characters in the completion (0 for an empty one)."""
    return [sum(c.isdigit() for c in t) / len(t) if t else 0.0 for t in completions]


def small_model(seed: int = 0):
    return load_model_and_tokenizer("tiny", seed=seed, tiny_config=SMALL)


def write_task(tmp_path: Path, n: int = 48) -> Path:
    """A JSONL task: prompts ``"p<i>>"``, demonstration and answer ``"<i % 10>7"``."""
    path = Path(tmp_path) / "task.jsonl"
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"p{i}>", "completion": f"{i % 10}7", "answer": f"{i % 10}7"}) + "\n")
    return path


def digit_task(tmp_path: Path, n: int = 48, reward=digit_fraction):
    return load_task(str(write_task(tmp_path, n)), seed=0, num_eval=8, reward_funcs=[reward])


def rl_config(**kw) -> RLConfig:
    base = dict(max_steps=4, batch_size=8, num_samples=4, max_new_tokens=4, num_threads=1,
                eval_num_prompts=8, eval_samples=2, eval_every=0, learning_rate=3e-3)
    base.update(kw)
    return RLConfig(**base)


def sft_config(**kw) -> SFTConfig:
    base = dict(max_steps=4, batch_size=8, max_new_tokens=4, num_threads=1, eval_num_prompts=8,
                eval_samples=2, eval_every=0, warmup_steps=0)
    base.update(kw)
    return SFTConfig(**base)


def make_trainer(cfg, tmp_path: Path | None = None, out: str | None = "run", *, seed: int = 0,
                 reward=digit_fraction, **kw) -> LMTrainer:
    model, tok = small_model(seed)
    task = kw.pop("task", None) or digit_task(tmp_path, reward=reward)
    output = None if out is None else Path(tmp_path) / out
    return LMTrainer(cfg, output, model=model, tokenizer=tok, task=task, **kw)


def demo_nll(trainer: LMTrainer) -> float:
    """Mean per-token NLL of the task's training demonstrations under the policy (eval mode)."""
    rows = trainer.task.train
    b = trainer.encode([r["prompt"] for r in rows], [r["completion"] for r in rows], rows)
    with torch.no_grad():
        out = trainer.forward(b, train=False, grad=False)
    m = b["completion_mask"]
    return float(-(out.logp * m).sum() / m.sum())
