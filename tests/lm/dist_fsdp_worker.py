"""Worker of ``test_trainer_fsdp.py``: the trainer with an FSDP2-sharded policy on CPU.

accelerate turns FSDP on only for GPU process groups, so on CPU processes (gloo) this
worker's accelerator applies torch's own FSDP2 (``fully_shard`` on every decoder layer,
then on the whole policy), as accelerate's FSDP2 plugin does with
``configs/accelerate/fsdp2.yaml`` on GPUs, and hands the optimiser the sharded
parameters. Everything else is the trainer's own code.

Usage: ``python dist_fsdp_worker.py TASK.jsonl OUT.json RUN_DIR [MAX_STEPS] [--resume]`` (MAX_STEPS 0:
the E-step only).
Rank 0 writes the E-step's global weights and metrics on a fixed batch (like
``dist_estep_worker.py``), whether the policy was sharded, and the run's metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dist_estep_worker import CASES, PROMPTS, K, fixed_batch_estep  # noqa: E402
from trainer_helpers import digit_fraction, rl_config, small_model  # noqa: E402

from emrl.lm.sharding import is_sharded  # noqa: E402
from emrl.lm.tasks import load_task  # noqa: E402
from emrl.lm.trainer import LMTrainer  # noqa: E402


class FSDP2Accelerator(Accelerator):
    def prepare(self, model, optimizer):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if self.num_processes == 1:
            return super().prepare(model, optimizer)
        mesh = init_device_mesh("cpu", (self.num_processes,))
        names = {id(p): n for n, p in model.named_parameters()}
        layers = set(getattr(model.lm, "_no_split_modules", None) or [])
        for m in model.modules():
            if type(m).__name__ in layers:
                fully_shard(m, mesh=mesh)
        fully_shard(model, mesh=mesh)
        new = dict(model.named_parameters())
        for g in optimizer.param_groups:
            g["params"] = [new[names[id(p)]] for p in g["params"]]
        return model, optimizer


def main() -> None:
    task_path, out_path, run_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    max_steps = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    resume = "--resume" in sys.argv
    task = load_task(task_path, seed=0, num_eval=8, reward_funcs=[digit_fraction])
    results = {}
    tr = None
    for name in ("vmpo", "awr", "dar"):
        model, tok = small_model(0)
        tr = LMTrainer(rl_config(batch_size=PROMPTS, num_samples=K, **CASES[name]), None, model=model,
                       tokenizer=tok, task=task, accelerator=FSDP2Accelerator(cpu=True))
        results[name] = fixed_batch_estep(tr, task)
    if max_steps == 0:  # the E-step only
        Path(out_path).write_text(json.dumps(results))
        return
    model, tok = small_model(0)
    cfg = rl_config(algo="vmpo", batch_size=PROMPTS, num_samples=K, max_steps=max_steps, save_every=1,
                    keep_checkpoints=0, eval_num_prompts=4)
    tr = LMTrainer(cfg, run_dir, model=model, tokenizer=tok, task=task, resume=resume,
                   accelerator=FSDP2Accelerator(cpu=True))
    sharded = is_sharded(tr.policy)
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in tr.policy.parameters())
    full = sum(p.numel() for p in tr.policy.parameters())
    last = tr.train()
    results["train"] = {"step": last["step"], "world": tr.world, "sharded": sharded,
                        "local_fraction": local / full, "eval/accuracy": last.get("eval/accuracy")}
    if tr.accelerator.is_main_process:
        Path(out_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
