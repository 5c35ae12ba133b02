"""Worker of ``test_trainer_distributed.py``: the E-step of every algorithm on one fixed
global batch, run either as one process or under ``accelerate launch`` with several CPU
processes (gloo), each holding its share of the prompts.

Usage: ``python dist_estep_worker.py TASK.jsonl OUT.json [RUN_DIR]``; rank 0 writes, per
algorithm, the global weights / advantages and the E-step metrics to ``OUT.json``. With
``RUN_DIR`` it also runs two full V-MPO updates there (DDP M-step, checkpoint, final/).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer_helpers import digit_fraction, rl_config, small_model  # noqa: E402

from emrl.lm.tasks import load_task  # noqa: E402
from emrl.lm.trainer import LMTrainer  # noqa: E402

PROMPTS, K = 8, 4
REWARDS = [float((i * 37) % 11) / 10 for i in range(PROMPTS * K)]
CASES = {
    "vmpo": dict(algo="vmpo", top_fraction=0.3, normalize_advantages=True),
    "vmpo-loo": dict(algo="vmpo", baseline="loo", top_fraction=0.5),
    "vmpo-batch": dict(algo="vmpo", baseline="batch_mean", top_fraction=0.25),
    "awr": dict(algo="awr", normalize_advantages=True, awr_temperature=0.5),
    "dar": dict(algo="dar", normalize_advantages=True),
    "ppo-seq": dict(algo="ppo", ppo_level="sequence", normalize_advantages=True),
}


def fixed_batch_estep(tr: LMTrainer, task) -> dict:
    """This process's share of the fixed global batch through the plug-in's E-step; the
    gathered global weights / advantages and the metrics."""
    per = PROMPTS // tr.world
    rows = task.train[tr.rank * per:(tr.rank + 1) * per]
    n = per * K
    texts = [f"{j % 9}{'x' * (j % 3)}" for j in range(tr.rank * n, (tr.rank + 1) * n)]
    b = tr.encode([r["prompt"] for r in rows for _ in range(K)], texts, [r for r in rows for _ in range(K)])
    b["rewards"] = torch.tensor(REWARDS[tr.rank * n:(tr.rank + 1) * n])
    tr.algo.finish_batch(tr.ctx, b)
    metrics = tr.algo.estep(tr.ctx, b)
    key = "advantages" if "advantages" in b else "weights"
    glob = tr.gather(b[key].contiguous())
    return {"values": glob.tolist(), "metrics": metrics, "world": tr.world}


def main() -> None:
    task_path, out_path = sys.argv[1], sys.argv[2]
    task = load_task(task_path, seed=0, num_eval=8, reward_funcs=[digit_fraction])
    results = {}
    for name, kw in CASES.items():
        model, tok = small_model(0)
        tr = LMTrainer(rl_config(batch_size=PROMPTS, num_samples=K, **kw), None, model=model,
                       tokenizer=tok, task=task)
        results[name] = fixed_batch_estep(tr, task)
    if len(sys.argv) > 3:
        model, tok = small_model(0)
        cfg = rl_config(algo="vmpo", batch_size=PROMPTS, num_samples=K, max_steps=2, save_every=1,
                        eval_num_prompts=4)
        tr = LMTrainer(cfg, sys.argv[3], model=model, tokenizer=tok, task=task)
        last = tr.train()
        results["train"] = {"step": last["step"], "world": tr.world}
    if tr.accelerator.is_main_process:
        Path(out_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
