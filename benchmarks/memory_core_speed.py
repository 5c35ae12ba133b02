"""Speed of the memory cores (issue 6): one actor step (T = 1) and one update segment.

For each core, the median time of (a) ``forward`` with T = 1 for B environments, carrying
the state, under ``torch.no_grad`` (what the actor does every env step), and (b) one
forward + backward over a T-step segment from a stored state (what the update does per
minibatch). One torch thread. Example::

    nice -n 10 .venv/bin/python benchmarks/memory_core_speed.py --envs 16 --unroll 32
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from emrl.nn.build import build_core

CONFIGS = {
    "gtrxl-small (d64, 2 layers, M 32)": (
        "gtrxl", dict(d_model=64, n_layers=2, n_heads=4, d_mlp=128, memory_length=32)),
    "trxl-small (d64, 2 layers, M 32)": (
        "trxl", dict(d_model=64, n_layers=2, n_heads=4, d_mlp=128, memory_length=32)),
    "gtrxl-spec8 (d256, 8 layers, 4x32 heads, MLP 512, M 63)": (
        "gtrxl", dict(d_model=256, n_layers=8, n_heads=4, d_head=32, d_mlp=512, memory_length=63)),
    "lstm (128)": ("lstm", dict(hidden_size=128)),
}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def actor_step(core, state, x, reset) -> None:
    with torch.no_grad():
        core(x, state, reset)


def update_segment(core, state, x, reset) -> None:
    core.zero_grad(set_to_none=True)
    y, _ = core(x, state, reset)
    y.square().mean().backward()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--unroll", type=int, default=32)
    p.add_argument("--input-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    B, T, D = args.envs, args.unroll, args.input_size
    print(f"| core | actor step T=1, B={B} (ms) | update segment T={T}, B={B}, fwd+bwd (ms) |")
    print("|---|---|---|")
    for label, (name, kw) in CONFIGS.items():
        core = build_core(name, D, **kw)
        state = core.initial_state(B)
        x1, r1 = torch.randn(1, B, D), torch.zeros(1, B, dtype=torch.bool)
        with torch.no_grad():
            for _ in range(T):  # fill the memory
                _, state = core(x1, state, r1)

        xs, rs = torch.randn(T, B, D), torch.zeros(T, B, dtype=torch.bool)
        a = timed(functools.partial(actor_step, core, state, x1, r1), args.repeats * 5)
        u = timed(functools.partial(update_segment, core, state, xs, rs), args.repeats)
        print(f"| {label} | {1e3 * a:.2f} | {1e3 * u:.1f} |", flush=True)


if __name__ == "__main__":
    main()
