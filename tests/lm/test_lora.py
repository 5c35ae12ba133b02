"""Issue 14 part 3: LoRA through peft: only adapters train, π_ref is the base with the
adapters disabled (no copy), checkpoints and final/ hold the adapters, resume reproduces
the uninterrupted run, --lora-merge writes a plain model, a wrong target is explained."""

from __future__ import annotations

import shutil

import pytest
import torch
from trainer_helpers import rl_config, small_model, write_task

pytest.importorskip("peft")

from emrl.checkpoint import load_checkpoint  # noqa: E402
from emrl.errors import ConfigError  # noqa: E402
from emrl.lm.lora import AdaptersDisabled  # noqa: E402
from emrl.lm.models import load_model_and_tokenizer  # noqa: E402
from emrl.lm.trainer import LMTrainer  # noqa: E402
from emrl.metrics import read_metrics  # noqa: E402

REWARD = "trainer_helpers:digit_fraction"
TIMING = ("wall_time", "time/", "throughput/")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    model, tok = small_model()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _cfg(base_dir, tmp_path, **kw):
    base = dict(algo="vmpo", model=str(base_dir), task=str(write_task(tmp_path)), num_eval=8,
                reward_funcs=[REWARD], lora_r=4, lora_alpha=8.0, learning_rate=1e-2, max_steps=3)
    base.update(kw)
    return rl_config(**base)


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_vmpo_trains_adapters_only_and_final_holds_them(base_dir, tmp_path):
    tr = LMTrainer(_cfg(base_dir, tmp_path), tmp_path / "run")
    trainable = [n for n, p in tr.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in tr.lm.named_parameters()}
    tr.train()
    after = dict(tr.lm.named_parameters())
    moved = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert moved and all("lora_" in n for n in moved)  # the base weights never change
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    assert not (final / "config.json").exists()
    ck, _ = load_checkpoint(tmp_path / "run" / "checkpoint-3")
    assert ck["policy"] and all("lora_" in k for k in ck["policy"])  # adapters, not the model
    # emrl loads final/ as base + adapters merged: the trained policy's outputs
    merged, tok = load_model_and_tokenizer(str(final))
    ids = tok(["p3>", "p12>"], padding=True, return_tensors="pt")["input_ids"]
    assert torch.allclose(_logits(merged, ids), _logits(tr.lm, ids), atol=1e-5)
    base, _ = load_model_and_tokenizer(str(base_dir))
    assert not torch.allclose(_logits(base, ids), _logits(merged, ids), atol=1e-4)


def test_reference_is_the_base_with_adapters_disabled(base_dir, tmp_path):
    tr = LMTrainer(_cfg(base_dir, tmp_path, algo="dar", max_steps=2), None)
    ref = tr.algo.ref
    assert isinstance(ref, AdaptersDisabled) and list(ref.parameters()) == []  # no second copy
    tr.train()
    base, tok = load_model_and_tokenizer(str(base_dir))
    ids = tok(["p3>", "p12>"], padding=True, return_tensors="pt")["input_ids"]
    tr.lm.train()
    with torch.no_grad():
        ref_logits = ref(input_ids=ids).logits
    assert tr.lm.training  # the policy's mode is left as it was
    assert torch.allclose(ref_logits, _logits(base, ids), atol=1e-5)
    assert not torch.allclose(ref_logits, _logits(tr.lm, ids), atol=1e-4)


def test_lora_resume_reproduces_uninterrupted_run(base_dir, tmp_path):
    cfg = _cfg(base_dir, tmp_path, max_steps=4, save_every=2, keep_checkpoints=0)
    LMTrainer(cfg, tmp_path / "full").train()
    full, cut = tmp_path / "full", tmp_path / "cut"
    shutil.copytree(full, cut)
    for d in ("checkpoint-4", "final"):
        shutil.rmtree(cut / d)
    (cut / "eval.json").unlink()
    (cut / "metrics.jsonl").write_text("\n".join((cut / "metrics.jsonl").read_text().splitlines()[:3]) + "\n")  # steps 0-2
    LMTrainer(cfg, cut, resume=True).train()
    strip = lambda recs: [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in recs]  # noqa: E731
    assert strip(read_metrics(full / "metrics.jsonl")) == strip(read_metrics(cut / "metrics.jsonl"))
    sa, _ = load_checkpoint(full / "checkpoint-4")
    sb, _ = load_checkpoint(cut / "checkpoint-4")
    assert sa["policy"].keys() == sb["policy"].keys()
    for k, v in sa["policy"].items():
        assert torch.equal(v, sb["policy"][k]), k


def test_lora_merge_writes_a_plain_transformers_model(base_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    tr = LMTrainer(_cfg(base_dir, tmp_path, max_steps=1, lora_merge=True), tmp_path / "run")
    tr.train()
    final = tmp_path / "run" / "final"
    assert (final / "config.json").is_file() and not (final / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(final)
    ids = torch.tensor([[1, 20, 21, 22]])
    assert torch.allclose(_logits(plain, ids), _logits(tr.lm, ids), atol=1e-5)


def test_unknown_target_module_lists_the_linear_modules(base_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"q_proj.*linear modules are: .*query_key_value"):
        LMTrainer(_cfg(base_dir, tmp_path, lora_target_modules=["q_proj"]), None)
    tr = LMTrainer(_cfg(base_dir, tmp_path, lora_target_modules=["query_key_value"], max_steps=1), None)
    names = [n for n, p in tr.policy.named_parameters() if p.requires_grad]
    assert names and all("query_key_value" in n for n in names)
