"""LoRA adapters through ``peft`` (optional extra ``emrl[lora]``).

``--lora-r R`` (> 0) wraps the policy in LoRA adapters of rank ``R`` (scale
``lora_alpha / R``) on ``--lora-target-modules`` (module-name suffixes such as
``q_proj,v_proj``; empty: every linear layer but the output layer, peft's
``"all-linear"``). Only the adapters (and a value head) are trained. Then:

* the reference policy π_ref (DAR, KL-to-reference penalties, PPO's KL reward) is the
  base model **with the adapters disabled** — the same weights, no second copy
  (:class:`AdaptersDisabled`);
* checkpoints hold the trainable parameters only (adapters, value head) besides the
  optimiser; ``--resume`` rebuilds the base from ``--model`` and loads them;
* ``final/`` holds the adapters (``adapter_config.json``, ``adapter_model.safetensors``)
  with the tokenizer and task info, and the base model's absolute path; emrl loads such a
  directory as base + adapters merged. ``--lora-merge`` writes the merged model instead
  (a plain transformers directory).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from torch import nn

from emrl.errors import ConfigError

ADAPTER_CONFIG = "adapter_config.json"


def _peft():
    try:
        import peft
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ConfigError("--lora-r needs the 'peft' library: pip install 'emrl[lora]'") from e
    return peft


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct name suffixes of the model's linear layers (``nn.Linear``, GPT-2's Conv1D)."""
    names = []
    for full, m in model.named_modules():
        if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D":
            leaf = full.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return names


def is_lora(model: nn.Module) -> bool:
    try:
        import peft
    except ImportError:
        return False
    return isinstance(model, peft.PeftModel)


def apply_lora(model: nn.Module, cfg: Any) -> nn.Module:
    """``model`` wrapped in LoRA adapters as configured (see the module docstring)."""
    peft = _peft()
    targets = list(cfg.lora_target_modules or [])
    linear = linear_module_names(model)
    missing = [t for t in targets if t not in linear]
    if missing:
        raise ConfigError(
            f"--lora-target-modules {','.join(missing)}: no such linear module in "
            f"{type(model).__name__}; its linear modules are: {', '.join(linear)}")
    conv1d = any(type(m).__name__ == "Conv1D" for m in model.modules())
    lcfg = peft.LoraConfig(
        r=int(cfg.lora_r), lora_alpha=float(cfg.lora_alpha), lora_dropout=float(cfg.lora_dropout),
        target_modules=targets or "all-linear", bias="none", task_type="CAUSAL_LM",
        fan_in_fan_out=conv1d)
    return peft.get_peft_model(model, lcfg)


class AdaptersDisabled(nn.Module):
    """π_ref of a LoRA policy: the policy's own module called with its adapters disabled,
    in eval mode. Holds no parameters (the policy is not a submodule), so it costs no
    memory and ``.eval()`` on it leaves the policy's mode alone."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_policy", policy)

    def forward(self, *args: Any, **kwargs: Any):
        p = self._policy
        was = p.training
        p.eval()
        try:
            with p.disable_adapter():
                return p(*args, **kwargs)
        finally:
            p.train(was)


def policy_state_dict(module: nn.Module) -> dict[str, Any]:
    """What a checkpoint stores of the policy: everything, or only the trainable
    parameters (adapters, value head) when the model has LoRA adapters."""
    sd = module.state_dict()
    if not _has_lora(module):
        return sd
    keep = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: v for k, v in sd.items() if k in keep}


def load_policy_state_dict(module: nn.Module, state: dict[str, Any]) -> None:
    if not _has_lora(module):
        module.load_state_dict(state)
        return
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(state))
    extra = sorted(set(state) - set(module.state_dict()))
    if missing or extra:
        raise RuntimeError(f"LoRA checkpoint does not fit: missing {missing[:5]}, unexpected {extra[:5]}")
    module.load_state_dict(state, strict=False)


def _has_lora(module: nn.Module) -> bool:
    return any(is_lora(m) for m in module.modules())


def save_pretrained(model: nn.Module, path: Path, *, merge: bool, base: str) -> None:
    """``final/``: the adapters (recording the base model's absolute path) or, with
    ``merge``, the merged model as a plain transformers directory."""
    if merge:
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(path)
        return
    model.save_pretrained(path)
    cfg_path = Path(path) / ADAPTER_CONFIG
    info = json.loads(cfg_path.read_text())
    base_path = Path(base).expanduser()
    info["base_model_name_or_path"] = str(base_path.resolve()) if base_path.is_dir() else str(base)
    cfg_path.write_text(json.dumps(info, indent=2))


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


