"""The GTrXL gating ablation (spec §8): TrXL, TrXL-I and GTrXL with each gate, over seeds
× learning rates, on a memory task hard enough that some variant fails.

Spec §8 (Parisotto et al. 2019, DMLab-30) quotes a 0% divergence rate across
hyper-parameter sweeps for GTrXL with GRU gates against 16% for TrXL-I. emrl's earlier
small-scale ablation (bsuite ``memory_len`` L = 10, learning rates up to 1e-2, gradient
clip 0.5) found 0 divergences for every variant. This grid makes the task harder —
a longer memory (L = 20: the context bit must be recalled 20 steps later), learning
rates of 1e-2, 3e-2 and 1e-1 and spec §8's loose gradient clip (max-norm 40 instead of 0.5) — so
that the instability the gates are meant to remove has room to appear.

Each cell is one ``emrl control train`` run (V-MPO, ``--core trxl|trxl-i|gtrxl``, for
gtrxl ``core_kwargs.gate`` = gru, input, output, highway or sigmoid-tanh). A run
*diverges* when training stops on a non-finite loss, gradient or policy (the trainer
raises); it *fails* when its final deterministic evaluation is not solved (mean return
< 0.8, i.e. < 90% recall, over ``eval_episodes`` episodes); it *collapses* when an
earlier evaluation was solved and the final one is not.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

NAME = "gtrxl-gating"
TITLE = "GTrXL gating ablation"
QUESTION_SOURCE = "spec §8, the memory core behind RQ2's Atari results; not a §2 question"
QUESTION = ("Do GTrXL's gates remove the training "
            "failures of TrXL and TrXL-I on a memory task hard enough that some variant fails?")
SUMMARY = ("TrXL vs TrXL-I vs GTrXL (gru, input, output, highway, sigmoid-tanh) × learning rates × seeds on "
           "bsuite memory_len: divergence and failure rates with intervals")

VARIANTS = ["trxl", "trxl-i", "gtrxl-gru", "gtrxl-input", "gtrxl-output", "gtrxl-highway", "gtrxl-sigmoid-tanh"]
SOLVED = 0.8

_CPU = {"memory_length_task": 20, "variants": VARIANTS, "lrs": [1e-2, 3e-2, 1e-1], "total_steps": 15_000,
        "transformer": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_mlp": 128},
        "num_envs": 16, "unroll_length": 32, "epochs": 4, "num_minibatches": 2, "max_grad_norm": 40.0,
        "gamma": 0.99, "eval_every": 5000, "eval_episodes": 50, "device": "cpu", "seeds": 3}
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {**_CPU, "memory_length_task": 3, "variants": ["trxl", "gtrxl-gru"], "lrs": [1e-2],
              "total_steps": 1024, "num_envs": 8, "unroll_length": 16, "epochs": 1, "eval_every": 0,
              "eval_episodes": 5, "transformer": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_mlp": 32},
              "seeds": 1},
    "cpu": _CPU,
    # spec §8's transformer sizes (embedding 256, 8 layers, 4 heads, key/value 32, MLP 512)
    # and a longer memory, on a GPU
    "gpu": {**_CPU, "memory_length_task": 50, "lrs": [1e-4, 3e-4, 1e-3, 3e-3], "total_steps": 500_000,
            "transformer": {"d_model": 256, "n_layers": 8, "n_heads": 4, "d_head": 32, "d_mlp": 512},
            "eval_every": 50_000, "device": "cuda", "seeds": 5},
}


def env_id(length: int) -> str:
    return f"bsuite/memory_len/length={length}"


GPU_NOTE = ("The `gpu` preset (`emrl experiment run gtrxl-gating --preset gpu --output-dir DIR`, not run "
            "here) uses spec §8's transformer sizes — embedding 256, 8 layers, 4 heads, key/value size 32, MLP "
            "512 — on memory_len L = 50 with learning rates 1e-4, 3e-4, 1e-3 and 3e-3, 500 000 env steps per run, "
            "5 seeds, on CUDA.")

def cells(params: dict, seeds: list[int]) -> list[dict]:
    return [{"key": f"{v}-lr{lr:g}-s{s}", "config": {"variant": v, "lr": lr}, "seed": s}
            for v in params["variants"] for lr in params["lrs"] for s in seeds]


def _core(variant: str) -> tuple[str, str | None]:
    if variant.startswith("gtrxl-"):
        return "gtrxl", variant[len("gtrxl-"):]
    return variant, None


def run_cell(cell: dict, ctx: dict) -> dict:
    from emrl.cli import main

    params = ctx["params"]
    core, gate = _core(cell["config"]["variant"])
    L = int(params["memory_length_task"])
    ck: dict[str, Any] = {**params["transformer"], "memory_length": L + 2}
    if gate:
        ck["gate"] = gate
    out = Path(ctx["workdir"]) / "run"
    argv = ["control", "train", "--algo", "vmpo", "--env", env_id(L), "--core", core,
            "--core-kwargs", json.dumps(ck, sort_keys=True), "--seed", str(cell["seed"]),
            "--lr", f"{cell['config']['lr']:g}", "--no-anneal-lr", "--total-steps", str(params["total_steps"]),
            "--num-envs", str(params["num_envs"]), "--unroll-length", str(params["unroll_length"]),
            "--epochs", str(params["epochs"]), "--num-minibatches", str(params["num_minibatches"]),
            "--max-grad-norm", str(params["max_grad_norm"]), "--gamma", str(params["gamma"]),
            "--gae-lambda", "0.95", "--eval-every", str(params["eval_every"]),
            "--eval-episodes", str(params["eval_episodes"]), "--checkpoint-every", "0",
            "--num-threads", "1", "--device", params.get("device", "cpu"), "--output-dir", str(out)]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            rc = main(argv)
        except Exception as e:  # non-finite numbers in the objectives or the policy raise
            print(f"{type(e).__name__}: {e}")
            rc = 1
    text = buf.getvalue()
    (Path(ctx["workdir"]) / "train.log").write_text(text, encoding="utf-8")
    evals: list[tuple[int, float]] = []
    grad_max = None
    mp = out / "metrics.jsonl"
    if mp.exists():
        rows = [json.loads(x) for x in mp.read_text().splitlines() if x.strip()]
        evals = [(int(r["samples"]), float(r["eval/return"])) for r in rows if "eval/return" in r]
        gns = [float(r.get("mstep/grad_norm", r.get("grad_norm"))) for r in rows
               if "mstep/grad_norm" in r or "grad_norm" in r]  # (the metric's old and new name)
        grad_max = max(gns) if gns else None
    if rc != 0:
        low = text.lower()
        # a diverged run: the trainer stops on non-finite numbers (an EmrlError naming them)
        status = "diverged" if any(w in low for w in ("non-finite", "nan", " inf", "constraint")) else "error"
        if status == "error":
            raise RuntimeError(f"run {cell['key']} failed for a reason other than divergence: {text[-600:]}")
        return {"status": status, "message": text.strip().splitlines()[-1][:300] if text.strip() else "",
                "evals": evals, "final": None, "best": max((v for _, v in evals), default=None),
                "solved": False, "collapsed": False, "grad_norm_max": grad_max}
    final = evals[-1][1] if evals else float("nan")
    best = max(v for _, v in evals) if evals else float("nan")
    return {"status": "ok", "evals": evals, "final": final, "best": best, "solved": bool(final >= SOLVED),
            "collapsed": bool(best >= SOLVED and final < SOLVED), "grad_norm_max": grad_max}


# ----------------------------------------------------------------------------- report
def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a rate k/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def _rate(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k}/{n} = {100 * k / n:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]" if n else "–"


def report(rep, records: list[dict], meta: dict) -> None:
    from emrl.experiments.recordtools import mean_curve

    params = meta["params"]
    variants = [v for v in params["variants"] if any(r["config"]["variant"] == v for r in records)]
    lrs = params["lrs"]
    rep.paragraph(
        f"Task: bsuite memory_len with memory length L = {params['memory_length_task']} (`{env_id(params['memory_length_task'])}`; "
        f"recall a bit after L steps, return ±1), V-MPO, {params['total_steps']} env steps per run, "
        f"transformer {params['transformer']} with memory {params['memory_length_task'] + 2}, fixed Adam learning "
        f"rate ∈ {{{', '.join(f'{x:g}' for x in lrs)}}}, gradient clip {params['max_grad_norm']:g} (spec §8's Atari "
        f"setting), {meta['seeds']} seeds. *Diverged*: the run stopped on non-finite numbers. *Failed*: final "
        f"deterministic evaluation ({params['eval_episodes']} episodes) below {SOLVED} mean return (< 90% recall); "
        "diverged runs count as failed. *Collapsed*: solved at an earlier evaluation, not at the end. Rates are "
        "over runs (seeds × learning rates) with 95% Wilson intervals.")
    rows = []
    fail_rates = {}
    for v in variants:
        rs = [r for r in records if r["config"]["variant"] == v]
        n = len(rs)
        div = sum(r["result"]["status"] == "diverged" for r in rs)
        fail = sum(not r["result"]["solved"] for r in rs)
        col = sum(bool(r["result"].get("collapsed")) for r in rs)
        finals = [r["result"]["final"] for r in rs if r["result"].get("final") is not None]
        fail_rates[v] = (fail, n)
        rows.append([v, n, _rate(div, n), _rate(fail, n), _rate(col, n),
                     sum(finals) / len(finals) if finals else None])
    rep.table(["variant", "runs", "diverged", "failed", "collapsed", "mean final return"], rows,
              align=["l", "r", "r", "r", "r", "r"])
    rows = []
    for v in variants:
        row: list[Any] = [v]
        for lr in lrs:
            rs = [r for r in records if r["config"]["variant"] == v and r["config"]["lr"] == lr]
            row.append(f"{sum(not r['result']['solved'] for r in rs)}/{len(rs)}" if rs else "–")
        rows.append(row)
    rep.table(["variant", *[f"failed at lr {x:g}" for x in lrs]], rows, caption="Failures by learning rate.",
              align=["l"] + ["r"] * len(lrs))
    fig, ax = rep.new_figure(width=7.0)
    xs = range(len(variants))
    for j, lr in enumerate(lrs):
        ys = []
        for v in variants:
            rs = [r for r in records if r["config"]["variant"] == v and r["config"]["lr"] == lr]
            ys.append(sum(not r["result"]["solved"] for r in rs) / len(rs) if rs else float("nan"))
        w = 0.8 / len(lrs)
        ax.bar([x + (j - (len(lrs) - 1) / 2) * w for x in xs], ys, width=w, label=f"lr {lr:g}")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(variants, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("core variant")
    ax.set_ylabel("failed runs (fraction of seeds)")
    ax.legend(fontsize=8)
    rep.figure(fig, "failure_rates.png", "Fraction of seeds whose final evaluation is not solved, per variant "
                                         "and learning rate (diverged runs included).")
    fig, ax = rep.new_figure(width=7.0)
    for v in variants:
        rs = [r for r in records if r["config"]["variant"] == v and r["result"]["evals"]]
        if not rs:
            continue
        steps, mean = mean_curve([r["result"]["evals"] for r in rs])
        ax.plot(steps, mean, marker=".", label=v)
    ax.set_xlabel("env steps")
    ax.set_ylabel("evaluation return (mean over runs)")
    ax.legend(fontsize=7)
    rep.figure(fig, "curves.png", "Deterministic evaluation return during training, mean over seeds × "
                                  "learning rates.")
    rep.paragraph(GPU_NOTE)
    rep.heading("Verdict")
    total_div = sum(r["result"]["status"] == "diverged" for r in records)
    items = [f"{total_div} of {len(records)} runs diverged (non-finite numbers)."]
    if total_div == 0:
        items.append("Spec §8's divergence contrast (0% GTrXL-GRU vs 16% TrXL-I) is therefore not tested by "
                     "divergence here: at this scale the variants differ in whether they learn the task, not in "
                     "whether their numbers blow up.")
    if fail_rates:
        rate = {v: k / max(1, n) for v, (k, n) in fail_rates.items()}
        hi, lo = max(rate.values()), min(rate.values())
        worst = [v for v in fail_rates if rate[v] == hi]
        best = [v for v in fail_rates if rate[v] == lo]
        items.append(f"Highest failure rate: {', '.join(worst)} ({_rate(*fail_rates[worst[0]])}); lowest: "
                     f"{', '.join(best)} ({_rate(*fail_rates[best[0]])}).")
        for lr in lrs:
            rs = [r for r in records if r["config"]["lr"] == lr]
            if rs and all(not r["result"]["solved"] for r in rs):
                items.append(f"At lr {lr:g} every variant failed ({len(rs)}/{len(rs)} runs): the learning rate, "
                             "not the architecture, decides there.")
        for v in ("trxl", "trxl-i"):
            if v in fail_rates and "gtrxl-gru" in fail_rates:
                (k1, n1), (k2, n2) = fail_rates[v], fail_rates["gtrxl-gru"]
                lo1, hi1 = wilson(k1, n1)
                lo2, hi2 = wilson(k2, n2)
                overlap = not (hi2 < lo1 or hi1 < lo2)
                items.append(f"{v} vs gtrxl-gru failure rate: {_rate(k1, n1)} vs {_rate(k2, n2)} — "
                             + ("the intervals overlap: at this scale the data do not separate them."
                                if overlap else "the intervals do not overlap."))
    rep.bullets(items)
