"""``emrl lm eval``: held-out accuracy and reward of a model on a task.

::

    emrl lm eval --model DIR/final [--task SPEC] [--num-prompts N] [--num-samples K]
                 [--output FILE] [--config FILE.yaml] [--seed S] ...

Prints ``accuracy: <value>`` (greedy exact match; ``reward/mean`` when the task has no
answers) followed by the other metrics, and writes them as JSON to ``eval.json``: in the
run directory when the model is an emrl run's ``final/`` (DESIGN.md run-directory
contract), else inside the model directory, or at ``--output``. Without ``--task`` the
task saved with the model by the emrl run that trained it is used (same held-out split).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emrl.config import add_config_args, build_config, cfg_field
from emrl.errors import EmrlError


@dataclass
class EvalConfig:
    """Config of ``emrl lm eval`` (every field is also a ``--field-name`` option)."""

    model: str | None = cfg_field(None, "Model: 'tiny' or a local HF causal-LM directory (required).")
    task: str | None = cfg_field(
        None,
        "Task spec: reasoning_gym:<name>[?k=v&...] or a data file; default: the task saved "
        "with the model, else the default arithmetic task.",
    )
    num_prompts: int = cfg_field(200, "Held-out prompts to evaluate on.")
    greedy: bool = cfg_field(True, "Evaluate greedy decoding (exact-match 'accuracy').")
    num_samples: int = cfg_field(
        0, "Samples per prompt at --temperature for sampled accuracy and pass@k (0: none)."
    )
    temperature: float = cfg_field(1.0, "Sampling temperature for --num-samples.")
    top_p: float = cfg_field(1.0, "Nucleus sampling threshold for --num-samples.")
    max_new_tokens: int | None = cfg_field(
        None, "Completion budget in tokens (default: longest answer + EOS + 4)."
    )
    batch_size: int = cfg_field(256, "Sequences per generate call.")
    seed: int = cfg_field(0, "Seed of sampling, and of the task split when --task is given.")
    num_eval: int | None = cfg_field(
        None, "Held-out set size when building the task (default: the saved one, or 200)."
    )
    template: str | None = cfg_field(None, "Prompt template override (str.format fields).")
    reward_funcs: list[str] | None = cfg_field(
        None, "Reward functions (module:function, exact_match, verifier, reward-model dir)."
    )
    reward_weights: list[float] | None = cfg_field(None, "Weights of --reward-funcs.")
    truncate_prompts: bool = cfg_field(
        False, "Cut prompts longer than the context from the left instead of failing."
    )
    trust_remote_code: bool = cfg_field(False, "Allow the model directory's own code.")
    num_threads: int | None = cfg_field(
        None, "torch CPU threads (default: $EMRL_NUM_THREADS or all usable CPUs)."
    )
    device: str | None = cfg_field(None, "Device, e.g. cpu or cuda (default: cuda if available).")
    output: str | None = cfg_field(None, "Where to write eval.json (default: see command help).")
    save_samples: bool = cfg_field(False, "Also write each prompt's completions to eval.json.")


def _default_output(model: str) -> Path | None:
    p = Path(model)
    if not p.is_dir():
        return None
    parent = p.parent
    if p.name == "final" and any((parent / n).exists() for n in ("config.yaml", "metrics.jsonl")):
        return parent / "eval.json"
    return p / "eval.json"


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Load model and task, evaluate, write ``eval.json``; return the results."""
    import torch

    from emrl.checkpoint import atomic_write_json
    from emrl.lm.evaluate import evaluate
    from emrl.lm.models import load_model_and_tokenizer
    from emrl.lm.tasks import load_task, load_task_from_info, load_task_info
    from emrl.seeding import seed_everything
    from emrl.threads import configure_threads

    if not cfg.model:
        raise EmrlError("--model is required ('tiny' or a local model directory)")
    threads = configure_threads(cfg.num_threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars are noise in a CLI report
    start = time.time()
    model, tokenizer = load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    info = load_task_info(cfg.model) if Path(cfg.model).is_dir() else None
    if cfg.task is None and info is not None:
        task = load_task_from_info(
            info, num_eval=cfg.num_eval, template=cfg.template, reward_funcs=cfg.reward_funcs,
            reward_weights=cfg.reward_weights, num_train=0, tokenizer=tokenizer,
        )
    else:
        task = load_task(
            cfg.task, seed=cfg.seed, num_train=0, num_eval=cfg.num_eval or 200,
            template=cfg.template, reward_funcs=cfg.reward_funcs, reward_weights=cfg.reward_weights,
            tokenizer=tokenizer,
        )
    if cfg.num_prompts > len(task.eval):
        raise EmrlError(
            f"--num-prompts {cfg.num_prompts} but task {task.name!r} holds out only "
            f"{len(task.eval)} prompts (raise --num-eval)"
        )
    seed_everything(cfg.seed)
    results = evaluate(
        model, tokenizer, task, num_prompts=cfg.num_prompts, greedy=cfg.greedy,
        num_samples=cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
        truncate_prompts=cfg.truncate_prompts, return_samples=cfg.save_samples,
    )
    results = {
        **{k: v for k, v in results.items() if k != "samples"},
        "model": cfg.model,
        "task": task.info(),
        "task_name": task.name,
        "seed": cfg.seed,
        "num_threads": threads,
        "device": str(device),
        "wall_time": time.time() - start,
        **({"samples": results["samples"]} if "samples" in results else {}),
    }
    out = Path(cfg.output) if cfg.output else _default_output(cfg.model)
    if out is not None:
        atomic_write_json(out, results)
        results["_path"] = str(out)
    return results


def _format(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _main(args: argparse.Namespace) -> int:
    cfg = build_config(EvalConfig, args)
    results = run_eval(cfg)
    path = results.pop("_path", None)
    head = "accuracy" if "accuracy" in results else "reward/mean"
    print(f"{head}: {_format(results[head])}")
    for k, v in results.items():
        if k != head and isinstance(v, (int, float)) and not isinstance(v, bool):
            print(f"{k}: {_format(v)}")
    if path:
        print(f"wrote {path}")
    else:
        print(json.dumps({"note": "no --output given and the model is not a directory; "
                                  "eval.json not written"}))
    return 0


def register_eval(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``emrl lm``."""
    p = subparsers.add_parser(
        "eval",
        help="held-out accuracy / reward of a model on a task; writes eval.json",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, EvalConfig)
    p.set_defaults(func=_main)
    return p
