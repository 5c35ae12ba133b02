"""Cost of one update of each LM algorithm against a plain SFT step (issue 4).

On one model (the ``tiny`` preset) and one batch (``--prompts`` prompts x ``--k``
samples, completions sampled once and reused by every algorithm), prints for each
algorithm: the tokens/s of its update (E-step + M-step, excluding sampling), and the
forward passes it needs per update, split into teacher-forced passes of the policy
(π_old and M-step), of frozen models (π_ref) and ``generate`` calls.

    python benchmarks/lm_update_cost.py [--prompts 16] [--k 8] [--epochs 2] [--threads 1]

The M-step of the EM algorithms (vmpo, awr, dar) is weighted NLL; V-MPO with its trust
region off skips zero-weight samples. Figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import time

import torch

from emrl.lm.algorithms import Batch
from emrl.lm.train_config import RLConfig, SFTConfig
from emrl.lm.trainer import LMTrainer


class _Counter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.n = 0
        module.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.n += 1


def _clone(b: Batch) -> Batch:
    return Batch({k: v.clone() for k, v in b.tensors.items()}, {k: list(v) for k, v in b.lists.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    common = dict(batch_size=args.prompts, num_threads=args.threads, epochs=args.epochs, max_new_tokens=8)
    # one shared set of sampled completions
    base = LMTrainer(RLConfig(algo="vmpo", num_samples=args.k, **common), None)
    rows = base.next_rows(0)
    ro, rewards = base.sample_and_score(rows, args.k)
    n_tok = int(ro.attention_mask.sum())
    print(f"model: tiny ({sum(p.numel() for p in base.lm.parameters()) / 1e6:.2f}M params), batch: "
          f"{args.prompts} prompts x {args.k} samples = {len(ro.texts)} sequences, {n_tok} tokens, "
          f"epochs={args.epochs}, threads={args.threads}")
    print(f"{'algorithm':<24}{'update tok/s':>14}{'vs SFT':>9}{'policy fwd':>12}{'frozen fwd':>12}{'generate':>10}")
    results = {}
    cases = [
        ("sft (delta)", SFTConfig(**common)),
        ("vmpo", RLConfig(algo="vmpo", num_samples=args.k, **common)),
        ("vmpo (no trust region)", RLConfig(algo="vmpo", num_samples=args.k, trust_region=False, **common)),
        ("awr", RLConfig(algo="awr", num_samples=args.k, **common)),
        ("dar", RLConfig(algo="dar", num_samples=args.k, **common)),
        ("ppo (token, GAE)", RLConfig(algo="ppo", num_samples=args.k, target_kl=None, **common)),
        ("ppo (sequence)", RLConfig(algo="ppo", ppo_level="sequence", num_samples=args.k, target_kl=None,
                                    **common)),
    ]
    for name, cfg in cases:
        tr = LMTrainer(cfg, None)
        pol = _Counter(tr.lm)
        frozen = [_Counter(m) for m in (getattr(tr.algo, "ref", None),) if m is not None]
        gen_calls = 1 if cfg.__class__ is RLConfig else 0
        if isinstance(cfg, SFTConfig):
            sft_rows = [r for r in rows for _ in range(args.k)]
            batch0 = tr.encode([r["prompt"] for r in sft_rows], [tr.demonstration(r) for r in sft_rows], sft_rows)
        else:
            batch0 = tr.rollout_batch(ro, rewards, rows, args.k)
        times = []
        for _rep in range(args.repeats):
            pol.n = 0
            for f in frozen:
                f.n = 0
            b = _clone(batch0)
            t0 = time.perf_counter()
            if not isinstance(cfg, SFTConfig):
                tr.algo.finish_batch(tr.ctx, b)
            tr.algo.estep(tr.ctx, b)
            tr._mstep(b)
            times.append(time.perf_counter() - t0)
        tokens = int(batch0["attention_mask"].sum()) * args.epochs
        tps = tokens / min(times)
        results[name] = tps
        rel = tps / results["sft (delta)"]
        print(f"{name:<24}{tps:>14.0f}{rel:>9.2f}{pol.n:>12d}{sum(f.n for f in frozen):>12d}{gen_calls:>10d}")
    print("policy fwd = teacher-forced passes of the policy per update (pi_old + M-step minibatches x epochs);"
          " frozen fwd = reference-model passes; generate = sampling calls (not timed above).")


if __name__ == "__main__":
    main()
