"""Issue 14 part 1: every tensor of an update lives on the model's device.

A full update (collect -> E-step -> M-step -> evaluation) of every algorithm runs under
:class:`DeviceGuard`, which puts every tensor that emrl creates without naming a device
on a virtual host device and fails on every op that mixes host and device tensors the
way CUDA would refuse to (see ``device_guard.py``). So CI on a CPU catches the
``torch.zeros(n)`` that would stop the first M-step on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from device_guard import DeviceGuard
from trainer_helpers import make_trainer, rl_config, sft_config, small_model

HERE = [__file__]


# -- the guard itself -----------------------------------------------------------------
def test_guard_flags_a_host_tensor_next_to_a_device_tensor():
    dev = torch.randn(4)  # created outside the guard: "on the device"
    with DeviceGuard(HERE) as g:
        host = torch.zeros(4)  # no device: on the host
        _ = dev + host
    assert len(g.violations) == 1 and "test_device_placement.py" in g.violations[0]
    with pytest.raises(AssertionError, match="1 device-placement violation"):
        g.check()


def test_guard_allows_what_cuda_allows():
    dev = torch.randn(4, 3)
    with DeviceGuard(HERE) as g:
        moved = torch.tensor([1.0, 2.0, 3.0]).to(dev.device)  # created, then moved
        _ = dev * moved
        _ = dev[torch.arange(2)]  # host indices into a device tensor
        dev[torch.tensor([0])] = 1.0
        _ = dev * torch.tensor(2.0)  # 0-dim host tensors act as scalars
        _ = torch.zeros(3, device=dev.device) + dev[0]
        host = torch.arange(5)
        _ = (host * 2)[host > 1].tolist()  # host-only arithmetic stays on the host
    g.check()


def test_guard_flags_cpu_results_and_host_propagation_and_real_mixes():
    dev = torch.randn(4)
    with DeviceGuard(HERE) as g:
        h = torch.arange(4) * 2  # host result of host inputs
        _ = torch.where(dev > 0, h, h)
        _ = dev.cpu() + dev  # .cpu() moves to the host
        with pytest.raises(RuntimeError):
            _ = dev + torch.zeros(4, device="meta")  # really different devices
    assert len(g.violations) == 3, g.violations
    assert any("different devices" in v for v in g.violations)


# -- a full update of every algorithm ---------------------------------------------------
CASES = {
    "sft-delta": ("sft", dict(target="delta")),
    "sft-label_smoothing": ("sft", dict(target="label_smoothing")),
    "sft-nbest": ("sft", dict(target="nbest", nbest_n=2)),
    "sft-distill": ("sft", dict(target="distill")),
    "vmpo": ("rl", dict(algo="vmpo")),
    "vmpo-value-token-klref": ("rl", dict(algo="vmpo", baseline="value", weight_level="token",
                                          kl_ref_coef=0.1, minibatch_size=4, kl_estimator="k3")),
    "awr": ("rl", dict(algo="awr", normalize_advantages=True)),
    "dar": ("rl", dict(algo="dar")),
    "ppo-token": ("rl", dict(algo="ppo", ent_coef=0.01, minibatch_size=8)),
    "ppo-sequence": ("rl", dict(algo="ppo", ppo_level="sequence")),
    # the scale options of issue 14: chunked log-probs / exact KL, LoRA (π_ref = adapters off)
    "vmpo-chunked": ("rl", dict(algo="vmpo", logp_chunk_size=3)),
    "dar-lora-chunked": ("rl", dict(algo="dar", lora_r=2, logp_chunk_size=3, kl_ref_coef=0.1)),
    "sft-chunked": ("sft", dict(target="delta", logp_chunk_size=3)),
}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    model, tok = small_model(seed=1)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("case", list(CASES))
def test_full_update_keeps_tensors_on_the_model_device(tmp_path, case, teacher_dir):
    kind, kw = CASES[case]
    common = dict(max_steps=2, batch_size=4, eval_num_prompts=4, eval_samples=2)
    if kind == "sft":
        if kw["target"] == "distill":
            kw = dict(kw, teacher=teacher_dir)
        cfg = sft_config(**common, **kw)
    else:
        cfg = rl_config(**common, num_samples=2, **kw)
    with DeviceGuard() as g:
        tr = make_trainer(cfg, tmp_path, out=None)
        rec = tr.train()
    assert rec["step"] == 2
    assert g.host_creations > 0  # the guard saw emrl's own tensor creations
    g.check()
