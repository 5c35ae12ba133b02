"""Sampling (shapes, masks, groups, log-probs) and the teacher-forced forward pass."""

from __future__ import annotations

import pytest
import torch

from emrl.errors import EmrlError
from emrl.lm.forward import completion_logprobs, encode_prompt_completion
from emrl.lm.generation import generate
from emrl.lm.models import TinyModelConfig, load_model_and_tokenizer

PROMPTS = ["1 + 2=", "33 - 4=", "7="]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    cfg = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                          max_position_embeddings=24)
    return load_model_and_tokenizer("tiny", tiny_config=cfg, dropout=0.1, seed=0)


def test_rollout_shapes_masks_groups(tiny):
    model, tok = tiny
    model.train()
    torch.manual_seed(0)
    r = generate(model, tok, PROMPTS, num_samples=3, max_new_tokens=5, batch_size=4)
    assert model.training  # mode restored
    n = len(PROMPTS) * 3
    assert len(r) == n and len(r.texts) == n and r.prompts[3] == PROMPTS[1]
    assert r.group.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    T = r.input_ids.shape[1]
    for t in (r.attention_mask, r.completion_mask, r.sample_logprobs, r.policy_logprobs):
        assert t.shape == (n, T)
    P = r.prompt_len
    assert P == 1 + max(len(p) for p in PROMPTS)  # <bos> + characters
    assert not r.completion_mask[:, :P].any()
    assert torch.equal(r.completion_mask.sum(1), r.completion_lengths)
    assert (r.completion_lengths >= 1).all() and (r.completion_lengths <= 5).all()
    assert bool((r.attention_mask.bool() | ~r.completion_mask).all())
    assert (r.sample_logprobs[~r.completion_mask] == 0).all()
    assert (r.sample_logprobs[r.completion_mask] < 0).all()
    for i in range(n):
        comp = r.input_ids[i, P:][r.completion_mask[i, P:]]
        ends_eos = bool(comp[-1] == tok.eos_token_id)
        assert ends_eos == bool(r.finished[i])
        body = comp[:-1] if ends_eos else comp
        assert tok.decode(body, skip_special_tokens=True) == r.texts[i]
        prompt = r.input_ids[i, :P][r.attention_mask[i, :P].bool()]
        assert tok.decode(prompt, skip_special_tokens=True) == r.prompts[i]


