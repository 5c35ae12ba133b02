"""Issue 14 part 5: the accelerate configs under configs/accelerate/ load as accelerate
reads them (``accelerate launch --config_file``) and select the intended engine."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


@pytest.mark.parametrize("name, kind, detail", [
    ("ddp", "MULTI_GPU", None),
    ("fsdp2", "FSDP", ("fsdp_config", "fsdp_version", 2)),
    ("deepspeed_zero2", "DEEPSPEED", ("deepspeed_config", "zero_stage", 2)),
    ("deepspeed_zero3", "DEEPSPEED", ("deepspeed_config", "zero_stage", 3)),
])
def test_accelerate_config_loads_and_selects_the_engine(name, kind, detail):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert cfg.distributed_type.name == kind
    assert cfg.mixed_precision == "bf16" and cfg.num_machines == 1
    if detail is not None:
        section, key, value = detail
        assert getattr(cfg, section)[key] == value
    if name == "fsdp2":
        assert cfg.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
