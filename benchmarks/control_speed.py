"""Env-steps per second: emrl PPO vs Stable-Baselines3 PPO, same hyperparameters,
same machine, in one run (interleaved repeats), reported as a ratio. Also emrl's
thread-count sweep that chose the default ``num_threads=1``.

Hyperparameters (emrl's CartPole defaults = rl-zoo's CartPole PPO): 8 envs (sync,
one process), 32 steps per env per update, 20 epochs, one minibatch of 256, Adam
1e-3 annealed linearly, clip 0.2 annealed, γ 0.98, GAE λ 0.8, value coefficient 0.5,
entropy 0, grad-norm 0.5, separate 64-64 tanh MLPs for policy and value.

Two measures per run: wall-clock env-steps/s of training only (SB3's ``learn``; emrl's
loop up to its last update, read from ``metrics.jsonl``), and env-steps per second of
*process CPU time* (``time.process_time``) around the same call, which is far less
sensitive to other jobs on a shared machine (emrl's CPU figure also covers its env
construction, one final evaluation episode and the final checkpoint, so it slightly
favours SB3).

    python benchmarks/control_speed.py --steps 50000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("EMRL_PROGRESS", "0")

import torch  # noqa: E402

from emrl.control.config import ControlConfig  # noqa: E402
from emrl.control.train import train  # noqa: E402
from emrl.metrics import read_metrics  # noqa: E402


def emrl_sps(env: str, steps: int, threads: int, algo: str = "ppo") -> tuple[float, float]:
    """(wall-clock steps/s, CPU-time steps/s)."""
    cfg = ControlConfig(algo=algo, env=env, total_steps=steps, eval_every=0, eval_episodes=1,
                        save_every=0, num_threads=threads, seed=0)
    with tempfile.TemporaryDirectory() as d:
        c0 = time.process_time()
        train(cfg, Path(d) / "run")
        cpu = time.process_time() - c0
        rows = [r for r in read_metrics(Path(d) / "run" / "metrics.jsonl") if "reward/mean" in r]
    # wall_time of the last update record: seconds since the run started
    return rows[-1]["samples"] / rows[-1]["wall_time"], rows[-1]["samples"] / cpu


def sb3_sps(env: str, steps: int, threads: int) -> tuple[float, float]:
    """(wall-clock steps/s, CPU-time steps/s)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(threads)
    cfg = ControlConfig()
    venv = make_vec_env(env, n_envs=cfg.num_envs, seed=0)
    lin = lambda v: (lambda progress: progress * v)  # noqa: E731  (SB3 progress goes 1 -> 0)
    model = PPO(
        "MlpPolicy", venv, n_steps=cfg.unroll_length, batch_size=cfg.num_envs * cfg.unroll_length,
        n_epochs=cfg.epochs, learning_rate=lin(cfg.learning_rate), clip_range=lin(cfg.clip_eps),
        gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm, normalize_advantage=True, seed=0, device="cpu", verbose=0,
        policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.Tanh},
    )
    t0, c0 = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=steps)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    venv.close()
    return steps / wall, steps / cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="emrl thread sweep")
    ap.add_argument("--sweep-steps", type=int, default=5_000,
                    help="env steps of each thread-sweep run (threads > 1 can be very slow on a busy machine)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "control_speed.md"))
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    emrl, sb3, vmpo = [], [], []
    sweep: dict[int, list[tuple[float, float]]] = {t: [] for t in args.threads}
    for i in range(args.repeats):
        sb3.append(sb3_sps(args.env, args.steps, 1))
        emrl.append(emrl_sps(args.env, args.steps, 1))
        vmpo.append(emrl_sps(args.env, args.steps, 1, algo="vmpo"))
        sweep_1 = emrl_sps(args.env, args.sweep_steps, 1) if len(args.threads) > 1 else None
        for t in args.threads:
            if t != 1:
                sweep[t].append(emrl_sps(args.env, args.sweep_steps, t))
        print(f"repeat {i}: (wall, cpu) steps/s  sb3 {sb3[-1][0]:.0f}, {sb3[-1][1]:.0f}  "
              f"emrl-ppo {emrl[-1][0]:.0f}, {emrl[-1][1]:.0f}  emrl-vmpo {vmpo[-1][0]:.0f}, {vmpo[-1][1]:.0f}",
              flush=True)
        if sweep_1 is not None and 1 in sweep:
            sweep[1].append(sweep_1)

    def med(xs, k):
        return statistics.median(x[k] for x in xs)

    def alls(xs, k):
        return ", ".join(f"{x[k]:.0f}" for x in xs)

    cmd = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    lines = [
        f"# Control speed: emrl vs Stable-Baselines3 PPO on {args.env}",
        "",
        f"Command: `{cmd}` (repository root, `.venv/bin/python`, niceness {os.nice(0)}).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; load average before the run "
        f"{load0:.2f} (other jobs inflate the wall-clock figures more than the CPU-time "
        "ones, the fairer comparison). torch threads = 1 for both unless stated.",
        f"Recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.steps} env steps per run, "
        f"{args.repeats} interleaved repeats; medians.",
        "",
        "| run | wall env-steps/s | CPU-time env-steps/s | wall, all repeats | CPU, all repeats |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, xs in (("SB3 PPO", sb3), ("emrl PPO", emrl), ("emrl V-MPO", vmpo)):
        lines.append(f"| {name} | {med(xs, 0):.0f} | {med(xs, 1):.0f} | {alls(xs, 0)} | {alls(xs, 1)} |")
    lines += [
        "",
        f"**Ratio emrl PPO / SB3 PPO: {med(emrl, 1) / med(sb3, 1):.2f}x by CPU time, "
        f"{med(emrl, 0) / med(sb3, 0):.2f}x by wall clock** (V-MPO / SB3 PPO: "
        f"{med(vmpo, 1) / med(sb3, 1):.2f}x CPU, {med(vmpo, 0) / med(sb3, 0):.2f}x wall).",
        "",
        f"Thread sweep (emrl PPO, {args.sweep_steps} env steps per run, same repeats; chose the default `num_threads=1`):",
        "",
        "| torch threads | wall env-steps/s | CPU-time env-steps/s |",
        "| --- | --- | --- |",
    ]
    for t in sorted(sweep):
        if sweep[t]:
            lines.append(f"| {t} | {med(sweep[t], 0):.0f} | {med(sweep[t], 1):.0f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
