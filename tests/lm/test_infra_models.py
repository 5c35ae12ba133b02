"""The ``tiny`` preset, local model directories, dropout control (spec §9)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emrl.errors import EmrlError
from emrl.lm.models import (
    TINY_CHARS,
    TinyModelConfig,
    get_dropout,
    load_model_and_tokenizer,
    num_parameters,
    set_dropout,
)

SMALL = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def test_tiny_default_size_and_tokenizer():
    model, tok = load_model_and_tokenizer("tiny")
    n = num_parameters(model)
    assert 0.5e6 <= n <= 2e6, n
    assert len(tok) == 4 + len(TINY_CHARS) == model.config.vocab_size
    assert tok.padding_side == "left"
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("12 + 7=")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 1 + len("12 + 7=")
    assert tok.decode(ids, skip_special_tokens=True) == "12 + 7="
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    # Llama-style: rotary on all head dims, sequential pre-norm residual blocks
    assert model.config.rope_parameters["partial_rotary_factor"] == 1.0
    assert model.config.use_parallel_residual is False


def test_tiny_seeded_init_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = load_model_and_tokenizer("tiny", seed=1, tiny_config=SMALL)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b, _ = load_model_and_tokenizer("tiny", seed=1, tiny_config=SMALL)
    c, _ = load_model_and_tokenizer("tiny", seed=2, tiny_config=SMALL)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_save_load_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = load_model_and_tokenizer("tiny", tiny_config=SMALL, dropout=0.2)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    plain_tok = AutoTokenizer.from_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    enc = plain_tok(["1 + 2=", "33 - 4="], return_tensors="pt", padding=True)
    assert enc["attention_mask"][0, 0] == 0  # left padding survives saving
    model.eval()
    assert torch.allclose(model(**enc).logits, plain(**enc).logits)
    m2, t2 = load_model_and_tokenizer(str(tmp_path))
    assert get_dropout(m2) == pytest.approx(0.2)
    assert t2.pad_token_id == tok.pad_token_id and t2.padding_side == "left"


def test_set_and_get_dropout_reach_attention_and_residual():
    model, _ = load_model_and_tokenizer("tiny", tiny_config=SMALL)
    assert get_dropout(model) == 0.0
    set_dropout(model, 0.3)
    assert get_dropout(model) == pytest.approx(0.3)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(m.p == 0.3 for m in drops)  # residual (hidden) dropout modules
    attn = [m for m in model.modules() if type(m).__name__.endswith("Attention")]
    assert attn and all(m.attention_dropout == 0.3 for m in attn)
    assert model.config.hidden_dropout == 0.3 and model.config.attention_dropout == 0.3
    # dropout is active in train mode and not in eval mode
    x = torch.tensor([[1, 21, 22, 23, 24]])
    model.train()
    assert not torch.allclose(model(x).logits, model(x).logits)
    model.eval()
    assert torch.allclose(model(x).logits, model(x).logits)
    with pytest.raises(EmrlError, match="dropout"):
        set_dropout(model, 1.0)


def test_missing_model_path_names_it(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(EmrlError, match="no_such_model"):
        load_model_and_tokenizer(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmrlError, match="config.json"):
        load_model_and_tokenizer(str(tmp_path / "empty"))


def test_set_dropout_on_a_model_without_residual_dropout_warns():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    with pytest.warns(UserWarning, match="no residual dropout"):
        set_dropout(model, 0.1)
    assert get_dropout(model) == pytest.approx(0.1)  # attention dropout was set
    assert model.config.attention_dropout == 0.1
