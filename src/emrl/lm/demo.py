"""`emrl demo`: from nothing to an RL-fine-tuned model, offline, on a CPU.

::

    emrl demo [--output-dir DIR] [--seed N] [--config FILE.yaml] [--overwrite]

1. builds the ``tiny`` model (character tokenizer, no download);
2. SFT on the default task (two-term arithmetic from reasoning-gym) with the defaults
   of ``emrl lm sft`` (the δ target, spec §6) -> ``DIR/sft``;
3. V-MPO (spec §6 "Full Adaptive EM Procedure") from the SFT model with the defaults of
   ``emrl lm train --algo vmpo`` -> ``DIR/rl``;
4. evaluates both on the same held-out prompts (greedy exact match, and pass@1 at
   temperature 1 over several samples per prompt) and writes ``DIR/report.md``,
   ``DIR/learning_curves.png`` and ``DIR/summary.json``.

``--config`` takes a YAML file of :class:`DemoConfig` fields; ``sft`` and ``rl`` hold
overrides of :class:`~emrl.lm.train_config.SFTConfig` / ``RLConfig`` fields (e.g. a
seconds-long smoke run).
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

_DEMO_ENTRIES = {"sft", "rl", "summary.json", "report.md", "learning_curves.png"}


@dataclass
class DemoConfig:
    """Settings of ``emrl demo`` (defaults: the tuned ``lm sft`` / ``lm train`` defaults)."""

    seed: int = cfg_field(0, "seed of the model, data split, sampling and dropout")
    eval_num_prompts: int = cfg_field(200, "held-out prompts evaluated before and after RL")
    eval_samples: int = cfg_field(8, "samples per prompt for sampled accuracy (pass@1 at temperature 1)")
    num_threads: int | None = cfg_field(None, "torch CPU threads (None: EMRL_NUM_THREADS or all allowed CPUs)")
    task: str | None = cfg_field(None, "task SPEC (None: the default arithmetic task)")
    sft: dict = cfg_field({}, "overrides of SFTConfig fields for the SFT stage")
    rl: dict = cfg_field({}, "overrides of RLConfig fields for the V-MPO stage")


def _stage_configs(dc: DemoConfig, out: Path):
    from emrl.lm.train_config import RLConfig, SFTConfig

    common = {"seed": dc.seed, "eval_num_prompts": dc.eval_num_prompts, "eval_samples": dc.eval_samples,
              "eval_temperature": 1.0, "num_threads": dc.num_threads}
    # intermediate held-out evaluations for the learning curves (overridable)
    sft = from_dict(SFTConfig, {"model": "tiny", "task": dc.task, "eval_every": 500, **common, **dc.sft},
                    source="demo sft")
    rl = from_dict(RLConfig, {"algo": "vmpo", "eval_every": 50, **common, **dc.rl}, source="demo rl")
    rl = replace(rl, model=str(out / "sft" / "final"), task=None)
    if rl.algo != "vmpo":
        raise EmrlError(f"the demo runs V-MPO; got rl.algo={rl.algo!r} (use `emrl lm train` for others)")
    return sft, rl


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

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise EmrlError(f"output directory {out} exists and is not a directory")
    if out.is_dir() and not overwrite:
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _DEMO_ENTRIES)
        if foreign:
            raise EmrlError(f"output directory {out} holds files that are not from an emrl demo "
                            f"({', '.join(foreign[:3])}); pass --overwrite or choose another --output-dir")
    sft_cfg, rl_cfg = _stage_configs(dc, out)
    if not overwrite:
        _refuse_foreign_stage(out / "sft", {"model": "tiny", "eval_every": sft_cfg.eval_every,
                                            "eval_temperature": 1.0})
        _refuse_foreign_stage(out / "rl", {"model": str(out / "sft" / "final"), "algo": "vmpo"})
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", "report.md", "learning_curves.png"):
        (out / stale).unlink(missing_ok=True)
    t0 = time.time()
    print(f"[emrl demo] 1/2 SFT of the tiny model ({sft_cfg.max_steps} updates) -> {out / 'sft'}", flush=True)
    sft_last = LMTrainer(sft_cfg, out / "sft", overwrite=True).train()
    t_sft = time.time() - t0
    print(f"[emrl demo]     greedy accuracy {sft_last.get('eval/accuracy', float('nan')):.3f}, "
          f"sampled {sft_last.get('eval/sampled_accuracy', float('nan')):.3f} ({t_sft:.0f} s)", flush=True)
    print(f"[emrl demo] 2/2 V-MPO ({rl_cfg.max_steps} updates, k={rl_cfg.num_samples}) -> {out / 'rl'}", flush=True)
    rl_trainer = LMTrainer(rl_cfg, out / "rl", overwrite=True)
    rl_last = rl_trainer.train()
    wall = time.time() - t0
    sft_eval = json.loads((out / "sft" / "eval.json").read_text())
    rl_eval = json.loads((out / "rl" / "eval.json").read_text())
    summary = {
        "accuracy_sft": sft_eval.get("accuracy"),
        "accuracy_rl": rl_eval.get("accuracy"),
        "sampled_accuracy_sft": sft_eval.get("sampled_accuracy"),
        "sampled_accuracy_rl": rl_eval.get("sampled_accuracy"),
        f"pass@{dc.eval_samples}_sft": sft_eval.get(f"pass@{dc.eval_samples}"),
        f"pass@{dc.eval_samples}_rl": rl_eval.get(f"pass@{dc.eval_samples}"),
        "num_eval_prompts": rl_eval.get("num_prompts"),
        "eval_samples": dc.eval_samples,
        "eval_temperature": 1.0,
        "wall_time_s": wall,
        "sft_time_s": t_sft,
        "rl_time_s": wall - t_sft,
        "seed": dc.seed,
        "task": rl_trainer.task.name,
        "sft_updates": sft_cfg.max_steps,
        "rl_updates": rl_cfg.max_steps,
        "rl_final_reward_mean": rl_last.get("reward/mean"),
        "sft_config": to_dict(sft_cfg),
        "rl_config": to_dict(rl_cfg),
    }
    png = out / "learning_curves.png"
    _plot(read_metrics(out / "sft" / "metrics.jsonl"), read_metrics(out / "rl" / "metrics.jsonl"), png)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "report.md", _report(summary, png.name))
    print(f"[emrl demo] accuracy {summary['accuracy_sft']:.3f} -> {summary['accuracy_rl']:.3f} (greedy), "
          f"{summary['sampled_accuracy_sft']:.3f} -> {summary['sampled_accuracy_rl']:.3f} (sampled); "
          f"{wall:.0f} s; report: {out / 'report.md'}", flush=True)
    return summary


def _plot_accuracy(ax, records: list[dict]) -> None:
    """Held-out greedy and sampled accuracy of the records that carry an evaluation."""
    ev = [r for r in records if r.get("eval/accuracy") is not None]
    ax.plot([r["step"] for r in ev], [r["eval/accuracy"] for r in ev], "o-", color="tab:blue",
            label="held-out greedy accuracy")
    evs = [r for r in ev if r.get("eval/sampled_accuracy") is not None]
    ax.plot([r["step"] for r in evs], [r["eval/sampled_accuracy"] for r in evs], "s--", color="tab:cyan",
            label="held-out sampled accuracy")


def _plot(sft: list[dict], rl: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    xs = [r["step"] for r in sft if r.get("loss/policy") is not None]
    ax.plot(xs, [r["loss/policy"] for r in sft if r.get("loss/policy") is not None], color="tab:gray",
            lw=0.8, label="SFT loss (weighted NLL)")
    ax.set_xlabel("SFT update")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    _plot_accuracy(ax2, sft)
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    ax.set_title("SFT (delta target)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    ax = axes[1]
    # step 0 of V-MPO is the SFT model: its final held-out evaluation starts the curves
    start = next((r for r in reversed(sft) if r.get("eval/accuracy") is not None), None)
    if start is not None:
        rl = [{"step": 0, "eval/accuracy": start["eval/accuracy"],
               "eval/sampled_accuracy": start.get("eval/sampled_accuracy")}, *rl]
    xr = [r["step"] for r in rl if r.get("reward/mean") is not None]
    ax.plot(xr, [r["reward/mean"] for r in rl if r.get("reward/mean") is not None], color="tab:orange",
            lw=0.8, label="training reward (sampled)")
    _plot_accuracy(ax, rl)
    ax.set_xlabel("V-MPO update")
    ax.set_ylim(0, 1)
    ax.set_title("V-MPO from the SFT model")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _report(s: dict[str, Any], png: str) -> str:
    n = s["eval_samples"]

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    return f"""# emrl demo

