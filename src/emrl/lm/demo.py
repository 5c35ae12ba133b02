"""`emrl demo`: from nothing to an RL-fine-tuned model, offline, on a CPU.

::

    emrl demo [--output-dir DIR] [--seed N] [--config FILE.yaml] [--overwrite]

1. builds the ``tiny`` model (character tokenizer, no download);
2. SFT on ``demonstrations`` (1000) reference answers of the default task (two-term
   arithmetic from reasoning-gym) with the defaults of ``emrl lm sft`` (the δ target,
   spec §6), long enough for held-out accuracy to stop rising on so few -> ``DIR/sft``;
3. V-MPO (spec §6 "Full Adaptive EM Procedure") from the SFT model with the defaults of
   ``emrl lm train --algo vmpo``, for ``rl_minutes`` of training, sampling from
   ``rl_prompts`` (5000) training prompts scored by the verifier, never their answers
   (the usual post-training setting: demonstrations are scarce, prompts are not) -> ``DIR/rl``;
4. the control: continued SFT on the same demonstrations from the same SFT model for the
   same training time, at the learning rate the SFT stage ended with -> ``DIR/sft_continued``;
5. evaluates all three on the same held-out prompts (greedy exact match, and pass@1 at
   temperature 1 over several samples per prompt), checks whether the SFT stage reached a
   plateau, and writes ``DIR/report.md``, ``DIR/learning_curves.png`` and ``DIR/summary.json``.

``--config`` takes a YAML file of :class:`DemoConfig` fields; ``sft``, ``rl`` and
``sft_continued`` hold overrides of :class:`~emrl.lm.train_config.SFTConfig` / ``RLConfig``
fields (e.g. a seconds-long smoke run).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from emrl.config import add_config_args, build_config, cfg_field, from_dict, to_dict
from emrl.errors import EmrlError

_DEMO_ENTRIES = {"sft", "rl", "sft_continued", "summary.json", "report.md", "learning_curves.png"}


@dataclass
class DemoConfig:
    """Settings of ``emrl demo`` (defaults: the tuned ``lm sft`` / ``lm train`` defaults)."""

    seed: int = cfg_field(0, "seed of the model, data split, sampling and dropout")
    eval_num_prompts: int = cfg_field(200, "held-out prompts evaluated before and after RL")
    eval_samples: int = cfg_field(8, "samples per prompt for sampled accuracy (pass@1 at temperature 1)")
    num_threads: int | None = cfg_field(None, "torch CPU threads (None: EMRL_NUM_THREADS or all allowed CPUs)")
    task: str | None = cfg_field(None, "task SPEC (None: the default arithmetic task)")
    demonstrations: int = cfg_field(
        1000, "training items whose reference answers the SFT stage (and the continued-SFT control) "
        "fits: few enough that its held-out accuracy stops rising within the demo's time")
    rl_prompts: int = cfg_field(
        5000, "training items whose prompts (never their answers) the V-MPO stage samples from; the "
        "first `demonstrations` of them are the SFT stage's")
    rl_minutes: float = cfg_field(
        3.0, "training minutes of the V-MPO stage, and of the continued-SFT control from the same "
        "SFT model (evaluations excluded)")
    sft: dict = cfg_field({}, "overrides of SFTConfig fields for the SFT stage")
    rl: dict = cfg_field({}, "overrides of RLConfig fields for the V-MPO stage")
    sft_continued: dict = cfg_field({}, "overrides of SFTConfig fields for the continued-SFT control")


def _stage_configs(dc: DemoConfig, out: Path):
    from emrl.lm.train_config import RLConfig, SFTConfig

    common = {"seed": dc.seed, "eval_num_prompts": dc.eval_num_prompts, "eval_samples": dc.eval_samples,
              "eval_temperature": 1.0, "num_threads": dc.num_threads}
    # intermediate held-out evaluations for the learning curves (overridable)
    if dc.demonstrations < 1 or dc.rl_prompts < 1:
        raise EmrlError(f"demonstrations and rl_prompts must be >= 1, got {dc.demonstrations} and {dc.rl_prompts}")
    sft = from_dict(SFTConfig, {"model": "tiny", "task": dc.task, "eval_every": 250, "num_train": dc.demonstrations,
                                **common, **dc.sft}, source="demo sft")
    timed = {"max_steps": 10**6, "max_minutes": dc.rl_minutes}
    rl = from_dict(RLConfig, {"algo": "vmpo", "eval_every": 50, "num_train": dc.rl_prompts, **common, **timed,
                              **dc.rl}, source="demo rl")
    rl = replace(rl, model=str(out / "sft" / "final"), task=None)
    if rl.algo != "vmpo":
        raise EmrlError(f"the demo runs V-MPO; got rl.algo={rl.algo!r} (use `emrl lm train` for others)")
    # the control: as much more SFT as V-MPO gets training time, continuing at the learning
    # rate the SFT stage ended with and annealing over the same budget
    end_lr = sft.learning_rate * sft.min_lr_ratio
    cont = from_dict(SFTConfig, {"eval_every": 200, **common, **timed, "learning_rate": end_lr,
                                 "warmup_steps": 0, **dc.sft_continued}, source="demo sft_continued")
    cont = replace(cont, model=str(out / "sft" / "final"), task=None)
    return sft, rl, cont


def _task_label(name: str) -> str:
    """The task's name; the default task by its reasoning-gym spec."""
    from emrl.lm.tasks import DEFAULT_TASK_SPEC

    return f"{DEFAULT_TASK_SPEC} (the default task)" if name == "default" else name


