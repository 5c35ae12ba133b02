"""Issue 14 part 4: log-probs and the exact KL in chunks (same values and gradients,
vocabulary-sized memory bounded by chunk x V), bf16 autocast, gradient checkpointing,
generation without per-step scores, and the memory check's error."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import make_trainer, rl_config, sft_config, small_model

from emrl import objectives as O
from emrl.errors import ConfigError, EmrlError
from emrl.lm.chunked import head_terms
from emrl.lm.generation import generate
from emrl.lm.scale import check_memory, update_bytes


def test_head_terms_equal_the_full_computation():
    torch.manual_seed(0)
    n, S, H, V = 3, 7, 8, 50
    hidden = torch.randn(n, S, H, requires_grad=True)
    head = torch.nn.Linear(H, V)
    ids = torch.randint(0, V, (n, S))
    cm = torch.zeros(n, S, dtype=torch.bool)
    cm[0, 3:], cm[1, 5:], cm[2, 1:4] = True, True, True
    old_h = torch.randn(n, S, H)
    W0, b0 = torch.randn(V, H), torch.randn(V)
    logp, kl, m = head_terms(hidden, head, ids, cm, 2, (old_h, W0, b0))
    # the plain computation: full logits
    logits = head(hidden)
    ref_lp = O.token_logprobs(logits[:, :-1], ids[:, 1:])
    ref_lp = torch.cat([torch.zeros(n, 1), torch.where(cm[:, 1:], ref_lp, torch.zeros_like(ref_lp))], 1)
    ref_kl = O.categorical_kl(torch.nn.functional.linear(old_h, W0, b0)[:, :-1], logits[:, :-1], mask=cm[:, 1:])
    assert torch.allclose(logp, ref_lp, atol=1e-6)
    assert torch.allclose(kl, ref_kl[cm[:, 1:]], atol=1e-6)
    g1 = torch.autograd.grad((logp.sum() + kl.sum()), [hidden, head.weight])
    g2 = torch.autograd.grad((ref_lp.sum() + ref_kl.sum()), [hidden, head.weight])
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


RUNS = {
    "sft": lambda **kw: sft_config(max_steps=2, **kw),
    "vmpo-exact-kl": lambda **kw: rl_config(algo="vmpo", max_steps=2, epochs=2, **kw),
    "dar": lambda **kw: rl_config(algo="dar", max_steps=2, kl_ref_coef=0.1, **kw),
    "ppo-token": lambda **kw: rl_config(algo="ppo", max_steps=2, minibatch_size=8, **kw),
}
SKIP = ("time/", "throughput/")


@pytest.mark.parametrize("name", list(RUNS))
def test_chunked_run_equals_plain_run(tmp_path, name):
    recs = {}
    for chunk in (None, 3):
        tr = make_trainer(RUNS[name](logp_chunk_size=chunk), tmp_path, out=None)
        rs = []
        tr.train(callback=lambda s, r, rs=rs: rs.append(r))
        recs[chunk] = rs
    for a, b in zip(recs[None], recs[3], strict=True):
        for k, v in a.items():
            if not k.startswith(SKIP):
                assert b[k] == pytest.approx(v, rel=1e-4, abs=1e-5), (name, k)
    if name.startswith("vmpo"):
        assert recs[3][0]["mstep/kl"] > 0  # the exact KL was computed (in chunks)


def test_chunked_trainer_forward_and_kl_have_the_plain_gradients(tmp_path):
    tr = make_trainer(rl_config(algo="vmpo", baseline="value"), tmp_path, out=None)
    with torch.no_grad():  # move π_θ away from π_old so the KL and its gradient are not 0
        for p in tr.lm.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    rows = tr.task.train[:4]
    gen = torch.Generator().manual_seed(0)
    noise = [torch.randn(p.shape, generator=gen) * 0.05 for p in tr.lm.parameters()]
    grads, vals = {}, {}
    for chunk in (None, 2):
        tr.cfg.logp_chunk_size = chunk
        b = tr.encode([r["prompt"] for r in rows], ["12", "345", "6", "7890"], rows)
        b["rewards"] = torch.zeros(4)
        b = tr.algo.finish_batch(tr.ctx, b)
        with torch.no_grad():
            for p, e in zip(tr.lm.parameters(), noise, strict=True):
                p.add_(e)  # the M-step's π_θ differs from the rollout's π_old
        out = tr.forward(b, train=False, need_logits=chunk is None, need_values=True)
        kl = tr._kl_old(b, out)
        loss = -(out.logp * torch.arange(1.0, 5.0)[:, None]).sum() + 3 * kl + out.values.sum()
        tr.optimizer.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p, e in zip(tr.lm.parameters(), noise, strict=True):
                p.sub_(e)
        grads[chunk] = [p.grad.clone() for p in tr.policy.parameters() if p.grad is not None]
        vals[chunk] = (float(kl.detach()), out.logp.detach(), out.values.detach())
    assert vals[None][0] > 1e-4 and vals[2][0] == pytest.approx(vals[None][0], rel=1e-5)
    assert torch.allclose(vals[2][1], vals[None][1], atol=1e-6)
    assert torch.allclose(vals[2][2], vals[None][2], atol=1e-6)
    assert len(grads[None]) == len(grads[2])
    for a, b in zip(grads[None], grads[2], strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def _largest_saved(tr, batch) -> int:
    sizes = []

    def pack(t):
        if t.dim() and t.shape[-1] == 101:  # vocabulary-sized (the tiny tokenizer's V)
            sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = tr.forward(batch, train=True)
        loss = -(out.logp.sum()) + (out.kl_old if getattr(out, "kl_old", None) is not None else 0)
    loss.backward()
    return max(sizes, default=0)


def test_chunking_bounds_the_vocabulary_sized_memory(tmp_path):
    V = 101  # the tiny tokenizer
    got = {}
    for chunk in (None, 4):
        # minibatches: the plain path then keeps pi_old's full logits from a separate pass
        tr = make_trainer(rl_config(algo="vmpo", logp_chunk_size=chunk, minibatch_size=4), tmp_path, out=None)
        rows = tr.task.train[:8]
        b = tr.encode([r["prompt"] for r in rows], ["12345678"] * 8, rows)
        b["rewards"] = torch.zeros(8)
        b = tr.algo.finish_batch(tr.ctx, b)
        n, S = b["input_ids"].shape
        got[chunk] = (_largest_saved(tr, b), n * S * V, "old_logits" in b, "old_hidden" in b)
    big, nsv, has_logits, _ = got[None]
    assert big >= nsv * (S - 1) // S and has_logits  # plain: full logits saved and kept
    small, _, has_logits, has_hidden = got[4]
    assert small < 4 * V * 2 + 1 and not has_logits and has_hidden  # chunked: <= chunk x V at a time


def test_chunking_refuses_full_distribution_targets(tmp_path):
    with pytest.raises(ConfigError, match="label_smoothing"):
        make_trainer(sft_config(target="label_smoothing", logp_chunk_size=4), tmp_path, out=None)
    with pytest.raises(ConfigError, match="entropy"):
        make_trainer(rl_config(algo="ppo", ent_coef=0.01, logp_chunk_size=4), tmp_path, out=None)


def test_bf16_autocast_trains_close_to_float32(tmp_path):
    losses = {}
    for mp in ("no", "bf16"):
        tr = make_trainer(sft_config(max_steps=2, mixed_precision=mp), tmp_path, out=None)
        rec = tr.train()
        losses[mp] = rec["loss/policy"]
        assert all(p.dtype == torch.float32 for p in tr.policy.parameters())  # weights stay fp32
    assert losses["bf16"] != losses["no"]  # autocast really ran in bf16
    assert losses["bf16"] == pytest.approx(losses["no"], rel=0.05)


def test_fp16_without_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        make_trainer(sft_config(mixed_precision="fp16"), tmp_path, out=None)


def test_gradient_checkpointing_gives_the_same_update(tmp_path):
    params = {}
    for gc in (False, True):
        tr = make_trainer(rl_config(algo="vmpo", max_steps=1, gradient_checkpointing=gc), tmp_path, out=None)
        on = getattr(tr.lm, "is_activation_checkpointing", None)
        assert (on if on is not None else tr.lm.is_gradient_checkpointing) == gc
        tr.train()
        params[gc] = [p.detach().clone() for p in tr.policy.parameters()]
    for a, b in zip(params[False], params[True], strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_generation_without_logprobs_keeps_the_samples():
    model, tok = small_model()
    outs = []
    for lp in (True, False):
        torch.manual_seed(3)
        outs.append(generate(model, tok, ["p1>", "p22>"], num_samples=2, max_new_tokens=5, logprobs=lp))
    assert outs[0].texts == outs[1].texts and torch.equal(outs[0].input_ids, outs[1].input_ids)
    assert outs[1].sample_logprobs is None and outs[1].policy_logprobs is None
    assert outs[0].sample_logprobs is not None


def test_model_too_large_names_memory_and_options():
    model, _ = small_model()
    need = update_bytes(model)
    assert need == sum(p.numel() for p in model.parameters()) * 16  # fp32 weight + grad + 2 moments
    with pytest.raises(EmrlError, match=r"needs at least .* GiB .*--lora-r .*bf16.*checkpointing.*fsdp2"):
        check_memory(model, torch.device("cuda"), already_resident=False, available=need // 2)
    check_memory(model, torch.device("cuda"), already_resident=False, available=need * 2)
