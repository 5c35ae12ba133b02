"""Issue 14 part 6: the vLLM rollout plumbing (weight push, completions -> batch, π_old's
log-probs recomputed by the trainer) against a stand-in engine with vLLM's interface.

vLLM itself is not installed here (no CPU build of it in CI): the stand-in is a separate
transformers model with its own weights, as a colocated vLLM engine holds its own copy."""

from __future__ import annotations

import copy

import pytest
import torch
from trainer_helpers import make_trainer, rl_config

from emrl.errors import ConfigError
from emrl.lm.vllm_backend import policy_weights


class StandInEngine:
    """vLLM's two calls (``generate`` on token ids, ``load_weights``) on a private copy."""

    def __init__(self, model) -> None:
        self.model = copy.deepcopy(model).eval()
        self.loads = 0
        self.calls = []

    def load_weights(self, weights):
        sd = dict(weights)
        missing = set(self.model.state_dict()) - set(sd)
        assert not missing, f"weights missing: {sorted(missing)[:3]}"
        self.model.load_state_dict(sd)
        self.loads += 1

    def generate(self, prompt_ids, *, num_samples, max_new_tokens, temperature, top_p, eos_token_id):
        self.calls.append(dict(n=len(prompt_ids), k=num_samples, temperature=temperature, top_p=top_p))
        out = []
        for ids in prompt_ids:
            x = torch.tensor([list(ids)])
            with torch.no_grad():
                g = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=True,
                                        temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
                                        num_return_sequences=num_samples, eos_token_id=eos_token_id,
                                        pad_token_id=eos_token_id)
            out += [row[x.shape[1]:].tolist() for row in g]
        return out


def _engine_trainer(tmp_path, **kw):
    tr = make_trainer(rl_config(max_steps=3, **kw), tmp_path, out=None)
    tr.cfg.generation_backend = "vllm"
    tr.generation_engine = StandInEngine(tr.unwrapped)
    return tr


def test_weights_pushed_after_each_update_and_trainer_recomputes_logprobs(tmp_path):
    tr = _engine_trainer(tmp_path, algo="vmpo", learning_rate=1e-2)
    eng = tr.generation_engine
    pushed = []
    orig = eng.load_weights
    eng.load_weights = lambda w: (pushed.append({k: v.clone() for k, v in w}), orig(pushed[-1].items()))
    batches = []
    real_finish = tr.algo.finish_batch
    tr.algo.finish_batch = lambda t, b: batches.append(real_finish(t, b)) or batches[-1]
    tr.train()
    assert eng.loads == 3 and len(eng.calls) == 3  # one push before each update's sampling
    assert eng.calls[0]["k"] == tr.cfg.num_samples
    # the third push holds the policy after two updates: not the initial weights
    init = pushed[0]
    assert any(not torch.equal(init[k], pushed[2][k]) for k in init)
    # π_old's log-probs are the trainer's own teacher-forced pass, not the engine's
    b = batches[-1]
    with torch.no_grad():
        tr.lm.load_state_dict(pushed[2])
        out = tr.forward(b, train=False, grad=False)
    assert torch.allclose(b["old_logp"], out.logp, atol=1e-6)
    assert (b["completion_mask"].sum(1) >= 1).all()


def test_engine_rollout_scores_and_trains(tmp_path):
    tr = _engine_trainer(tmp_path, algo="ppo", ppo_level="sequence")
    rec = tr.train()
    assert rec["step"] == 3 and 0.0 <= rec["reward/mean"] <= 1.0


def test_lora_weights_are_pushed_merged_under_base_names(tmp_path):
    pytest.importorskip("peft")
    tr = make_trainer(rl_config(max_steps=1, lora_r=2, learning_rate=5e-2), tmp_path, out=None)
    base_names = set(tr.unwrapped.get_base_model().state_dict())
    tr.train()
    w = policy_weights(tr)
    assert not any("lora_" in k or "base_layer" in k for k in w)
    assert len(w) == len([k for k in base_names if "lora_" not in k])
    merged = copy.deepcopy(tr.unwrapped).merge_and_unload()
    ref = merged.state_dict()
    for k, v in w.items():
        assert torch.allclose(v, ref[k], atol=1e-6), k
    # the adapters are unmerged again afterwards: the policy still trains its adapters
    assert any("lora_" in n for n, p in tr.policy.named_parameters() if p.requires_grad)


def test_vllm_backend_without_vllm_names_the_extra(tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed")
    with pytest.raises(ConfigError, match=r"emrl\[vllm\]"):
        make_trainer(rl_config(generation_backend="vllm"), tmp_path, out=None)
