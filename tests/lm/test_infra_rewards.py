"""Reward sources (verifier, module:function, combined, reward model) and validation."""

from __future__ import annotations

import textwrap

import pytest
import torch

from emrl.errors import EmrlError
from emrl.lm.rewards import (
    RewardModel,
    build_reward,
    combine_rewards,
    compute_rewards,
    exact_match,
    load_reward_fn,
)
from emrl.lm.tasks import load_task

PROMPTS = ["1 + 1=", "2 + 2=", "3 + 3="]
COMPLETIONS = ["2", "5", "6!"]
COLUMNS = {"answer": ["2", "4", "6"]}


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(
        """
        def length(prompts, completions, **kw):
            return [float(len(c)) for c in completions]

        def uses_answer(prompts, completions, answer, **kw):
            return [1.0 if c.startswith(a) else -1.0 for c, a in zip(completions, answer)]

        def short(prompts, completions, **kw):
            return [1.0] * (len(completions) - 1)

        def nan_at_1(prompts, completions, **kw):
            return [0.0, float("nan"), 0.0][: len(completions)]

        def boom(prompts, completions, **kw):
            raise RuntimeError("kaput")

        def not_numbers(prompts, completions, **kw):
            return ["a"] * len(completions)

        NOT_CALLABLE = 3
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_module_function_rewards(user_module):
    fn = load_reward_fn(f"{user_module}:length")
    assert compute_rewards(fn, PROMPTS, COMPLETIONS, COLUMNS).tolist() == [1.0, 1.0, 2.0]
    fn2 = load_reward_fn(f"{user_module}:uses_answer")
    assert compute_rewards(fn2, PROMPTS, COMPLETIONS, COLUMNS).tolist() == [1.0, -1.0, 1.0]
    assert compute_rewards(exact_match, PROMPTS, COMPLETIONS, COLUMNS).tolist() == [1.0, 0.0, 0.0]


def test_combined_rewards_are_weighted_sums(user_module):
    comb = combine_rewards([(load_reward_fn(f"{user_module}:length"), 0.5), (exact_match, 2.0)])
    r = compute_rewards(comb, PROMPTS, COMPLETIONS, COLUMNS)
    assert r.tolist() == [0.5 + 2.0, 0.5, 1.0]
    assert set(comb.last_components) == {f"{user_module}:length", "exact_match"}
    same = build_reward([f"{user_module}:length", "exact_match"], [0.5, 2.0])
    assert compute_rewards(same, PROMPTS, COMPLETIONS, COLUMNS).tolist() == r.tolist()
    with pytest.raises(EmrlError, match="2 reward functions but 1 reward weights"):
        build_reward([f"{user_module}:length", "exact_match"], [1.0])


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("short", r"my_rewards:short returned 2 values for 3 completions \(first bad index: 2\)"),
        ("nan_at_1", r"my_rewards:nan_at_1 returned a non-finite value nan at index 1"),
        ("boom", r"my_rewards:boom raised RuntimeError: kaput"),
        ("not_numbers", r"my_rewards:not_numbers returned a non-number at index 0"),
    ],
)
def test_reward_validation_errors_name_function_and_index(user_module, name, pattern):
    fn = load_reward_fn(f"{user_module}:{name}")
    with pytest.raises(EmrlError, match=pattern):
        compute_rewards(fn, PROMPTS, COMPLETIONS, COLUMNS)
    # the inner function is named also when it is part of a combination
    comb = combine_rewards([(exact_match, 1.0), (fn, 1.0)])
    with pytest.raises(EmrlError, match=f"my_rewards:{name}"):
        compute_rewards(comb, PROMPTS, COMPLETIONS, COLUMNS)


def test_bad_reward_specs(user_module):
    with pytest.raises(EmrlError, match="must look like 'package.module:function'"):
        load_reward_fn("no_colon")
    with pytest.raises(EmrlError, match="cannot import module 'no_such_mod_xyz'"):
        load_reward_fn("no_such_mod_xyz:f")
    with pytest.raises(EmrlError, match="has no 'lenght'.*Did you mean: length"):
        load_reward_fn(f"{user_module}:lenght")
    with pytest.raises(EmrlError, match="not callable"):
        load_reward_fn(f"{user_module}:NOT_CALLABLE")


def test_task_with_user_rewards_and_verifier(user_module):
    spec = "reasoning_gym:basic_arithmetic?min_terms=2&max_terms=2&max_digits=1&operators=+"
    t = load_task(spec, num_train=4, num_eval=4,
                  reward_funcs=["verifier", f"{user_module}:length"], reward_weights=[1.0, 0.1])
    row = t.eval[0]
    r = t.reward([row["prompt"]] * 2, [row["answer"], "zz"], [row, row])
    assert r == pytest.approx([1.0 + 0.1 * len(row["answer"]), 0.2])
    assert t.info()["reward_funcs"] == ["verifier", f"{user_module}:length"]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from emrl.lm.models import build_tiny_tokenizer

    path = tmp_path_factory.mktemp("rm")
    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=64, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model.eval(), tok


def test_reward_model_scores_prompt_plus_completion(reward_model_dir):
    path, model, tok = reward_model_dir
    rm = RewardModel(str(path), batch_size=2)
    scores = compute_rewards(rm, PROMPTS, COMPLETIONS)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    with torch.no_grad():
        ref = [model(**tok(p + c, return_tensors="pt")).logits[0, 0].item()
               for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    assert scores.tolist() == pytest.approx(ref, abs=1e-5)
    # batching (padding) does not change the scores
    assert RewardModel(str(path), batch_size=8)(PROMPTS, COMPLETIONS) == pytest.approx(ref, abs=1e-5)
    assert len(set(round(s, 6) for s in ref)) == 3
    # a directory in a reward spec list is loaded as a reward model and combined
    comb = build_reward([str(path), "exact_match"], [1.0, 10.0])
    r = compute_rewards(comb, PROMPTS, COMPLETIONS, COLUMNS)
    assert r.tolist() == pytest.approx([ref[0] + 10.0, ref[1], ref[2]], abs=1e-5)


def test_reward_model_bad_path(tmp_path):
    with pytest.raises(EmrlError, match="does not exist"):
        RewardModel(str(tmp_path / "missing"))
    (tmp_path / "junk").mkdir()
    with pytest.raises(EmrlError, match="could not load a sequence-classification reward model"):
        RewardModel(str(tmp_path / "junk"))