def plateau_change(records: list[dict]) -> float | None:
    """Change of held-out greedy accuracy over the last quarter of a run's updates (None
    when fewer than two evaluations fall in it): the SFT stage is on a plateau when this is
    below 0.02."""
    ev = [(r["step"], r["eval/accuracy"]) for r in records if r.get("eval/accuracy") is not None]
    if len(ev) < 2:
        return None
    last = ev[-1][0]
    q = [a for s, a in ev if s >= 0.75 * last]
    if len(q) < 2:
        q = [a for _, a in ev[-2:]]
    return q[-1] - q[0]


def _refuse_foreign_stage(stage: Path, signature: dict[str, Any]) -> None:
    """Raise unless ``stage`` is absent, empty or a run an emrl demo wrote (its
    ``config.yaml`` has the demo's ``signature`` values): the demo replaces it."""
    if not stage.exists() or (stage.is_dir() and not any(stage.iterdir())):
        return
    from emrl.config import load_yaml

    saved: dict[str, Any] = {}
    if stage.is_dir() and (stage / "config.yaml").is_file():
        try:
            saved = load_yaml(stage / "config.yaml")
        except EmrlError:
            saved = {}
    differs = [k for k, v in signature.items() if saved.get(k) != v]
    if differs:
        k = differs[0]
        raise EmrlError(
            f"{stage} holds something that is not a run of this demo (its config has {k}="
            f"{saved.get(k)!r}, the demo's {k}={signature[k]!r}); the demo would replace it. "
            "Pass --overwrite to replace it, or choose another --output-dir")