The `tiny` model was built from nothing, fine-tuned by SFT (δ target, spec §6) and then by
sequence-level V-MPO (top-k E-step with the adaptive temperature dual, weighted-MLE M-step
under the α trust region; spec §6), offline on a CPU. Task: `{s['task']}`; seed {s['seed']}.

Both models are evaluated on the same {s['num_eval_prompts']} held-out prompts (disjoint from
training by question text).

| | after SFT | after V-MPO |
| --- | --- | --- |
| greedy accuracy (exact match) | {f(s['accuracy_sft'])} | {f(s['accuracy_rl'])} |
| sampled accuracy (pass@1, T=1, {n} samples/prompt) | {f(s['sampled_accuracy_sft'])} | {f(s['sampled_accuracy_rl'])} |
| pass@{n} | {f(s.get(f'pass@{n}_sft'))} | {f(s.get(f'pass@{n}_rl'))} |

Updates: {s['sft_updates']} SFT, {s['rl_updates']} V-MPO. Wall time: {s['wall_time_s']:.0f} s
(SFT {s['sft_time_s']:.0f} s, V-MPO + evaluations {s['rl_time_s']:.0f} s).

![learning curves]({png})

Runs: `sft/` and `rl/` (each with `config.yaml`, `metrics.jsonl`, `final/`, `eval.json`).
Raw figures: `summary.json`.
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
