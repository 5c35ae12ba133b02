"""Memory benchmarks for the control agents' cores (issue 6; spec §8).

Suites (each run is a real ``emrl.control.train.train`` run, evaluated every
``--eval-every`` env steps with the policy's mode):

* ``memory_len``: bsuite ``memory_len`` (a context bit shown at the first step must be
  reported after ``L`` more steps; return +1 / −1). Success rate = (return + 1) / 2;
  "solved" = deterministic evaluation success ≥ 90 % (mean return ≥ 0.8).
* ``repeat_previous``: popgym ``RepeatPreviousEasy`` (output the suit of the card seen
  4 steps before; returns in [−1, 1]); "solved" = mean evaluation return ≥ 0.9.
* ``count_recall``: popgym ``CountRecallEasy`` (one deck, two colours; each step shows the
  dealt card's colour and a queried colour, and the next action must be how many cards of
  the queried colour have been dealt so far, 0–26; reward ±1/51 per step, so returns lie
  in [−1, 1]); "solved" = mean evaluation return ≥ 0.9. The transformer memory defaults
  to 64 steps so that a whole 51-step episode fits.
* ``ablation``: the gating ablation (Parisotto et al. 2019, spec §8) on one memory task:
  TrXL, TrXL-I and GTrXL with each gate over seeds × learning rates; a run *diverges* if
  its loss / outputs become non-finite (it raises) and *fails* if its final evaluation is
  not solved.

Each finished run appends one JSON line to ``--jsonl`` (so an interrupted sweep keeps its
results); ``--report`` regenerates a markdown table from that file. Example::

    nice -n 10 .venv/bin/python benchmarks/memory_bench.py memory_len --lengths 10 30 \\
        --cores gtrxl lstm mlp --algos vmpo --seeds 0 1 --total-steps 60000 \\
        --jsonl benchmarks/results/memory_len.jsonl
    .venv/bin/python benchmarks/memory_bench.py report \\
        --jsonl benchmarks/results/memory_len.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch
import yaml

from emrl.control.config import ControlConfig
from emrl.control.train import train
from emrl.metrics import read_metrics

# bsuite memory_len sweep ids by memory length (bsuite.experiments.memory_len.sweep).
BSUITE_MEMORY_LEN_ID = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6, 8: 7, 9: 8, 10: 9, 12: 10,
                        14: 11, 17: 12, 20: 13, 25: 14, 30: 15, 40: 16, 50: 17, 60: 18}

# Small memory-core sizes for CPU benchmarks (spec §8's sizes are for GPU Atari runs).
TRANSFORMER = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_mlp": 128}

SOLVED = {"memory_len": 0.8, "repeat_previous": 0.9, "count_recall": 0.9}

# popgym tasks: Gymnasium id (registered by emrl's popgym adapter, emrl.control.envs) and
# default transformer memory length M.
POPGYM_TASKS = {"repeat_previous": ("popgym-RepeatPreviousEasy-v0", 16),
                "count_recall": ("popgym-CountRecallEasy-v0", 64)}


def env_id(task: str, length: int | None = None) -> str:
    if task == "memory_len":
        if length not in BSUITE_MEMORY_LEN_ID:
            raise SystemExit(f"memory_len length must be one of {sorted(BSUITE_MEMORY_LEN_ID)}")
        return f"bsuite/memory_len/{BSUITE_MEMORY_LEN_ID[length]}"
    return POPGYM_TASKS[task][0]


def make_config(args, task: str, length: int | None, core: str, gate: str, algo: str, seed: int,
                lr: float) -> ControlConfig:
    memory = args.memory_length or ((length or 0) + 2 if task == "memory_len"
                                    else POPGYM_TASKS[task][1])
    core_kwargs: dict = {}
    if core in ("trxl", "trxl-i", "gtrxl"):
        core_kwargs = {**TRANSFORMER, "memory_length": memory}
        if core == "gtrxl":
            core_kwargs["gate"] = gate
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key.replace("-", "_")] = yaml.safe_load(value)
    fields = dict(
        algo=algo, env=env_id(task, length), core=core, core_kwargs=core_kwargs,
        hidden_sizes=[64, 64], total_steps=args.total_steps, seed=seed,
        num_envs=args.num_envs, unroll_length=args.unroll_length, lr=lr,
        anneal_lr=False, epochs=args.epochs, num_minibatches=args.num_minibatches,
        gamma=args.gamma, gae_lambda=0.95, ent_coef=args.ent_coef,
        eval_every=args.eval_every, eval_episodes=args.eval_episodes,
        checkpoint_every=0, num_threads=1,
    )
    return ControlConfig(**{**fields, **overrides})  # --set wins over the options above


def run_one(args, task, length, core, gate, algo, seed, lr) -> dict:
    cfg = make_config(args, task, length, core, gate, algo, seed, lr)
    name = (f"{task}{length or ''}-{algo}-{core}{'-' + gate if core == 'gtrxl' else ''}-lr{lr:g}-s{seed}"
            f"-{cfg.total_steps}{''.join('-' + o for o in args.set)}")  # distinct per sweep setting
    run_dir = Path(args.runs_dir) / name
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    row = {"task": task, "length": length, "env": cfg.env, "algo": algo, "core": core,
           "gate": gate if core == "gtrxl" else None, "seed": seed, "lr": lr,
           "total_steps": cfg.total_steps, "core_kwargs": cfg.core_kwargs,
           "overrides": list(args.set), "gamma": cfg.gamma, "num_envs": cfg.num_envs, "unroll_length": cfg.unroll_length, "epochs": cfg.epochs}
    try:
        final = train(cfg, run_dir, overwrite=True)
        row["status"] = "ok"
        row["final_eval"] = final["eval/return"]
    except Exception as e:  # a diverged run (non-finite loss/params) is a result here
        row["status"] = "error"
        row["error"] = f"{type(e).__name__}: {e}"[:300]
        traceback.print_exc()
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    threshold = SOLVED[task if task != "ablation" else args.ablation_task]
    evals = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        evals = [(r["samples"], r["wall_time"], r["eval/return"])
                 for r in read_metrics(metrics) if "eval/return" in r]
    row["evals"] = [[s, round(w, 1), round(v, 3)] for s, w, v in evals]
    solved = [(s, w) for s, w, v in evals if v >= threshold]
    row["solved_at_steps"] = solved[0][0] if solved else None
    row["solved_at_s"] = round(solved[0][1], 1) if solved else None
    fin = row.get("final_eval")
    row["final_solved"] = bool(fin is not None and math.isfinite(fin) and fin >= threshold)
    return row


def sweep(args) -> None:
    jsonl = Path(args.jsonl)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if jsonl.exists() and not args.rerun:
        for line in jsonl.read_text().splitlines():
            r = json.loads(line)
            done.add((r["task"], r["length"], r["algo"], r["core"], r.get("gate"), r["seed"], r["lr"],
                      r["total_steps"], r["num_envs"], tuple(r.get("overrides", ()))))
    task = args.suite if args.suite != "ablation" else args.ablation_task
    lengths = args.lengths if task == "memory_len" else [None]
    variants = [(c, args.gate) for c in args.cores]
    if args.suite == "ablation":
        variants = [("trxl", "gru"), ("trxl-i", "gru")] + [("gtrxl", g) for g in args.gates]
    command = "nice -n 10 .venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv)
    for length in lengths:
        for algo in args.algos:
            for core, gate in variants:
                for lr in args.lrs:
                    for seed in args.seeds:
                        key = (task, length, algo, core, gate if core == "gtrxl" else None, seed, lr,
                               args.total_steps, args.num_envs, tuple(args.set))
                        if key in done:
                            continue
                        row = run_one(args, task, length, core, gate, algo, seed, lr)
                        row["suite"] = args.suite
                        row["command"] = command
                        row["host"] = f"{platform.machine()} {torch.get_num_threads()} thread(s)"
                        with jsonl.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                        print(json.dumps({k: row.get(k) for k in ("env", "algo", "core", "gate", "seed",
                                                               "lr", "final_eval", "solved_at_steps",
                                                               "solved_at_s", "wall_s", "status")}),
                              flush=True)


def report(args) -> None:
    rows = [json.loads(x) for x in Path(args.jsonl).read_text().splitlines() if x.strip()]
    print("| suite | env | algo | core | gate | lr | seed | steps | final eval | solved at (steps) | solved at (s) | wall (s) | status |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fe = r.get("final_eval")
        print(f"| {r.get('suite', r['task'])} | {r['env']} | {r['algo']} | {r['core']} | {r.get('gate') or '-'} "
              f"| {r['lr']:g} | {r['seed']} | {r['total_steps']} | {'-' if fe is None else f'{fe:.3f}'} "
              f"| {r['solved_at_steps'] or '-'} | {r['solved_at_s'] or '-'} | {r['wall_s']} | {r['status']} |")
    groups: dict = {}
    for r in rows:
        setting = f"{r['total_steps']} steps, {r['num_envs']} envs, γ {r.get('gamma', '-')}"
        if args.by_lr:
            setting += f", lr {r['lr']:g}"
        setting += "".join(f", {o}" for o in r.get("overrides", []))
        groups.setdefault((r["env"], r["algo"], r["core"], r.get("gate"), setting), []).append(r)
    print("\n| env | algo | core | gate | setting | runs | diverged (error) | failed (final not solved) | solved at (median steps) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (env, algo, core, gate, setting), rs in groups.items():
        div = sum(r["status"] != "ok" for r in rs)
        fail = sum(not r["final_solved"] for r in rs)
        st = sorted(r["solved_at_steps"] for r in rs if r["solved_at_steps"])
        med = st[len(st) // 2] if st else "-"
        print(f"| {env} | {algo} | {core} | {gate or '-'} | {setting} | {len(rs)} | {div} ({100 * div / len(rs):.0f}%) "
              f"| {fail} ({100 * fail / len(rs):.0f}%) | {med} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite", choices=["memory_len", *POPGYM_TASKS, "ablation", "report"])
    p.add_argument("--jsonl", required=True, help="results file (one JSON line per run; appended)")
    p.add_argument("--lengths", type=int, nargs="+", default=[10, 30])
    p.add_argument("--cores", nargs="+", default=["gtrxl", "lstm", "mlp"])
    p.add_argument("--gate", default="gru", help="gate of gtrxl in the memory_len/popgym suites")
    p.add_argument("--gates", nargs="+", default=["gru", "output", "input", "highway", "sigmoid-tanh"],
                   help="ablation: gtrxl gates (trxl and trxl-i always run)")
    p.add_argument("--ablation-task", default="repeat_previous", choices=["memory_len", *POPGYM_TASKS])
    p.add_argument("--algos", nargs="+", default=["vmpo"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--lrs", type=float, nargs="+", default=[5e-4])
    p.add_argument("--total-steps", type=int, default=50_000)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--unroll-length", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--num-minibatches", type=int, default=2)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--ent-coef", type=float, default=0.0)
    p.add_argument("--memory-length", type=int, default=0, help="transformer memory M (0: task default)")
    p.add_argument("--eval-every", type=int, default=5_000)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="further ControlConfig overrides, e.g. eps_alpha=0.1")
    p.add_argument("--by-lr", action="store_true", help="report: one summary row per learning rate")
    p.add_argument("--runs-dir", default="runs/memory_bench")
    p.add_argument("--rerun", action="store_true", help="run again even if the JSONL has the run")
    args = p.parse_args()
    if args.suite == "report":
        report(args)
    else:
        sweep(args)


if __name__ == "__main__":
    main()
