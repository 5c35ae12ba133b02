"""The LM trainer with a sharded policy (FSDP2 through ``accelerate launch --config_file
configs/accelerate/fsdp2.yaml``): what changes when each process holds a shard of every
weight.

* Generation and evaluation call the bare causal LM outside the wrapped forward, so
  :func:`full_params` gathers every FSDP2 module's parameters for their duration (and
  keeps them gathered across the many forward calls of ``generate``, so ranks that
  sample different lengths, or the main process evaluating alone, run no collective).
* Checkpoints and ``final/`` need the full weights and optimiser state: gathered with
  ``torch.distributed.checkpoint.state_dict`` on every process, written by the main one;
  ``--resume`` loads the full state on every process and re-shards it.
* Without sharding every helper is the plain single-copy operation.

DeepSpeed ZeRO (``configs/accelerate/deepspeed_zero{2,3}.yaml``) goes through accelerate's
own engine; its ZeRO-3 parameter gathering for generation is not implemented here (see
the README's status table).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def _fsdp_modules(module: nn.Module) -> list[nn.Module]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return []
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def is_sharded(module: nn.Module) -> bool:
    return bool(_fsdp_modules(module))


@contextlib.contextmanager
def full_params(module: nn.Module) -> Iterator[None]:
    """Every FSDP2 module of ``module`` unsharded (a collective: call on all processes)."""
    mods = _fsdp_modules(module)
    if mods:
        # FSDP2 sets its module tree up at the root's first forward; generation calls inner
        # modules first, so set it up from the root here
        state = mods[0]._get_fsdp_state()
        state._lazy_init()
    for m in mods:
        m.unshard()
        m.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for m in mods:
            m.set_reshard_after_forward(True)
            m.reshard()


def all_finite(module: nn.Module) -> bool:
    """Every parameter finite (each process checks its shard; agreed over processes)."""
    ok = all(bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all())
             for p in module.parameters())
    if is_sharded(module):
        import torch.distributed as dist

        flag = torch.tensor([0 if ok else 1], dtype=torch.int32,
                            device=next(module.parameters()).to_local().device)
        dist.all_reduce(flag)
        ok = int(flag) == 0
    return ok


def _options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def model_and_optimizer_state(module: nn.Module, optimizer: Any, plain_model_state) -> tuple[dict, dict]:
    """Full ``(model state, optimiser state)``; sharded: gathered (collective), complete on
    the main process only."""
    if not is_sharded(module):
        return plain_model_state(module), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_state_dict

    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    return get_state_dict(module, opt, options=_options(cpu_offload=True))


def load_model_and_optimizer_state(module: nn.Module, optimizer: Any, model_state: dict, optim_state: dict,
                                   plain_load) -> None:
    """Inverse of :func:`model_and_optimizer_state` (every process passes the full state)."""
    if not is_sharded(module):
        plain_load(module, model_state)
        optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import set_state_dict

    opt = getattr(optimizer, "optimizer", optimizer)
    set_state_dict(module, opt, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=_options())


def full_lm_state(policy: nn.Module, prefix: str = "lm.") -> dict | None:
    """The causal LM's full state dict for ``save_pretrained`` (collective) when sharded,
    else ``None`` (the model saves its own)."""
    if not is_sharded(policy):
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(policy, options=_options(cpu_offload=True))
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
