"""Side-by-side LM fine-tuning from one start model and one training-time budget per run.

Methods (``--methods``; each run is its own process on one CPU thread):

* ``vmpo``, ``awr``, ``dar``, ``ppo`` — ``emrl lm train --algo X`` at its defaults;
  ``vmpo-lr1e-3`` — V-MPO with ``--learning-rate 1e-3`` (large steps: the KL budget must
  keep them safe); variants of one V-MPO setting, for tuning: ``vmpo-eps0.01`` (and 0.005,
  0.002: ``--eps-alpha``), ``vmpo-1step`` (one M-step pass), ``vmpo-b64`` (64 prompts per
  update), ``vmpo-const`` (constant learning rate and KL budget), ``vmpo-batchmean`` (a
  batch-mean baseline: every correct sample has a positive advantage);
* ``grpo``, ``grpo-beta0.04`` — TRL's ``GRPOTrainer`` (the ``bench`` extra) at settings that
  suit a small model: lr 1e-4, beta 0 / 0.04, the same 32 prompts x 8 completions per update,
  the same completion length and sampling temperature;
* ``sft`` — continued SFT on the same training prompts' reference answers (the control that
  separates RL from more training: RL never sees a reference answer); ``sft-ls`` the same
  with the label-smoothing target (for a start model SFT'd with it);
* ``rs-sft`` — rejection-sampling SFT: fit the model's own correct samples, uniformly (the
  simplest EM baseline: V-MPO with rho = 1, a batch-mean baseline, eta -> infinity, no
  trust region); ``rs-sft-lr3e-4`` the same at the continued-SFT control's learning rate.

Every run is scored by the same code on the same held-out prompts: greedy exact match and
sampled accuracy (pass@1 over 8 samples at T = 1) before and after, held-out greedy accuracy
at quarters of the budget (the curve), completions/s of training (completions sampled /
training seconds, evaluations excluded), peak resident memory of the run's process
(``VmHWM``) and the per-token KL(pi_start || pi_final) on the start model's samples of 100
held-out prompts. Intervals: 95 % bootstrap over seeds and prompts (paired before/after).

A later command with the same ``--name``, start model, budget and ``--jobs`` adds its
methods and seeds to the record (runs already recorded are not repeated); the record lists
every command.

Usage::

    python benchmarks/lm_peers.py --start runs/sft/final --minutes 8 --seeds 0 1 2 --jobs 2 \\
        --name early
    python benchmarks/lm_peers.py --report benchmarks/results/lm_peers_early   # redraw only

Writes ``benchmarks/results/lm_peers_<name>.md``, ``.png`` and the raw records
``benchmarks/results/lm_peers_<name>/*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

RL_BATCH = dict(batch_size=32, num_samples=8)  # emrl's defaults, matched by GRPO below
# V-MPO reduced to rejection-sampling SFT: every correct sample, uniform weights, no trust region
RS_SFT = dict(algo="vmpo", baseline="batch_mean", min_advantage=0.0, top_fraction=1.0, adaptive_temperature=False,
              eta_init=1e6, trust_region=False, epochs=1)
CONTINUED_SFT = dict(learning_rate=3e-4, lr_scheduler="cosine", warmup_steps=0)
METHODS: dict[str, tuple[str, dict]] = {
    "vmpo": ("emrl", {"algo": "vmpo"}),
    "vmpo-lr1e-3": ("emrl", {"algo": "vmpo", "learning_rate": 1e-3}),
    "vmpo-eps0.005": ("emrl", {"algo": "vmpo", "eps_alpha": 0.005}),
    "vmpo-eps0.002": ("emrl", {"algo": "vmpo", "eps_alpha": 0.002}),
    "vmpo-eps0.01": ("emrl", {"algo": "vmpo", "eps_alpha": 0.01}),
    "vmpo-1step": ("emrl", {"algo": "vmpo", "epochs": 1}),
    "vmpo-b64": ("emrl", {"algo": "vmpo", "batch_size": 64}),
    "vmpo-const": ("emrl", {"algo": "vmpo", "lr_scheduler": "constant"}),
    "vmpo-batchmean": ("emrl", {"algo": "vmpo", "baseline": "batch_mean"}),
    "awr": ("emrl", {"algo": "awr"}),
    "dar": ("emrl", {"algo": "dar"}),
    "ppo": ("emrl", {"algo": "ppo"}),
    "rs-sft": ("emrl", {**RS_SFT, "learning_rate": 1e-3}),
    "rs-sft-lr3e-4": ("emrl", {**RS_SFT, "learning_rate": 3e-4}),
    "sft": ("sft", CONTINUED_SFT),
    "sft-ls": ("sft", {**CONTINUED_SFT, "target": "label_smoothing"}),
    "grpo": ("trl", {"learning_rate": 1e-4, "beta": 0.0}),
    "grpo-beta0.04": ("trl", {"learning_rate": 1e-4, "beta": 0.04}),
}


# ------------------------------------------------------------------------------ worker
def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _evaluate(model, tok, task, n_prompts: int, sampled: bool) -> dict:
    import torch

    from emrl.lm.evaluate import evaluate

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        res = evaluate(model, tok, task, num_prompts=n_prompts, greedy=True, num_samples=8 if sampled else 0,
                       temperature=1.0, return_samples=True)
    rows = task.eval[:n_prompts]
    out = {"greedy": [int(task.is_correct(s["greedy"], r)) for s, r in zip(res["samples"], rows, strict=True)]}
    if sampled:
        out["sampled"] = [sum(task.is_correct(t, r) for t in s["sampled"]) / len(s["sampled"])
                          for s, r in zip(res["samples"], rows, strict=True)]
    return out


def _kl_to_start(start, model, tok, task, n_prompts: int = 100) -> float:
    """Per-token KL(pi_start || pi_model) on 4 samples of the start model per held-out prompt."""
    import torch

    from emrl import objectives as O
    from emrl.lm.forward import position_ids_from_mask
    from emrl.lm.generation import generate

    prompts = [r["prompt"] for r in task.eval[:n_prompts]]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(999)
        ro = generate(start, tok, prompts, num_samples=4, max_new_tokens=8)
        kw = dict(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                  position_ids=position_ids_from_mask(ro.attention_mask), use_cache=False)
        la, lb = start(**kw).logits[:, :-1], model(**kw).logits[:, :-1]
        m = ro.completion_mask[:, 1:].bool()
        return float(O.categorical_kl(la, lb, mask=m).sum() / m.sum())


def worker(spec: dict) -> dict:
    """One run: train ``spec['method']`` from ``spec['start']`` for ``spec['minutes']``."""
    os.environ.setdefault("EMRL_PROGRESS", "0")
    import torch

    torch.set_num_threads(1)
    from emrl.lm.models import load_model_and_tokenizer
    from emrl.lm.tasks import load_task_from_info, load_task_info

    kind, over = METHODS[spec["method"]]
    over = {**over, **spec.get("set", {})}
    start_dir, budget, seed = spec["start"], 60.0 * spec["minutes"], int(spec["seed"])
    n_eval = int(spec["eval_prompts"])
    # RL methods may draw prompts from more training items than the start model's SFT
    # demonstrations (--rl-num-train); the continued-SFT control keeps the demonstrations
    rl_n = spec.get("rl_num_train") if kind != "sft" else None
    task = load_task_from_info(load_task_info(start_dir), num_train=rl_n)
    if rl_n:
        over = {**over, "num_train": rl_n}
    marks = [budget * q for q in (0.25, 0.5, 0.75)]
    curve: list[tuple[float, float]] = []
    state = {"completions": 0, "train_s": 0.0}

    def maybe_eval(model, tok, train_s: float) -> None:
        while marks and train_s >= marks[0]:
            marks.pop(0)
            was = model.training
            model.eval()
            acc = sum(_evaluate(model, tok, task, n_eval, sampled=False)["greedy"]) / n_eval
            model.train(was)
            curve.append((train_s, acc))

    if kind in ("emrl", "sft"):
        from emrl.lm.train_config import RLConfig, SFTConfig
        from emrl.lm.trainer import LMTrainer

        common = dict(model=start_dir, seed=seed, max_steps=10**6, max_minutes=spec["minutes"], num_threads=1,
                      eval_num_prompts=0, eval_every=0, eval_at_start=False)
        cfg = SFTConfig(**common, **over) if kind == "sft" else RLConfig(**common, **{**RL_BATCH, **over})
        tr = LMTrainer(cfg, None)

        def cb(step, rec):
            state["train_s"] = tr.train_time
            maybe_eval(tr.lm, tr.tokenizer, tr.train_time)

        tr.train(callback=cb)
        model, tok = tr.lm, tr.tokenizer
        state["completions"] = tr.samples if kind == "emrl" else 0
        state["train_s"], state["updates"] = tr.train_time, tr.step
    else:  # TRL GRPO
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        model, tok = load_model_and_tokenizer(start_dir, seed=seed)
        ds = Dataset.from_list([{"prompt": r["prompt"], "row_id": i} for i, r in enumerate(task.train)])

        def verifier(prompts, completions, row_id, **_):
            state["completions"] += len(completions)
            return task.reward(prompts, completions, [task.train[i] for i in row_id])

        class Budget(TrainerCallback):
            def on_train_begin(self, args, st, control, **kw):
                self.t0, self.excluded = time.time(), 0.0

            def on_step_end(self, args, st, control, **kw):
                train_s = time.time() - self.t0 - self.excluded
                state["train_s"], state["updates"] = train_s, st.global_step
                t = time.time()
                maybe_eval(model, tok, train_s)
                self.excluded += time.time() - t
                if train_s >= budget:
                    control.should_training_stop = True

        n = RL_BATCH["num_samples"]
        args = GRPOConfig(output_dir=spec["tmp"], use_cpu=True, seed=seed, learning_rate=over["learning_rate"],
                          beta=over["beta"], num_generations=n, per_device_train_batch_size=RL_BATCH["batch_size"] * n,
                          max_completion_length=8, temperature=1.0, top_p=1.0, top_k=0, lr_scheduler_type="constant",
                          warmup_steps=0, max_steps=10**6, logging_steps=10**6, save_strategy="no", report_to="none",
                          disable_dropout=True, dataloader_num_workers=0, log_completions=False,
                          bf16=False, fp16=False, gradient_checkpointing=False)  # fp32 on a CPU, as emrl
        trainer = GRPOTrainer(model=model, reward_funcs=[verifier], args=args, train_dataset=ds,
                              processing_class=tok, callbacks=[Budget()])
        trainer.train()
        model = trainer.model
    model.eval()
    after = _evaluate(model, tok, task, n_eval, sampled=True)
    start, _ = load_model_and_tokenizer(start_dir, seed=0)
    start.eval()
    kl = _kl_to_start(start, model, tok, task)
    train_s = state["train_s"]
    return {**spec, "after": after, "curve": curve, "train_s": train_s, "updates": state.get("updates"),
            "completions": state["completions"],
            "completions_per_s": state["completions"] / train_s if train_s > 0 else None,
            "peak_rss_mb": _peak_rss_mb(), "kl_to_start": kl}


# ------------------------------------------------------------------------------ analysis
def _boot(before: list[list[float]], after: list[list[float]], reps: int = 2000, seed: int = 0):
    """Mean paired gain over seeds x prompts and its 95 % bootstrap interval (seeds, then prompts)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    d = [np.asarray(a, float) - np.asarray(b, float) for b, a in zip(before, after, strict=True)]
    est = float(np.mean([x.mean() for x in d]))
    stats = []
    for _ in range(reps):
        seeds = rng.integers(0, len(d), len(d))
        stats.append(np.mean([d[s][rng.integers(0, len(d[s]), len(d[s]))].mean() for s in seeds]))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return est, float(lo), float(hi)