def test_sample_logprobs_equal_teacher_forced(tiny):
    model, tok = tiny
    torch.manual_seed(1)
    r = generate(model, tok, PROMPTS, num_samples=4, max_new_tokens=6)
    model.eval()
    with torch.no_grad():
        lp, logits = completion_logprobs(
            model, r.input_ids, r.attention_mask, r.completion_mask, return_logits=True
        )
    assert torch.allclose(lp, r.sample_logprobs, atol=1e-5)
    assert torch.equal(r.sample_logprobs, r.policy_logprobs)
    # the aligned logits reproduce the log-probs
    ref = torch.log_softmax(logits, -1).gather(-1, r.input_ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(torch.where(r.completion_mask, ref, 0.0), lp, atol=1e-5)


def test_temperature_sample_logprobs_are_of_the_sampling_distribution(tiny):
    model, tok = tiny
    torch.manual_seed(2)
    r = generate(model, tok, PROMPTS, num_samples=2, max_new_tokens=4, temperature=0.5)
    model.eval()
    with torch.no_grad():
        logits = completion_logprobs(
            model, r.input_ids, r.attention_mask, r.completion_mask, return_logits=True
        )[1]
        lp = completion_logprobs(model, r.input_ids, r.attention_mask, r.completion_mask)
    assert torch.allclose(lp, r.policy_logprobs, atol=1e-5)
    tempered = torch.log_softmax(logits / 0.5, -1).gather(-1, r.input_ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(torch.where(r.completion_mask, tempered, 0.0), r.sample_logprobs, atol=1e-4)
    assert not torch.allclose(r.sample_logprobs, r.policy_logprobs)


def test_greedy_is_deterministic_and_copies_per_group(tiny):
    model, tok = tiny
    a = generate(model, tok, PROMPTS, num_samples=2, max_new_tokens=5, greedy=True)
    b = generate(model, tok, PROMPTS, num_samples=1, max_new_tokens=5, greedy=True, batch_size=1)
    assert a.texts[0::2] == a.texts[1::2] == b.texts


def test_context_length_error_and_truncation(tiny):
    model, tok = tiny  # context 24 tokens
    long_prompt = "9" * 30
    with pytest.raises(EmrlError, match="context of 24"):
        generate(model, tok, ["1=", long_prompt], max_new_tokens=4)
    r = generate(model, tok, [long_prompt], max_new_tokens=4, truncate_prompts=True, greedy=True)
    assert r.prompt_len == 20 and r.input_ids.shape[1] <= 24
    with pytest.raises(EmrlError, match="prompt 0"):
        encode_prompt_completion(tok, [long_prompt], ["1"], max_length=24)
    b = encode_prompt_completion(tok, [long_prompt], ["12"], max_length=24, truncate=True)
    assert b["input_ids"].shape[1] == 24 and b["completion_lengths"].tolist() == [3]


def test_encode_prompt_completion_layout(tiny):
    model, tok = tiny
    b = encode_prompt_completion(tok, ["1 + 2=", "33 - 4="], ["3", "29"])
    ids, cm, am = b["input_ids"], b["completion_mask"], b["attention_mask"]
    assert ids.shape == (2, 8 + 3)
    assert b["prompt_len"] == 8 and b["completion_lengths"].tolist() == [2, 3]
    assert ids[0, 0] == tok.pad_token_id and am[0, 0] == 0 and ids[0, 1] == tok.bos_token_id
    assert tok.decode(ids[1][cm[1]]) == "29" + tok.eos_token
    assert ids[0, 9] == tok.eos_token_id and am[0, 10] == 0 and not cm[0, 10]
    # right padding after a completion does not change its log-probs
    lp_batch = completion_logprobs(model.eval(), ids, am, cm)
    one = encode_prompt_completion(tok, ["1 + 2="], ["3"])
    lp_one = completion_logprobs(model, one["input_ids"], one["attention_mask"], one["completion_mask"])
    assert torch.allclose(lp_batch[0][cm[0]], lp_one[0][one["completion_mask"][0]], atol=1e-5)
    with pytest.raises(ValueError, match="column 0"):
        completion_logprobs(model, ids, am, torch.ones_like(cm))


def test_shared_prompt_cache_samples_what_a_full_prefill_samples(tiny, monkeypatch):
    """The k samples of a prompt share one prefill of its key/value states; the samples,
    their log-probs and the layout are those of prefilling every row (groups split across
    generate calls included)."""
    import emrl.lm.generation as G

    model, tok = tiny
    rows = [0, 0, 0, 1]
    enc = tok(PROMPTS[:2])["input_ids"]
    from emrl.lm.forward import assemble_batch

    b = assemble_batch([enc[i] for i in rows], [[] for _ in rows], tok.pad_token_id)
    kw = G._shared_prompt_cache(model, rows, b["input_ids"], b["attention_mask"])
    assert len(kw) == 1 and next(iter(kw.values())).get_seq_length() == b["input_ids"].shape[1] - 1
    assert G._shared_prompt_cache(model, [0, 1], b["input_ids"][:2], b["attention_mask"][:2]) == {}

    def sample():
        torch.manual_seed(3)
        return generate(model, tok, PROMPTS, num_samples=3, max_new_tokens=6, batch_size=4, temperature=0.7)

    shared = sample()
    monkeypatch.setattr(G, "_shared_prompt_cache", lambda *a: {})
    full = sample()
    assert shared.texts == full.texts
    assert torch.equal(shared.input_ids, full.input_ids)
    assert torch.allclose(shared.sample_logprobs, full.sample_logprobs, atol=1e-5)
    assert torch.allclose(shared.policy_logprobs, full.policy_logprobs, atol=1e-5)


def test_assemble_batch_layout_with_values():
    from emrl.lm.forward import assemble_batch

    out = assemble_batch([[5, 6], [7]], [[1], [2, 3, 4]], 0, [[-0.5], [-1.0, -2.0, -3.0]])
    assert out["prompt_len"] == 2
    assert out["input_ids"].tolist() == [[5, 6, 1, 0, 0], [0, 7, 2, 3, 4]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]]
    assert out["completion_mask"].tolist() == [[False, False, True, False, False],
                                               [False, False, True, True, True]]
    assert out["completion_lengths"].tolist() == [1, 3]
    assert out["values"].tolist() == [[0, 0, -0.5, 0, 0], [0, 0, -1.0, -2.0, -3.0]]
    with pytest.raises(ValueError, match="row 1: 2 values for 3"):
        assemble_batch([[5], [7]], [[1], [2, 3, 4]], 0, [[-0.5], [-1.0, -2.0]])
    empty = assemble_batch([], [], 0)
    assert empty["input_ids"].shape == (0, 0)


def test_trim_padding_drops_all_padding_columns_and_keeps_the_model_output(tiny):
    from emrl.lm.rollout import Batch

    model, tok = tiny
    model.eval()
    torch.manual_seed(4)
    r = generate(model, tok, PROMPTS, num_samples=2, max_new_tokens=6)
    # rows of the two shorter prompts: their left padding is padding in both
    rows = torch.tensor([0, 4])
    S = r.input_ids.shape[1]
    b = Batch({"input_ids": r.input_ids, "attention_mask": r.attention_mask,
               "completion_mask": r.completion_mask, "old_logp": r.policy_logprobs,
               "rewards": torch.arange(len(r), dtype=torch.float32),
               "shifted": torch.arange(len(r) * (S - 1)).reshape(len(r), S - 1)}, {"texts": r.texts}).select(rows)
    t = b.trim_padding()
    keep = b["attention_mask"].bool().any(0).nonzero().squeeze(1)
    a, e = int(keep[0]), int(keep[-1]) + 1
    assert (a, e) != (0, S) and t["input_ids"].shape[1] == e - a
    assert t["attention_mask"].bool().any(0).all()
    assert torch.equal(t["rewards"], b["rewards"]) and t.lists == b.lists
    assert torch.equal(t["shifted"], b["shifted"][:, a:e - 1])
    with torch.no_grad():
        full = completion_logprobs(model, b["input_ids"], b["attention_mask"], b["completion_mask"])
        cut = completion_logprobs(model, t["input_ids"], t["attention_mask"], t["completion_mask"])
    assert torch.allclose(full[:, a:e], cut, atol=1e-5) and torch.allclose(cut, t["old_logp"], atol=1e-5)
    assert t.trim_padding() is t
