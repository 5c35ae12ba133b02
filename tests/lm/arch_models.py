"""Tiny random-weight models of seven transformers families with an offline byte-level
BPE tokenizer (trained here with ``tokenizers`` on a few hundred strings), saved to a
directory the way a user's model would be: what ``--model PATH`` loads."""

from __future__ import annotations

from pathlib import Path

import torch

# ChatML, as Qwen2 tokenizers ship it
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# a Llama-2-like template that writes BOS itself
LLAMA_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
              "{{ m['content'] }} [/INST]{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}"
              "{% endfor %}")

# family -> tokenizer style: special tokens, which are bos/eos/pad (None: no pad token),
# whether encoding prepends BOS, chat template, tied embeddings
FAMILIES = {
    "llama": dict(specials=["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", pad=None, add_bos=True,
                  chat=None, tie=False),
    "qwen2": dict(specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>",
                  pad="<|endoftext|>", add_bos=False, chat=CHATML, tie=True),
    "mistral": dict(specials=["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", pad=None, add_bos=True,
                    chat=LLAMA_CHAT, tie=False),
    "gemma": dict(specials=["<pad>", "<eos>", "<bos>", "<unk>"], bos="<bos>", eos="<eos>", pad="<pad>",
                  add_bos=True, chat=None, tie=True),
    "phi": dict(specials=["<|endoftext|>"], bos="<|endoftext|>", eos="<|endoftext|>", pad=None,
                add_bos=False, chat=None, tie=False),
    "gpt2": dict(specials=["<|endoftext|>"], bos="<|endoftext|>", eos="<|endoftext|>", pad=None,
                 add_bos=False, chat=None, tie=True),
    "gpt_neox": dict(specials=["<|endoftext|>", "<|padding|>"], bos="<|endoftext|>", eos="<|endoftext|>",
                     pad="<|padding|>", add_bos=False, chat=None, tie=False),
}


def corpus() -> list[str]:
    words = ["the", "answer", "is", "digit", "prompt", "seven", "value", "chat", "user", "assistant"]
    out = [f"p{i}> {i % 10}7" for i in range(200)]
    out += [" ".join(words[(i + j) % len(words)] for j in range(5)) + f" {i}" for i in range(200)]
    return out


def build_tokenizer(style: dict):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=style["specials"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    if style["add_bos"]:
        bos = style["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kw = {k: style[k] for k in ("bos", "eos", "pad") if style[k] is not None}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **{f"{k}_token": v for k, v in kw.items()},
                                   model_max_length=128)
    if style["chat"]:
        fast.chat_template = style["chat"]
    return fast


def build_config(family: str, tok, tie: bool):
    import transformers as tf

    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id, tie_word_embeddings=tie)
    llama_like = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128)
    if family == "llama":
        return tf.LlamaConfig(**llama_like, **ids)
    if family == "qwen2":
        return tf.Qwen2Config(**llama_like, **ids)
    if family == "mistral":
        return tf.MistralConfig(**llama_like, sliding_window=64, **ids)
    if family == "gemma":
        return tf.GemmaConfig(**llama_like, head_dim=8, **ids)
    if family == "phi":
        return tf.PhiConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=128, partial_rotary_factor=0.5, resid_pdrop=0.0, **ids)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **ids)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=128, rotary_pct=0.25, **ids)
    raise KeyError(family)


def save_family(family: str, path: Path) -> Path:
    from transformers import AutoModelForCausalLM

    style = FAMILIES[family]
    tok = build_tokenizer(style)
    config = build_config(family, tok, style["tie"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