def _earlier_record(start_json: Path, start_name: str, a: argparse.Namespace) -> dict | None:
    """The ``start.json`` of a record that already holds results (a later command adds its
    methods to it, reusing its start-model evaluation), or None; refused when it would mix
    start models, budgets, loads or held-out sets."""
    if not start_json.is_file() or not any(start_json.parent.glob("*-seed*.json")):
        return None
    old = json.loads(start_json.read_text())
    for key, have, new in (("start_name", old.get("start_name"), start_name), ("minutes", old.get("minutes"), a.minutes),
                           ("jobs", old.get("jobs"), a.jobs), ("eval_prompts", len(old["greedy"]), a.eval_prompts)):
        if have != new:
            raise SystemExit(f"{start_json.parent} holds results with {key}={have!r}, this command has "
                             f"{key}={new!r}: one record compares runs of one start model, budget, load and "
                             "held-out set; choose another --name")
    return old


def report(out_dir: Path) -> Path:
    import numpy as np

    recs = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json")) if p.name != "start.json"]
    start = json.loads((out_dir / "start.json").read_text())
    methods = [m for m in METHODS if any(r["method"] == m for r in recs)]
    cmds = start.get("commands") or [start.get("command", "")]
    lines = [f"# LM fine-tuning side by side: {out_dir.name.removeprefix('lm_peers_')}", "",
             "Command:" if len(cmds) == 1 else "Commands (each ran the methods it names; their results "
             "share this record):", "", *(f"    {c}" for c in cmds), "",
             *([f"Start model made with `{start['start_command']}` (seed 0).", ""]
               if start.get("start_command") else []),
             *([f"RL methods (emrl's and TRL's) drew prompts, without answers, from {rl_n} training items of "
                "the start model's task; continued SFT kept the start model's own demonstrations.", ""]
               if (rl_n := next((r.get("rl_num_train") for r in recs if r.get("rl_num_train")), None)) else []),
             f"Start model: `{start['start_name']}`; held-out greedy accuracy "
             f"{np.mean(start['greedy']):.3f}, sampled {np.mean(start['sampled']):.3f} "
             f"({len(start['greedy'])} prompts). Budget: {start['minutes']:g} min of training per run "
             "(evaluations excluded), one CPU thread each, "
             f"{start['jobs']} runs at a time on {start['machine']}. Seeds: {start['seeds']}.", "",
             "Gains are held-out accuracy after minus before, mean over seeds, with a 95 % bootstrap "
             "interval over seeds and prompts (paired).", "",
             "| method | greedy after | greedy gain [95% CI] | sampled after | sampled gain [95% CI] | "
             "updates | completions/s | peak RSS (MB) | KL to start (nats/token) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary = {}
    for m in methods:
        rs = [r for r in recs if r["method"] == m]
        g = _boot([start["greedy"]] * len(rs), [r["after"]["greedy"] for r in rs])
        s = _boot([start["sampled"]] * len(rs), [r["after"]["sampled"] for r in rs])
        cps = [r["completions_per_s"] for r in rs if r["completions_per_s"]]
        summary[m] = {"greedy_gain": g, "sampled_gain": s, "completions_per_s": float(np.mean(cps)) if cps else None,
                      "peak_rss_mb": float(np.mean([r["peak_rss_mb"] for r in rs]))}
        per_seed = ", ".join(f"{np.mean(r['after']['greedy']):.3f}" for r in rs)
        lines.append(
            f"| {m} | {np.mean([np.mean(r['after']['greedy']) for r in rs]):.3f} ({per_seed}) | "
            f"{g[0]:+.3f} [{g[1]:+.3f}, {g[2]:+.3f}] | "
            f"{np.mean([np.mean(r['after']['sampled']) for r in rs]):.3f} | {s[0]:+.3f} [{s[1]:+.3f}, {s[2]:+.3f}] | "
            f"{np.mean([r['updates'] or 0 for r in rs]):.0f} | "
            + (f"{summary[m]['completions_per_s']:.1f}" if cps else "–")
            + f" | {summary[m]['peak_rss_mb']:.0f} | {np.mean([r['kl_to_start'] for r in rs]):.4f} |")
    peers = [m for m in methods if m.startswith("grpo")]
    if "vmpo" in summary and peers and summary["vmpo"]["completions_per_s"]:
        p = max(peers, key=lambda m: summary[m]["completions_per_s"] or 0)
        ratio = summary["vmpo"]["completions_per_s"] / summary[p]["completions_per_s"]
        mem = summary["vmpo"]["peak_rss_mb"] / summary[p]["peak_rss_mb"]
        lines += ["", f"emrl V-MPO vs TRL {p} in this run: **{ratio:.2f}x** the completions/s, "
                  f"{mem:.2f}x the peak memory."]
    if start.get("note"):
        lines += ["", start["note"]]
    if "environment" in start:
        from emrl.provenance import format_environment

        lines += ["", f"Environment: {format_environment(start['environment'])}"]
    lines += ["", f"Raw records: `{out_dir.name}/`. Curves: `{out_dir.name}.png`.", ""]
    md = out_dir.parent / f"{out_dir.name}.md"
    md.write_text("\n".join(lines))
    _plot(out_dir, recs, start, methods)
    return md


def _plot(out_dir: Path, recs: list[dict], start: dict, methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    a0 = float(np.mean(start["greedy"]))
    for m in methods:
        rs = [r for r in recs if r["method"] == m]
        xs = [0.0] + [q * start["minutes"] for q in (0.25, 0.5, 0.75, 1.0)]
        ys = []
        for r in rs:
            pts = [a0] + [c[1] for c in r["curve"]][:3] + [float(np.mean(r["after"]["greedy"]))]
            ys.append(pts + [pts[-1]] * (5 - len(pts)))
        y = np.asarray(ys)
        line, = ax.plot(xs, y.mean(0), marker="o", label=m)
        if len(rs) > 1:
            ax.fill_between(xs, y.min(0), y.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training time (minutes, evaluations excluded)")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title(f"from {start['start_name']}: mean over seeds, band = min..max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir.parent / f"{out_dir.name}.png", dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", help="SFT'd start model directory (with its saved task)")
    ap.add_argument("--minutes", type=float, default=8.0, help="training-time budget per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--start-command", default=None, help="how the start model was made (for the record)")
    ap.add_argument("--name", default="run", help="record name: benchmarks/results/lm_peers_<name>")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override a config field of every emrl/sft run (YAML value), e.g. warmup_steps=10")
    ap.add_argument("--rl-num-train", type=int, default=None, metavar="N",
                    help="RL methods draw prompts (no answers) from N training items of the start model's "
                         "task; continued SFT keeps the start model's own demonstrations (default: the same "
                         "items for all)")
    ap.add_argument("--report", metavar="DIR", help="only redraw the record from DIR's raw results")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        spec = json.loads(a.worker)
        res = worker(spec)
        tmp = Path(spec["result"]).with_suffix(".tmp")
        tmp.write_text(json.dumps(res))
        tmp.replace(spec["result"])
        return 0
    if a.report:
        print(report(Path(a.report)).read_text())
        return 0
    if not a.start:
        ap.error("--start is required (an SFT'd model directory)")
    import platform

    import torch

    from emrl.lm.models import load_model_and_tokenizer
    from emrl.lm.tasks import load_task_from_info, load_task_info
    from emrl.provenance import KEY_PACKAGES, environment_info

    out = RESULTS / f"lm_peers_{a.name}"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    start_name = Path(a.start).parent.name + "/" + Path(a.start).name
    earlier = _earlier_record(out / "start.json", start_name, a)
    if earlier is not None:  # the record's own evaluation of the start model: every run pairs with it
        s = {k: earlier[k] for k in ("greedy", "sampled")}
    else:
        model, tok = load_model_and_tokenizer(a.start, seed=0)
        model.eval()
        s = _evaluate(model, tok, load_task_from_info(load_task_info(a.start)), a.eval_prompts, sampled=True)
    cmd = "python benchmarks/lm_peers.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    prior = (earlier.get("commands") or [earlier["command"]]) if earlier else []
    earlier = earlier or {}
    (out / "start.json").write_text(json.dumps({
        **s, "start_name": start_name, "minutes": a.minutes, "seeds": sorted({*a.seeds, *earlier.get("seeds", [])}),
        "jobs": a.jobs, "command": cmd, "commands": [*prior, cmd],
        "start_command": a.start_command or earlier.get("start_command"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "environment": environment_info([*KEY_PACKAGES, "trl"])}))
    print(f"start model: greedy {sum(s['greedy']) / len(s['greedy']):.3f}", flush=True)
    import yaml

    sets = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in a.set)}
    todo = []
    for seed in a.seeds:
        for m in a.methods:
            res = out / f"{m}-seed{seed}.json"
            if not res.is_file():
                todo.append({"method": m, "seed": seed, "set": sets, "start": str(a.start), "minutes": a.minutes,
                             "eval_prompts": a.eval_prompts, "rl_num_train": a.rl_num_train, "result": os.path.relpath(res), "tmp": os.path.relpath(out / f".tmp-{m}-{seed}")})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EMRL_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false"}
    running: list[tuple[subprocess.Popen, dict]] = []
    while todo or running:
        while todo and len(running) < a.jobs:
            spec = todo.pop(0)
            log = open(out / f".{spec['method']}-seed{spec['seed']}.log", "w")
            p = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
            running.append((p, spec))
        time.sleep(2)
        for p, spec in list(running):
            if p.poll() is not None:
                running.remove((p, spec))
                print(f"{spec['method']} seed {spec['seed']}: exit {p.returncode}", flush=True)
    print(report(out).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
