"""`emrl lm sft` and `emrl lm train` (DESIGN.md "Contracts").

::

    emrl lm sft   --model tiny|PATH [--task SPEC] --output-dir DIR [--max-steps N] [--target delta|...]
    emrl lm train --algo vmpo|awr|dar|ppo --model PATH [--task SPEC] --output-dir DIR [--max-steps N]

Both take ``--config FILE.yaml``, ``--seed``, one ``--field-name`` option per config field
(:class:`~emrl.lm.train_config.SFTConfig` / :class:`~emrl.lm.train_config.RLConfig`),
``--resume`` (continue the run in DIR from its latest checkpoint, with the settings
saved in ``DIR/config.yaml`` unless overridden) and ``--overwrite`` (replace DIR).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emrl.checkpoint import TRUST_HELP
from emrl.config import add_config_args, build_config, load_yaml
from emrl.errors import EmrlError
from emrl.lm.train_config import RLConfig, SFTConfig


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", required=True, metavar="DIR", help="run directory to write")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue the run in DIR from its latest checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in DIR")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    p.add_argument("--trust-task-code", action="store_true",
                   help="import the reward functions (module:function) named by the task saved with "
                        "--model (emrl_task.json): that runs code chosen by whoever wrote the model "
                        "directory; without it such a task is refused unless you pass --reward-funcs")


def _resolve(cls: type, args: argparse.Namespace):
    """The run's config; on ``--resume`` the saved ``DIR/config.yaml`` is the base that
    ``--config`` and typed options override (never the defaults)."""
    base = None
    if args.resume:
        saved = Path(args.output_dir) / "config.yaml"
        if not saved.is_file():
            raise EmrlError(f"--resume: {args.output_dir} has no config.yaml (is it an emrl run directory?)")
        base = load_yaml(saved)
    return build_config(cls, args, base=base)


def _run(cls: type, args: argparse.Namespace) -> int:
    from emrl.lm.trainer import LMTrainer

    cfg = _resolve(cls, args)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading/saving bars are noise in a training log
    trainer = LMTrainer(cfg, args.output_dir, resume=args.resume, overwrite=args.overwrite,
                        trust_checkpoint=args.trust_checkpoint, trust_task_code=args.trust_task_code)
    last = trainer.train()
    if trainer.accelerator.is_main_process:
        out = Path(args.output_dir)
        print(f"final model: {out / 'final'}")
        for line in final_lines(trainer, last):
            print(line)
    return 0


def final_lines(trainer, last: dict) -> list[str]:
    """What ``lm sft`` / ``lm train`` print at the end, each line saying what its number is:
    the last update's training reward, then the final held-out evaluation (the last line
    is held-out greedy accuracy when the task has answers)."""
    cfg = trainer.cfg
    lines = []
    if last.get("reward/mean") is not None:
        k = getattr(cfg, "num_samples", 1)
        lines.append(f"last update's mean training reward: {last['reward/mean']:.4f} "
                     f"({cfg.batch_size} prompts x {k} samples, T={getattr(cfg, 'temperature', 1.0):g})")
    ev = trainer.last_eval
    if not ev:
        why = ("eval_num_prompts=0" if cfg.eval_num_prompts <= 0 else
               f"task {trainer.task.name!r} has no held-out prompts")
        lines.append(f"no held-out evaluation ({why})")
        return lines
    n = ev.get("num_prompts")
    if ev.get("sampled_accuracy") is not None:
        lines.append(f"final held-out sampled accuracy: {ev['sampled_accuracy']:.3f} "
                     f"({n} prompts x {ev.get('num_samples')} samples, T={ev.get('temperature', 1.0):g})")
    if ev.get("reward/mean") is not None and ev.get("accuracy") is None:
        lines.append(f"final held-out greedy reward: {ev['reward/mean']:.3f} ({n} prompts)")
    if ev.get("accuracy") is not None:
        lines.append(f"final held-out greedy accuracy: {ev['accuracy']:.3f} ({n} prompts)")
    return lines


def register_sft(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sft``: supervised fine-tuning as an EM M-step (spec §6)."""
    desc = ("Supervised fine-tuning as an EM M-step: the E-step target is a delta on the "
            "demonstrations, label smoothing, n-best samples or a teacher's distribution (spec §6).")
    p = subparsers.add_parser("sft", help="supervised fine-tuning (delta / label smoothing / n-best / distill)",
                              description=desc)
    _add_run_args(p)
    add_config_args(p, SFTConfig)
    p.set_defaults(func=lambda args: _run(SFTConfig, args))


def register_train(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``: RL fine-tuning with vmpo | awr | dar | ppo in one EM loop."""
    desc = ("RL fine-tuning in one EM loop: sample k completions per prompt, score them, build "
            "E-step weights (V-MPO, AWR, DAR) and fit them by weighted MLE under a KL trust region, "
            "or take PPO's clipped-ratio steps (spec §4-§7).")
    p = subparsers.add_parser("train", help="RL fine-tuning: --algo vmpo|awr|dar|ppo", description=desc)
    _add_run_args(p)
    add_config_args(p, RLConfig)
    p.set_defaults(func=lambda args: _run(RLConfig, args))
