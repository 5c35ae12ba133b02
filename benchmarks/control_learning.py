"""Learning curves of the control agents (PPO, V-MPO) over seeds; records the figures.

Presets (the exact overrides are printed into the record):

* ``cartpole``    CartPole-v1, 100k steps, library defaults; target: eval ≥ 475.
* ``lunarlander`` LunarLander-v3, 1M steps, overrides below; target: deterministic eval ≥ 200.
* ``pendulum``    Pendulum-v1 (continuous, Gaussian policy), V-MPO, 300k steps, overrides below;
  target (for the table): eval ≥ -200.

Evaluation: ``eval_episodes`` full episodes with the policy's mode (deterministic)
every ``eval_every`` env steps, on separately seeded envs. Writes
``benchmarks/results/control_<preset>.md`` (appending nothing: the file is rewritten).

    python benchmarks/control_learning.py --preset cartpole --seeds 0 1 2 [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("EMRL_PROGRESS", "0")

from emrl.control.config import ControlConfig  # noqa: E402
from emrl.control.train import train  # noqa: E402
from emrl.metrics import read_metrics  # noqa: E402

PRESETS: dict[str, dict] = {
    "cartpole": {
        "env": "CartPole-v1", "algos": ["ppo", "vmpo"], "total_steps": 100_000, "target": 475.0,
        "overrides": {"eval_every": 5_000, "eval_episodes": 10},
    },
    "lunarlander": {
        "env": "LunarLander-v3", "algos": ["ppo", "vmpo"], "total_steps": 1_000_000, "target": 200.0,
        # rl-zoo's LunarLander PPO hyperparameters (16 envs x 1024 steps, minibatch 64,
        # 4 epochs, γ 0.999, λ 0.98, entropy 0.01, constant lr 3e-4 and clip 0.2)
        "overrides": {"num_envs": 16, "unroll_length": 1024, "gamma": 0.999, "gae_lambda": 0.98,
                      "epochs": 4, "num_minibatches": 256, "learning_rate": 3e-4, "anneal_lr": False,
                      "ent_coef": 0.01, "anneal_clip": False, "eval_every": 50_000,
                      "eval_episodes": 10, "save_every": 0},
    },
    "pendulum": {
        "env": "Pendulum-v1", "algos": ["vmpo"], "total_steps": 300_000, "target": -200.0,
        "overrides": {"gamma": 0.95, "gae_lambda": 0.95, "epochs": 10, "unroll_length": 64,
                      "normalize_obs": True, "reward_scale": 0.1, "vmpo_norm_adv": True,
                      "eval_every": 10_000, "eval_episodes": 10},
    },
}


def run_one(env: str, algo: str, seed: int, total: int, overrides: dict) -> dict:
    cfg = ControlConfig(algo=algo, env=env, seed=seed, total_steps=total, **overrides)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        train(cfg, Path(d) / "run")
        wall = time.perf_counter() - t0
        rows = read_metrics(Path(d) / "run" / "metrics.jsonl")
    curve = [(r["samples"], r["eval/return"]) for r in rows if "eval/return" in r]
    sps = [r["throughput/steps_per_s"] for r in rows if "throughput/steps_per_s" in r]
    return {"algo": algo, "seed": seed, "curve": curve, "wall_s": wall,
            "steps_per_s_median": sorted(sps)[len(sps) // 2] if sps else None}


def plot_curves(results: list[dict], title: str, target: float, path: Path) -> None:
    """Evaluation return against env steps, one line per (algorithm, seed), with the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ppo": "tab:blue", "vmpo": "tab:orange"}
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        xs, ys = zip(*r["curve"], strict=True)
        ax.plot(xs, ys, styles[r["seed"] % len(styles)], color=colors.get(r["algo"], "tab:gray"),
                lw=1.2, label=f"{r['algo']} seed {r['seed']}")
    ax.axhline(target, color="black", lw=0.8, alpha=0.6, label=f"target {target:g}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("deterministic evaluation return")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_record(path: Path) -> list[dict]:
    """The curves of a record written by this script (its "- algo seed N: step: value, ..." lines)."""
    results = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("- ") or " seed " not in line or ": " not in line:
            continue
        head, _, rest = line[2:].partition(": ")
        algo, _, seed = head.partition(" seed ")
        if not seed.isdigit():
            continue
        curve = [(int(a), float(b)) for a, b in (pt.split(": ") for pt in rest.split(", "))]
        results.append({"algo": algo, "seed": int(seed), "curve": curve})
    if not results:
        raise SystemExit(f"{path}: no curves found (not a record of this script?)")
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--algos", nargs="+", default=None)
    ap.add_argument("--total-steps", type=int, default=None)
    ap.add_argument("--out", default=None, help="markdown record (default benchmarks/results/control_<preset>.md)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs in parallel, one process each (each uses one torch thread)")
    ap.add_argument("--dual-schedule", choices=["update", "minibatch"], default=None,
                    help="V-MPO's dual_schedule (default: the library default); recorded in the config line")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the PNG of the preset's existing record (or --out) from its curves")
    args = ap.parse_args()
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    p = PRESETS[args.preset]
    algos = args.algos or p["algos"]
    unknown = [a for a in algos if a not in ("ppo", "vmpo")]
    if unknown:
        ap.error(f"unknown algorithm(s) {unknown}; expected ppo or vmpo")
    total = args.total_steps or p["total_steps"]
    out = Path(args.out or Path(__file__).parent / "results" / f"control_{args.preset}.md")
    title = f"{p['env']}: evaluation return ({args.preset} preset)"
    if args.replot:
        plot_curves(read_record(out), title, p["target"], out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.png')}")
        return 0
    overrides = dict(p["overrides"])
    if args.dual_schedule:
        overrides["dual_schedule"] = args.dual_schedule
    jobs = [(p["env"], algo, seed, total, overrides) for algo in algos for seed in args.seeds]
    results = []

    def done(r: dict) -> None:
        r["first_target_step"] = next((s for s, v in r["curve"] if v >= p["target"]), None)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
        print("  curve:", " ".join(f"{s}:{v:.0f}" for s, v in r["curve"]), flush=True)

    if args.jobs == 1:
        for job in jobs:
            done(run_one(*job))
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            for r in pool.starmap(run_one, jobs):
                done(r)
    cmd = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    lines = [
        f"# Control learning curves: {p['env']} ({args.preset})",
        "",
        f"Command: `{cmd}` (from the repository root, `.venv/bin/python`).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (figures taken under contention), "
        f"torch threads = {ControlConfig().num_threads}, {args.jobs} run(s) at a time; recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Config: library defaults (V-MPO dual_schedule={ControlConfig().dual_schedule!r} unless set here) plus "
        f"`{json.dumps(overrides)}`; total {total} env steps.",
        f"Evaluation: mean undiscounted return of {p['overrides'].get('eval_episodes', 10)} episodes with the policy's mode (deterministic), "
        f"every {p['overrides'].get('eval_every')} env steps and at the end. Target: {p['target']}.",
        "",
        "| algo | seed | first eval ≥ target at env step | best eval | final eval | wall s | median steps/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        best = max(v for _, v in r["curve"])
        lines.append(
            f"| {r['algo']} | {r['seed']} | {r['first_target_step'] if r['first_target_step'] is not None else 'not reached'} "
            f"| {best:.1f} | {r['curve'][-1][1]:.1f} | {r['wall_s']:.0f} | {r['steps_per_s_median']:.0f} |"
        )
    lines += ["", "Summary:"]
    for algo in algos:
        rs = [r for r in results if r["algo"] == algo]
        hit = sum(r["first_target_step"] is not None for r in rs)
        lines.append(f"- {algo}: reached {p['target']} on {hit} of {len(rs)} seeds within {total} steps.")
    lines += ["", "Curves (env step: eval return):", ""]
    for r in results:
        lines.append(f"- {r['algo']} seed {r['seed']}: " + ", ".join(f"{s}: {v:.1f}" for s, v in r["curve"]))
    lines += ["", f"![curves]({out.with_suffix('.png').name})"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    plot_curves(results, title, p["target"], out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
