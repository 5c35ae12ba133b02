"""Checkpoints, ``final/`` and resume of an LM run, through :mod:`emrl.checkpoint`.

A checkpoint (``checkpoint-<step>/``, atomic) holds the policy and its optimiser (full
state, gathered from shards), the scheduler, the dual holder (η, α), the plug-in's own state, every
process's RNG states, the data order, the counters, the config and the last record.
``final/`` is ``save_pretrained`` + tokenizer + task info, loadable by plain
transformers. Resume checks that the checkpoint belongs to this run (kind, algorithm,
model, task, seed) and that the config changed only in :data:`RESUMABLE_CHANGES` — the
shared chores of :mod:`emrl.runloop`, with the control loop's strictness.

The functions take the trainer (:class:`emrl.lm.trainer.LMTrainer`) as ``tr`` and read
and set its components; nothing here imports the trainer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from torch import nn

from emrl.checkpoint import (
    atomic_dir,
)
from emrl.config import to_dict
from emrl.errors import CheckpointError, EmrlError
from emrl.lm.lora import is_lora, load_policy_state_dict, policy_state_dict
from emrl.lm.lora import save_pretrained as lora_save
from emrl.lm.sharding import (
    all_finite,
    full_lm_state,
    load_model_and_optimizer_state,
    model_and_optimizer_state,
)
from emrl.runloop import check_resume, load_resume_checkpoint
from emrl.runloop import write_checkpoint as write_run_checkpoint
from emrl.seeding import get_rng_state, set_rng_state

#: config fields that may change between a run and its ``--resume`` (they do not change
#: what is trained, only how often things are logged or saved, and how evaluations, which
#: use their own random stream, are run). ``max_steps``
#: may also change, but only with ``lr_scheduler=constant``: the linear and cosine
#: schedules decay over ``max_steps``, so a new value would reshape the schedule.
RESUMABLE_CHANGES = ("save_every", "keep_checkpoints", "log_every", "num_threads",
                     "tensorboard", "eval_every", "eval_num_prompts", "eval_samples",
                     "eval_temperature", "eval_batch_size", "max_minutes", "eval_at_start", "report_to")


def unwrap(acc: Any, module: nn.Module) -> nn.Module:
    return acc.unwrap_model(module) if acc is not None else module


def meta(tr: Any) -> dict[str, Any]:
    return {"kind": "emrl-lm", "algo": tr.algo_name, "step": tr.step, "model": tr.cfg.model,
            "task": tr.task.name, "seed": tr.cfg.seed, "world_size": tr.world}


def state_dict(tr: Any) -> dict[str, Any]:
    policy, optim = model_and_optimizer_state(unwrap(tr.accelerator, tr.policy), tr.optimizer, policy_state_dict)
    ms = tr.mstep
    return {
        "policy": policy,
        "optimizer": optim,
        "scheduler": tr.scheduler.state_dict(),
        "duals": tr.duals.state_dict() if tr.duals is not None else None,
        "algo": tr.algo.state_dict(),
        "rng": get_rng_state(),
        "data": tr.rollouts.state_dict(),
        "counters": {"step": tr.step, "samples": tr.samples, "elapsed": tr.elapsed,
                     "train_time": tr.train_time, "lr_scale": ms.lr_scale,
                     "nonfinite_in_a_row": ms.nonfinite_in_a_row},
        "config": to_dict(tr.cfg),
        "last_record": dict(tr.last_record),
    }


def write_checkpoint(tr: Any) -> Path | None:
    """Write ``checkpoint-<step>`` atomically (main process); never non-finite weights."""
    if tr.rundir is None:
        return None
    if not all_finite(tr.policy):
        raise EmrlError(f"refusing to save non-finite weights at step {tr.step}")
    path = tr.rundir.path / f"checkpoint-{tr.step}"
    rng_ranks = tr.dist.rng_states()  # every process takes part (a collective)
    state = state_dict(tr)  # on every process: a sharded policy gathers its full state
    if tr.dist.is_main:  # written and pruned by the shared chore (emrl.runloop)
        write_run_checkpoint(tr.rundir, tr.step, {**state, "rng_ranks": rng_ranks}, meta=meta(tr),
                             keep=tr.cfg.keep_checkpoints)
    tr.dist.barrier()
    return path


def write_final(tr: Any) -> Path | None:
    """``final/``: ``save_pretrained`` model + tokenizer + task info, atomically."""
    if tr.rundir is None:
        return None
    from emrl.lm.tasks import save_task_info

    if not all_finite(tr.lm):
        raise EmrlError("refusing to save non-finite weights as final/")
    final = tr.rundir.path / "final"
    full = full_lm_state(unwrap(tr.accelerator, tr.policy))  # None unless sharded
    if tr.dist.is_main:
        with atomic_dir(final) as tmp:
            if is_lora(tr.lm):
                lora_save(tr.lm, tmp, merge=tr.cfg.lora_merge, base=tr.cfg.model)
            else:
                tr.lm.save_pretrained(tmp, **({} if full is None else {"state_dict": full}))
            tr.tokenizer.save_pretrained(tmp)
            save_task_info(tmp, tr.task)
        if tr.last_eval is not None:
            tr.rundir.write_eval({**tr.last_eval, "model": str(final), "step": tr.step})
    tr.dist.barrier()
    return final


def load_latest(tr: Any) -> None:
    """Continue ``tr`` from the latest complete checkpoint of its run directory."""
    mine = meta(tr)
    ck, state, saved_meta = load_resume_checkpoint(
        tr.rundir, {k: mine[k] for k in ("kind", "algo", "model", "task", "seed")},
        trust_pickle=tr.trust_checkpoint)
    # a time budget is a horizon too: the schedule (and the annealed KL budget) runs over it
    free = [k for k in RESUMABLE_CHANGES if k != "max_minutes" or tr.cfg.lr_scheduler == "constant"]
    check_resume(tr.cfg, state.get("config", {}), free=free, where=f"the run in {tr.rundir.path}",
                 horizon="max_steps", horizon_ok=tr.cfg.lr_scheduler == "constant",
                 horizon_why=f"the learning-rate schedule (lr_scheduler={tr.cfg.lr_scheduler} decays over "
                             "max_steps)")
    ms = tr.mstep
    try:
        load_model_and_optimizer_state(unwrap(tr.accelerator, tr.policy), tr.optimizer,
                                       state["policy"], state["optimizer"], load_policy_state_dict)
        tr.scheduler.load_state_dict(state["scheduler"])
        if tr.duals is not None:
            tr.duals.load_state_dict(state["duals"])
        tr.algo.load_state_dict(state["algo"])
        tr.rollouts.load_state_dict(state["data"])
        c = state["counters"]
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ck} does not fit this model/run: {e}") from e
    tr.step, tr.samples = int(c["step"]), int(c["samples"])
    tr.elapsed, ms.nonfinite_in_a_row = float(c["elapsed"]), int(c["nonfinite_in_a_row"])
    tr.train_time = float(c.get("train_time", 0.0))
    ms.lr_scale = float(c.get("lr_scale", 1.0))
    if tr.step > tr.cfg.max_steps:
        raise CheckpointError(f"checkpoint {ck} is at step {tr.step}, beyond max_steps={tr.cfg.max_steps}")
    _restore_rng(tr, state, saved_meta, ck)
    rec = state.get("last_record")
    tr.resumed_record = dict(rec) if isinstance(rec, dict) else {}


def _restore_rng(tr: Any, state: dict[str, Any], saved_meta: dict[str, Any], ck: Path) -> None:
    ranks = state.get("rng_ranks")
    saved_world = int(saved_meta.get("world_size", 1) or 1)
    try:
        if isinstance(ranks, list) and len(ranks) == tr.world:
            set_rng_state(ranks[tr.rank])
        elif tr.world == 1 and saved_world == 1:
            set_rng_state(state["rng"])
        elif tr.dist.is_main:  # another number of processes: each rank keeps its fresh seed
            print(f"note: checkpoint {ck} was written by {saved_world} process(es), this run has "
                  f"{tr.world}: random streams restart from the seed, so the resumed run is not "
                  "bit-identical to an uninterrupted one", file=sys.stderr)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {ck}: its RNG state is malformed ({e})") from e


__all__ = ["RESUMABLE_CHANGES", "load_latest", "meta", "state_dict", "write_checkpoint", "write_final"]
