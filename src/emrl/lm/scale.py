"""Real models at scale: precision, activation checkpointing, a memory check.

* ``--mixed-precision no|bf16|fp16``: accelerate's autocast over the policy's forward
  passes (weights and optimiser state stay float32; fp16 adds accelerate's loss
  scaling). fp16 needs a GPU; bf16 also runs on CPUs.
* ``--gradient-checkpointing``: transformers' activation checkpointing of the decoder
  layers (non-reentrant), recomputed in the backward pass.
* :func:`check_memory`: before a model is moved to its device, the memory one update
  needs at least (weights, and for trainable parameters their gradients and two AdamW
  moments) is compared with what the device has free; too little is a clear error with
  the options (LoRA, bf16 weights, checkpointing, sharding) instead of an out-of-memory
  crash in the middle of the first update.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from emrl.errors import ConfigError, EmrlError

GiB = 1024**3


def make_accelerator(cfg: Any):
    from accelerate import Accelerator

    mp = getattr(cfg, "mixed_precision", "no") or "no"
    cuda = torch.cuda.is_available()
    if mp == "fp16" and not cuda:
        raise ConfigError("--mixed-precision fp16 needs a CUDA GPU (its loss scaling is GPU-only); "
                          "use --mixed-precision bf16 on a CPU, or no")
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mp:
        # accelerate keeps one process-wide state; a run in the same process (tests, notebooks)
        # with another precision replaces it (the distributed PartialState is kept)
        AcceleratorState._reset_state()
    return Accelerator(cpu=not cuda, mixed_precision=mp)


def update_bytes(model: nn.Module, *, adam: bool = True) -> int:
    """Bytes one update needs at least: every parameter once, and for each trainable one
    its gradient and (AdamW) two moments in float32. Activations come on top."""
    total, seen = 0, set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
        if p.requires_grad:
            total += p.numel() * (4 + (8 if adam else 0))
    return total


def available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` (CUDA: free device memory; CPU: MemAvailable), if known."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_memory(model: nn.Module, device: torch.device, *, already_resident: bool,
                 available: int | None = None) -> None:
    """Raise :class:`EmrlError` when one update cannot fit ``device`` (see module doc).

    ``already_resident``: the weights are already in this device's memory (a CPU run), so
    only gradients and optimiser state still have to fit.
    """
    need = update_bytes(model)
    if already_resident:
        need -= sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    avail = available if available is not None else available_bytes(device)
    if avail is None or need <= avail:
        return
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    raise EmrlError(
        f"the model ({n / 1e6:.1f}M parameters) needs at least {need / GiB:.2f} GiB on {device} for "
        f"its weights, gradients and AdamW state before any activation, but only {avail / GiB:.2f} GiB "
        "is free. Options: LoRA adapters (--lora-r 16) train a small fraction of the parameters; "
        "--mixed-precision bf16 and --gradient-checkpointing cut activation memory; shard the model "
        "over several GPUs with accelerate launch --config_file configs/accelerate/fsdp2.yaml (or "
        "deepspeed_zero3.yaml)")


def configure_model(model: nn.Module, cfg: Any, algo_name: str, device: torch.device) -> None:
    """Memory check, activation checkpointing and chunking compatibility of ``model``."""
    from emrl.lm.chunked import check_config
    from emrl.lm.vllm_backend import check_backend

    check_config(cfg, algo_name)
    check_backend(cfg)
    check_memory(model, device, already_resident=device.type == "cpu")
    if getattr(cfg, "gradient_checkpointing", False):
        if not getattr(model, "supports_gradient_checkpointing", True):
            raise ConfigError(f"--gradient-checkpointing: {type(model).__name__} does not support it")
        kw = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        if hasattr(model, "config"):
            model.config.use_cache = False
