"""Peak memory and tokens/s of one LM update against vocabulary size and completion length.

One V-MPO update with the exact trust-region KL (the most vocabulary-hungry path: π_old's
logits are kept from the rollout to the M-step) after the rollout: π_old's teacher-forced
pass, the E-step, and the M-step (one epoch, one minibatch: forward, loss, backward,
AdamW step), on a small Llama-style model (hidden 64, 2 layers) whose vocabulary size V is
varied, for ``N`` sequences of an 8-token prompt and ``L`` completion tokens (random ids;
sampling is left out: with ``logprobs=False`` transformers' ``generate`` keeps one step's
``[N, V]`` scores, not ``N × L × V``). Plain (``--logp-chunk-size`` unset: full logits)
against chunked (``--logp-chunk-size C``).

Memory is measured as the growth of the process's resident set during the update: each
configuration runs in a fresh process, which does one warm-up update (AdamW moments and
gradients exist afterwards), then resets the kernel's peak-RSS counter (``echo 5 >
/proc/self/clear_refs``), runs the measured update and reads ``VmHWM − VmRSS(before)``
from ``/proc/self/status``. That is what the CPU allocator really took from the OS at the
update's peak (tracemalloc would not see torch's allocations). Linux only.

    nice -n 10 python benchmarks/lm_memory.py [--n 2] [--chunk 256] [--threads 2] [--sweep shape|chunk]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def worker(V: int, L: int, n: int, chunk: int | None, threads: int) -> dict:
    import torch
    import transformers as tf

    from emrl.lm.algorithms import Batch
    from emrl.lm.models import build_tiny_tokenizer
    from emrl.lm.tasks import load_task
    from emrl.lm.train_config import RLConfig
    from emrl.lm.trainer import LMTrainer

    torch.set_num_threads(threads)
    tok = build_tiny_tokenizer()
    cfg = tf.LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=L + 16,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg)
    tmp = Path(f"/tmp/emrl_lm_memory_{V}_{L}.jsonl")
    tmp.write_text("".join(json.dumps({"prompt": f"p{i}>", "answer": "1"}) + "\n" for i in range(8)))
    task = load_task(str(tmp), num_eval=2, reward_funcs=[lambda prompts, completions, **_: [0.0] * len(completions)])
    rc = RLConfig(algo="vmpo", batch_size=1, num_samples=n, epochs=1, num_threads=threads,
                  trust_region=True, kl_estimator="exact", logp_chunk_size=chunk, eval_num_prompts=0,
                  max_new_tokens=L)
    tr = LMTrainer(rc, None, model=model, tokenizer=tok, task=task)
    g = torch.Generator().manual_seed(1)
    P = 8
    ids = torch.cat([torch.randint(3, 101, (n, P), generator=g), torch.randint(3, V, (n, L), generator=g)], 1)
    cm = torch.zeros(n, P + L, dtype=torch.bool)
    cm[:, P:] = True

    def batch():
        return Batch({"input_ids": ids.clone(), "attention_mask": torch.ones_like(ids), "completion_mask": cm.clone(),
                      "rewards": torch.arange(n, dtype=torch.float32)},
                     {"prompts": ["p>"] * n, "texts": ["x"] * n, "rows": [task.train[0]] * n})

    def update():
        b = tr.algo.finish_batch(tr.ctx, batch())
        tr.algo.estep(tr.ctx, b)
        return tr._mstep(b)

    update()  # warm-up: AdamW state, allocator pools
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    t0 = time.perf_counter()
    m = update()
    dt = time.perf_counter() - t0
    peak = _status("VmHWM") - before
    return {"V": V, "L": L, "N": n, "chunk": chunk, "peak_mib": peak / 2**20, "update_s": dt,
            "tokens_per_s": n * L / dt, "mstep_kl": m.get("mstep/kl"),
            "logits_mib": n * (P + L) * V * 4 / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2, help="sequences per update (N)")
    ap.add_argument("--chunk", type=int, default=256, help="--logp-chunk-size of the chunked runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweep", choices=["shape", "chunk"], default="shape",
                    help="shape: V and L sweeps, plain vs chunked; chunk: chunk sizes at V=32k, L=1024")
    ap.add_argument("--worker", nargs=3, metavar=("V", "L", "CHUNK"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        V, L, c = (int(a.worker[0]), int(a.worker[1]), int(a.worker[2]))
        print(json.dumps(worker(V, L, a.n, c or None, a.threads)))
        return
    # vocabulary sweep at L = 256, completion-length sweep at V = 32k; plain runs stop where
    # N x S x V float32 logits pass ~0.5 GiB per copy (they need several copies)
    if a.sweep == "chunk":  # memory against the chunk size at a fixed V and L
        grid = [(32_768, 1024, c) for c in (64, 256, 1024)] + [(32_768, 1024, 0)]
    else:
        grid = [(V, 256, c) for V in (8_192, 32_768, 65_536, 151_936) for c in (0, a.chunk)]
        grid += [(32_768, L, c) for L in (512, 1024, 2048) for c in (0, a.chunk) if not (c == 0 and L > 1024)]
        grid += [(151_936, 2048, a.chunk)]
    print(f"N={a.n} sequences, prompt 8 + L completion tokens, Llama hidden 64 x 2 layers, V-MPO + exact KL, "
          f"threads={a.threads}")
    print("| V | L | logits N×S×V (MiB, one copy) | chunk | peak update memory (MiB) | update s | tokens/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for V, L, c in grid:
        out = subprocess.run([sys.executable, __file__, "--n", str(a.n), "--threads", str(a.threads),
                              "--worker", str(V), str(L), str(c)], capture_output=True, text=True)
        if out.returncode:
            print(f"| {V} | {L} | | {c or 'plain'} | failed: {out.stderr.strip().splitlines()[-1]} | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {V} | {L} | {r['logits_mib']:.0f} | {c or 'plain'} | {r['peak_mib']:.0f} | "
              f"{r['update_s']:.2f} | {r['tokens_per_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
