"""Tokens per second of the ``tiny`` model on this machine: sampling and a plain SFT step.

* generation: ``emrl.lm.generation.generate`` (HF ``generate``, eval mode, KV cache) of
  ``--samples`` completions for each of ``--prompts`` held-out prompts of the default task
  at temperature 1; tokens/s counts generated completion tokens (EOS included);
* SFT: one training step of plain SFT (δ target, spec §6): teacher-forced
  the training forward pass (``emrl.lm.forward.policy_forward`` over the trainer's
  ``PolicyModule``, as ``LMTrainer``'s M-step runs it) → ``weighted_nll`` (token mean) →
  backward → AdamW step, on
  ``--batch-size`` (prompt, answer) pairs of the default task; tokens/s counts all
  non-padding tokens of the batch (prompt + completion), and completion tokens separately.

For each thread count in ``--threads`` it runs ``--repeats`` timed rounds (after one
warm-up round) and prints the median. Run on an idle machine for clean figures; on a
shared machine say so when quoting them.

    python benchmarks/lm_throughput.py --threads 1,2 --repeats 3

With ``--learn-steps N`` it then also runs a plain SFT learning curve of the fresh tiny
model on the default task (batch 64, AdamW lr 3e-3, betas (0.9, 0.99), 20 warm-up steps,
cosine decay to 0.1x, grad-norm clip 1, one thread) and prints held-out greedy accuracy,
sampled accuracy (4 samples, temperature 1) and pass@4 on 200 prompts six times — the
check that the ``tiny`` defaults are learnable on a CPU in minutes:

    python benchmarks/lm_throughput.py --threads 1 --repeats 1 --learn-steps 2400
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import emrl  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE before torch is imported)

os.environ.setdefault("EMRL_PROGRESS", "0")

import torch  # noqa: E402

from emrl.lm.evaluate import evaluate  # noqa: E402
from emrl.lm.forward import PolicyModule, encode_prompt_completion, policy_forward  # noqa: E402
from emrl.lm.generation import generate  # noqa: E402
from emrl.lm.models import TinyModelConfig, load_model_and_tokenizer, num_parameters  # noqa: E402
from emrl.lm.tasks import load_task  # noqa: E402
from emrl.objectives import weighted_nll  # noqa: E402


def sft_round(model, opt, batch, steps: int) -> float:
    """Seconds per SFT step, averaged over ``steps`` steps."""
    policy = PolicyModule(model)  # the module the trainer wraps (no value head for SFT)
    policy.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        logp = policy_forward(policy, batch).logp
        loss, _ = weighted_nll(logp, batch["completion_mask"], reduction="token_mean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def gen_round(model, tok, prompts, samples: int, max_new_tokens: int) -> tuple[float, int]:
    """(seconds, generated tokens) of one ``generate`` call."""
    t0 = time.perf_counter()
    r = generate(model, tok, prompts, num_samples=samples, max_new_tokens=max_new_tokens)
    return time.perf_counter() - t0, r.num_tokens


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--batch-size", type=int, default=128, help="SFT examples per step")
    ap.add_argument("--steps", type=int, default=10, help="SFT steps per timed round")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per generate call")
    ap.add_argument("--samples", type=int, default=4, help="completions per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per thread count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also append the results as a JSON line here")
    ap.add_argument("--learn-steps", type=int, default=0,
                    help="also run a plain SFT learning curve of this many steps (0: no)")
    ap.add_argument("--hidden-size", type=int, default=None, help="tiny model width override")
    ap.add_argument("--num-layers", type=int, default=None, help="tiny model depth override")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    task = load_task(None, seed=args.seed, num_train=max(args.batch_size, 1000), num_eval=args.prompts)
    tiny_cfg = TinyModelConfig()
    if args.hidden_size:
        tiny_cfg.hidden_size, tiny_cfg.intermediate_size = args.hidden_size, 4 * args.hidden_size
    if args.num_layers:
        tiny_cfg.num_layers = args.num_layers
    model, tok = load_model_and_tokenizer("tiny", seed=args.seed, tiny_config=tiny_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = task.train[: args.batch_size]
    batch = encode_prompt_completion(tok, [r["prompt"] for r in rows], [r["completion"] for r in rows])
    n_tok = int(batch["attention_mask"].sum())
    n_comp = int(batch["completion_mask"].sum())
    prompts = [r["prompt"] for r in task.eval]
    print(f"emrl lm throughput | tiny model: {num_parameters(model):,} parameters, vocab {len(tok)}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} | usable CPUs "
          f"{len(os.sched_getaffinity(0))} | torch {torch.__version__} | load avg "
          f"{os.getloadavg()[0]:.2f} | OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"default task: {n_tok / len(rows):.1f} tokens per example "
          f"({n_comp / len(rows):.1f} completion tokens incl. EOS)")
    print(f"command: python {' '.join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))}")
    results = []
    for threads in [int(x) for x in args.threads.split(",") if x.strip()]:
        torch.set_num_threads(threads)
        sft_round(model, opt, batch, 1)  # warm-up
        gen_round(model, tok, prompts, args.samples, args.max_new_tokens)
        sft_s, gen_tps = [], []
        for _ in range(args.repeats):
            sft_s.append(sft_round(model, opt, batch, args.steps))
            dt, ntok = gen_round(model, tok, prompts, args.samples, args.max_new_tokens)
            gen_tps.append(ntok / dt)
        step = statistics.median(sft_s)
        res = {
            "threads": threads,
            "sft_step_ms": 1000 * step,
            "sft_tokens_per_s": n_tok / step,
            "sft_completion_tokens_per_s": n_comp / step,
            "generation_tokens_per_s": statistics.median(gen_tps),
        }
        results.append(res)
        print(f"threads={threads}: SFT step {res['sft_step_ms']:.1f} ms = "
              f"{res['sft_tokens_per_s']:,.0f} tokens/s ({res['sft_completion_tokens_per_s']:,.0f} "
              f"completion tokens/s) | generation {res['generation_tokens_per_s']:,.0f} tokens/s "
              f"({args.prompts}x{args.samples} samples)")
    curve = learning_curve(args, tiny_cfg) if args.learn_steps > 0 else []
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps({"args": vars(args), "load_avg": os.getloadavg()[0],
                                "results": results, "curve": curve}) + "\n")
    return 0


def learning_curve(args, tiny_cfg) -> list[dict]:
    """Plain SFT of a fresh tiny model on the default task; held-out accuracy 6 times."""
    import math
    import random

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    task = load_task(None, seed=args.seed)
    model, tok = load_model_and_tokenizer("tiny", seed=args.seed, tiny_config=tiny_cfg)
    steps = args.learn_steps
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.0)

    def lr_factor(s: int) -> float:
        return min(1.0, (s + 1) / 20) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    rng = random.Random(args.seed)
    print(f"SFT learning curve: {num_parameters(model):,} parameters, {len(task.train)} train / "
          f"{len(task.eval)} held-out questions, batch 64, {steps} steps, 1 thread")
    t0, curve = time.perf_counter(), []
    for step in range(1, steps + 1):
        rows = rng.sample(task.train, 64)
        b = encode_prompt_completion(tok, [r["prompt"] for r in rows], [r["completion"] for r in rows])
        model.train()
        logp = policy_forward(PolicyModule(model).train(), b).logp
        loss, _ = weighted_nll(logp, b["completion_mask"], reduction="token_mean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % max(1, steps // 6) == 0 or step == steps:
            train_s = time.perf_counter() - t0
            ev = evaluate(model, tok, task, num_prompts=200, num_samples=4)
            point = {"step": step, "train_s": train_s, "loss": float(loss.detach()),
                     **{k: ev[k] for k in ("accuracy", "sampled_accuracy", "pass@4")}}
            curve.append(point)
            print(f"  step {step:5d}  {train_s:6.0f} s  loss {point['loss']:.3f}  greedy acc "
                  f"{ev['accuracy']:.3f}  sampled acc {ev['sampled_accuracy']:.3f}  pass@4 "
                  f"{ev['pass@4']:.3f}", flush=True)
            t0 += time.perf_counter() - t0 - train_s  # exclude evaluation time
    return curve


if __name__ == "__main__":
    sys.exit(main())