def run_demo(dc: DemoConfig, output_dir: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Run the demo (see module docstring); returns the summary dict.

    A directory holding an earlier demo run is replaced; any other non-empty directory is
    only used with ``overwrite``.
    """
    from emrl.checkpoint import atomic_write_json, atomic_write_text
    from emrl.lm.trainer import LMTrainer
    from emrl.metrics import read_metrics
    from emrl.provenance import environment_info

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise EmrlError(f"output directory {out} exists and is not a directory")
    if out.is_dir() and not overwrite:
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _DEMO_ENTRIES)
        if foreign:
            raise EmrlError(f"output directory {out} holds files that are not from an emrl demo "
                            f"({', '.join(foreign[:3])}); pass --overwrite or choose another --output-dir")
    sft_cfg, rl_cfg, cont_cfg = _stage_configs(dc, out)
    if not overwrite:
        _refuse_foreign_stage(out / "sft", {"model": "tiny", "eval_every": sft_cfg.eval_every,
                                            "eval_temperature": 1.0})
        _refuse_foreign_stage(out / "rl", {"model": str(out / "sft" / "final"), "algo": "vmpo"})
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", "report.md", "learning_curves.png"):
        (out / stale).unlink(missing_ok=True)
    t0 = time.time()
    print(f"[emrl demo] 1/3 SFT of the tiny model ({sft_cfg.max_steps} updates) -> {out / 'sft'}", flush=True)
    sft_last = LMTrainer(sft_cfg, out / "sft", overwrite=True).train()
    t_sft = time.time() - t0
    print(f"[emrl demo]     greedy accuracy {sft_last.get('eval/accuracy', float('nan')):.3f}, "
          f"sampled {sft_last.get('eval/sampled_accuracy', float('nan')):.3f} ({t_sft:.0f} s)", flush=True)
    print(f"[emrl demo] 2/3 V-MPO ({rl_cfg.max_minutes:g} min of training, k={rl_cfg.num_samples}) -> "
          f"{out / 'rl'}", flush=True)
    rl_trainer = LMTrainer(rl_cfg, out / "rl", overwrite=True)
    rl_last = rl_trainer.train()
    t_rl = time.time() - t0 - t_sft
    print(f"[emrl demo] 3/3 control: continued SFT for the same {cont_cfg.max_minutes:g} min -> "
          f"{out / 'sft_continued'}", flush=True)
    cont_trainer = LMTrainer(cont_cfg, out / "sft_continued", overwrite=True)
    cont_trainer.train()
    wall = time.time() - t0
    sft_eval = json.loads((out / "sft" / "eval.json").read_text())
    rl_eval = json.loads((out / "rl" / "eval.json").read_text())
    cont_eval = json.loads((out / "sft_continued" / "eval.json").read_text())
    sft_recs = read_metrics(out / "sft" / "metrics.jsonl")
    plateau = plateau_change(sft_recs)
    summary = {
        "accuracy_sft": sft_eval.get("accuracy"),
        "accuracy_rl": rl_eval.get("accuracy"),
        "accuracy_continued_sft": cont_eval.get("accuracy"),
        "sampled_accuracy_sft": sft_eval.get("sampled_accuracy"),
        "sampled_accuracy_rl": rl_eval.get("sampled_accuracy"),
        "sampled_accuracy_continued_sft": cont_eval.get("sampled_accuracy"),
        f"pass@{dc.eval_samples}_sft": sft_eval.get(f"pass@{dc.eval_samples}"),
        f"pass@{dc.eval_samples}_rl": rl_eval.get(f"pass@{dc.eval_samples}"),
        f"pass@{dc.eval_samples}_continued_sft": cont_eval.get(f"pass@{dc.eval_samples}"),
        "sft_plateau_change": plateau,
        "sft_on_plateau": plateau is not None and abs(plateau) < 0.02,
        "num_eval_prompts": rl_eval.get("num_prompts"),
        "eval_samples": dc.eval_samples,
        "eval_temperature": 1.0,
        "wall_time_s": wall,
        "sft_time_s": t_sft,
        "rl_time_s": t_rl,
        "continued_sft_time_s": wall - t_sft - t_rl,
        "rl_minutes": dc.rl_minutes,
        "demonstrations": sft_cfg.num_train,
        "rl_prompts": rl_cfg.num_train,
        "seed": dc.seed,
        "task": _task_label(rl_trainer.task.name),
        "sft_updates": sft_cfg.max_steps,
        "rl_updates": rl_trainer.step,
        "continued_sft_updates": cont_trainer.step,
        "rl_final_reward_mean": rl_last.get("reward/mean"),
        "sft_config": to_dict(sft_cfg),
        "rl_config": to_dict(rl_cfg),
        "continued_sft_config": to_dict(cont_cfg),
        "environment": environment_info(),
    }
    png = out / "learning_curves.png"
    _plot(sft_recs, read_metrics(out / "rl" / "metrics.jsonl"), png,
          read_metrics(out / "sft_continued" / "metrics.jsonl"))
    atomic_write_json(out / "summary.json", summary)
    from emrl.provenance import format_environment

    atomic_write_text(out / "report.md", _report({**summary, "environment_line": format_environment(
        summary["environment"])}, png.name))
    print(f"[emrl demo] held-out greedy accuracy: SFT {summary['accuracy_sft']:.3f} -> V-MPO "
          f"{summary['accuracy_rl']:.3f} (continued SFT for the same time: "
          f"{summary['accuracy_continued_sft']:.3f}); sampled {summary['sampled_accuracy_sft']:.3f} -> "
          f"{summary['sampled_accuracy_rl']:.3f} ({summary['sampled_accuracy_continued_sft']:.3f}); "
          f"{wall:.0f} s; report: {out / 'report.md'}", flush=True)
    return summary


def _accuracy_points(records: list[dict], key: str, x: str) -> tuple[list[float], list[float]]:
    ev = [r for r in records if r.get(key) is not None]
    return [r.get(x, 0.0) for r in ev], [r[key] for r in ev]


def _plot(sft: list[dict], rl: list[dict], path: Path, cont: list[dict] | None = None) -> None:
    """Left: the SFT stage (loss, held-out accuracy). Right: V-MPO and the continued-SFT
    control from the same SFT model against training minutes (both start at step 0's
    evaluation of that model); axes scaled to the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
    ax = axes[0]
    lr = [(r["step"], r["loss/policy"]) for r in sft if r.get("loss/policy") is not None]
    if lr:
        xs, ys = zip(*lr, strict=True)
        ax.plot(xs, ys, color="tab:gray", lw=0.6, alpha=0.8, label="SFT loss (weighted NLL)")
        hi = float(np.percentile(ys, 98)) if len(ys) > 10 else max(ys)
        ax.set_ylim(0.9 * min(ys), 1.05 * hi)  # the first updates' spike is clipped, not drawn to scale
    ax.set_xlabel("SFT update")
    ax.set_ylabel("training loss (first updates clipped)")
    ax2 = ax.twinx()
    for key, style, label in (("eval/accuracy", "o-", "held-out greedy accuracy"),
                              ("eval/sampled_accuracy", "s--", "held-out sampled accuracy")):
        xs, ys = _accuracy_points(sft, key, "step")
        ax2.plot(xs, ys, style, color="tab:blue" if "greedy" in label else "tab:cyan", label=label)
    ax2.set_ylabel("accuracy")
    ax.set_title("1. SFT from scratch (delta target)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="center right", fontsize=8)
    ax = axes[1]
    allys = []
    for recs, color, name in ((rl, "tab:orange", "V-MPO"), (cont or [], "tab:green", "continued SFT (control)")):
        for key, style, what in (("eval/accuracy", "o-", "greedy"), ("eval/sampled_accuracy", "s--", "sampled")):
            xs, ys = _accuracy_points(recs, key, "time/train_s")
            if ys:
                ax.plot([x / 60.0 for x in xs], ys, style, color=color, label=f"{name}: held-out {what}")
                allys += ys
    if allys:
        lo, hi = min(allys), max(allys)
        pad = max(0.02, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    ax.set_xlabel("training minutes from the SFT model (evaluations excluded)")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    ax.set_title("2-3. V-MPO vs as much more SFT, same start, same time")
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _report(s: dict[str, Any], png: str) -> str:
    n = s["eval_samples"]

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    plateau = s.get("sft_plateau_change")
    plat = ("n/a (fewer than two evaluations)" if plateau is None else
            f"{plateau:+.3f} over its last quarter of updates: "
            + ("on a plateau" if abs(plateau) < 0.02 else
               "**not** on a plateau: still rising, so more SFT may still help" if plateau > 0 else
               "**not** within 2 points of flat: it fell after its peak"))
    return f"""# emrl demo

The `tiny` model was built from nothing and fine-tuned by SFT (δ target, spec §6). From that
SFT model, two runs got the same {s['rl_minutes']:g} minutes of training: sequence-level
V-MPO (top-k E-step with the adaptive temperature dual, weighted-MLE M-step under the α trust
region, the KL budget setting the step; spec §5-§6) on the task's verifier reward, and — the
control that separates RL from simply training longer — continued SFT on the same reference
answers. SFT saw {s.get('demonstrations', 'n/a')} demonstrations; V-MPO sampled from
{s.get('rl_prompts', 'n/a')} training prompts (their answers unseen: the verifier scores
samples). Offline, on a CPU. Task: `{s['task']}`; seed {s['seed']}.

All three models are evaluated on the same {s['num_eval_prompts']} held-out prompts (disjoint from
training by question text). SFT stage: held-out greedy accuracy changed by {plat}.

| | after SFT | + V-MPO | + continued SFT (control) |
| --- | --- | --- | --- |
| greedy accuracy (exact match) | {f(s['accuracy_sft'])} | {f(s['accuracy_rl'])} | {f(s.get('accuracy_continued_sft'))} |
| sampled accuracy (pass@1, T=1, {n} samples/prompt) | {f(s['sampled_accuracy_sft'])} | {f(s['sampled_accuracy_rl'])} | {f(s.get('sampled_accuracy_continued_sft'))} |
| pass@{n} | {f(s.get(f'pass@{n}_sft'))} | {f(s.get(f'pass@{n}_rl'))} | {f(s.get(f'pass@{n}_continued_sft'))} |

Updates: {s['sft_updates']} SFT, then {s['rl_updates']} V-MPO and {s.get('continued_sft_updates')}
continued-SFT updates. Wall time: {s['wall_time_s']:.0f} s (SFT {s['sft_time_s']:.0f} s, V-MPO
{s['rl_time_s']:.0f} s and continued SFT {s.get('continued_sft_time_s', 0):.0f} s, evaluations included).

![learning curves]({png})

Environment: {s.get('environment_line', 'n/a')}.

Runs: `sft/`, `rl/` and `sft_continued/` (each with `config.yaml`, `metrics.jsonl`, `final/`,
`eval.json`). Raw figures: `summary.json`.
"""


def _run(args: argparse.Namespace) -> int:
    dc = build_config(DemoConfig, args)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading/saving bars are noise in a training log
    run_demo(dc, args.output_dir, overwrite=args.overwrite)
    return 0


def register_command(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--output-dir", default="runs/demo", metavar="DIR", help="where to write (default: runs/demo)")
    p.add_argument("--overwrite", action="store_true",
                   help="use DIR even if it holds files that are not from an earlier demo run")
    add_config_args(p, DemoConfig, exclude=("sft", "rl"))
    p.set_defaults(func=_run)
