"""Causal language models: local Hugging Face directories and the offline ``tiny`` preset.

``load_model_and_tokenizer("tiny")`` builds, from nothing and without any download, a
small decoder-only transformer and a character-level tokenizer:

* the model is a Hugging Face ``GPTNeoXForCausalLM`` configured Llama-style: rotary
  position embeddings on every head dimension (``rotary_pct=1``), pre-norm blocks,
  sequential (not parallel) residuals. GPT-NeoX is used instead of ``LlamaForCausalLM``
  because Llama only has attention dropout, while spec §9 needs both attention dropout
  (``attention_dropout``) and residual dropout after each sub-layer (``hidden_dropout``);
* the tokenizer is a ``tokenizers.Tokenizer`` with one token per printable ASCII
  character (plus ``\\n`` and ``\\t``) and ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``,
  wrapped as a ``PreTrainedTokenizerFast`` that pads on the left (for generation) and
  prepends ``<bos>`` to every encoded text. ``save_pretrained`` writes an ordinary HF
  tokenizer that plain ``transformers.AutoTokenizer`` loads.

Any other name is a local directory loaded with ``AutoModelForCausalLM`` /
``AutoTokenizer`` (``trust_remote_code`` off unless asked; never downloads).

Dropout (spec §9): :func:`set_dropout` sets attention and residual dropout of a loaded
model to one probability ``p``; :func:`get_dropout` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emrl.config import cfg_field
from emrl.errors import ConfigError, EmrlError

TINY_NAME = "tiny"
#: files of which a model directory must hold at least one to have a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt", "spiece.model")
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
#: characters of the tiny tokenizer, one token each (printable ASCII, newline, tab).
TINY_CHARS = tuple(chr(i) for i in range(32, 127)) + ("\n", "\t")

# Config attributes that hold a dropout probability of an attention or residual path, in
# the model families transformers ships (Llama/Qwen/Mistral, GPT-NeoX, Phi, GPT-2, OPT...).
_DROPOUT_CONFIG_ATTRS = (
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "attn_pdrop",
    "embd_pdrop",
    "dropout",
    "attention_probs_dropout_prob",
    "hidden_dropout_prob",
)
# Float attributes that attention modules read at forward time instead of an nn.Dropout.
_DROPOUT_MODULE_FLOATS = ("attention_dropout", "dropout", "attn_dropout_p")


@dataclass
class TinyModelConfig:
    """Sizes of the ``tiny`` preset (806,272 parameters with the defaults, vocab 101).

    The defaults are chosen so that SFT on the default task (two-term 1–2 digit
    arithmetic, 11.1 tokens per example of which 3.0 are completion + EOS) is learnable
    on a CPU in minutes. Measured (seed 0, batch 64, AdamW lr 3e-3 cosine to 0.1x, one
    thread, a 2-core machine shared with other jobs, load ~10): held-out greedy exact
    match 0.18 after 1600 steps (279 s), 0.34 after 2000 (344 s), 0.435 after 2400
    (409 s), with sampled accuracy 0.32 and pass@4 0.72 — room left for RL.
    (``python benchmarks/lm_throughput.py --threads 1 --repeats 1 --learn-steps 2400``.)
    A 96-wide, 3-layer variant (345k parameters) learns at about the same rate per step
    and steps ~1.6-1.8x faster (`--hidden-size 96 --num-layers 3`).
    """

    hidden_size: int = cfg_field(128, "Width of the residual stream.")
    num_layers: int = cfg_field(4, "Number of transformer blocks.")
    num_heads: int = cfg_field(4, "Attention heads per block (hidden_size must divide).")
    intermediate_size: int = cfg_field(512, "Width of the feed-forward sub-layer.")
    max_position_embeddings: int = cfg_field(
        256, "Context length in tokens (prompt + completion) the model accepts."
    )
    dropout: float = cfg_field(0.0, "Attention and residual dropout probability (spec §9).")
    tie_word_embeddings: bool = cfg_field(True, "Share the input embedding and output matrix.")
    rope_theta: float = cfg_field(10000.0, "Rotary embedding base.")

    def validate(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"tiny model {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"tiny model hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ConfigError("tiny model head size (hidden_size / num_heads) must be even (rotary)")
        if self.max_position_embeddings < 2:
            raise ConfigError("tiny model max_position_embeddings must be >= 2")
        _check_p(self.dropout)


def _check_p(p: float) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {p}")
    return p


def build_tiny_tokenizer():
    """The character-level tokenizer of the ``tiny`` preset (``PreTrainedTokenizerFast``).

    Token ids: ``<pad>``=0, ``<bos>``=1, ``<eos>``=2, ``<unk>``=3, then one id per
    character of :data:`TINY_CHARS`. Encoding a text prepends ``<bos>``; padding is on
    the left.
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + TINY_CHARS)}
    # A BPE model without merges splits a text into single characters; unknown ones -> <unk>.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=10**9,
    )


def build_tiny_model(cfg: TinyModelConfig | None = None, *, vocab_size: int, seed: int = 0):
    """A freshly initialised ``GPTNeoXForCausalLM`` of the sizes in ``cfg`` (see module doc)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = cfg or TinyModelConfig()
    cfg.validate()
    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act="gelu",
        rotary_pct=1.0,
        rotary_emb_base=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings,
        attention_dropout=cfg.dropout,
        hidden_dropout=cfg.dropout,
        use_parallel_residual=False,
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.02,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(config)
    model.generation_config.pad_token_id = 0
    model.generation_config.bos_token_id = 1
    model.generation_config.eos_token_id = 2
    return model


def load_model_and_tokenizer(
    name_or_path: str,
    *,
    dropout: float | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
    torch_dtype: Any = None,
    tiny_config: TinyModelConfig | None = None,
):
    """Load ``(model, tokenizer)``: the ``tiny`` preset or a local HF causal-LM directory.

    Args:
        name_or_path: ``"tiny"`` (built from nothing with ``tiny_config`` and ``seed``) or a
            local directory holding a causal LM and its tokenizer (e.g. an emrl ``final/``).
        dropout: attention and residual dropout probability (spec §9); ``None`` keeps the
            model's own (``tiny_config.dropout`` for the preset).
        trust_remote_code: allow the directory's own modelling code (off by default).
        seed: initialisation seed of the ``tiny`` preset (the global RNG is left untouched).
        torch_dtype: dtype to load a directory's weights in (``None``: as saved / float32).

    The tokenizer always has a pad token (EOS if the directory's has none), pads on the
    left, and the model's ``generation_config`` knows pad and EOS ids. The model is
    returned in train mode only if it was built here; callers pick the mode they need.

    Raises:
        EmrlError: the path does not exist or holds no loadable model/tokenizer.
    """
    if dropout is not None:
        dropout = _check_p(dropout)
    if name_or_path == TINY_NAME:
        cfg = dataclasses.replace(tiny_config) if tiny_config is not None else TinyModelConfig()
        if dropout is not None:
            cfg.dropout = dropout
        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(cfg, vocab_size=len(tokenizer), seed=seed)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        return model, tokenizer

    path = Path(os.path.expanduser(str(name_or_path)))
    if not path.exists():
        raise EmrlError(
            f"model path {str(path)!r} does not exist (expected 'tiny' or a local directory "
            "with a Hugging Face causal LM, e.g. the final/ folder of an emrl run)"
        )
    from emrl.lm import lora

    if path.is_dir() and lora.is_adapter_dir(path):  # an emrl final/ of LoRA adapters
        return load_lora_merged(path, dropout=dropout, trust_remote_code=trust_remote_code, seed=seed,
                                torch_dtype=torch_dtype)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise EmrlError(
            f"model path {str(path)!r} is not a Hugging Face model directory (no config.json)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not any((path / n).is_file() for n in TOKENIZER_FILES):
        raise EmrlError(
            f"model directory {str(path)!r} has no tokenizer files (expected one of "
            f"{', '.join(TOKENIZER_FILES)}); save the tokenizer next to the model "
            "(tokenizer.save_pretrained(DIR)), as emrl's final/ directories do")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), trust_remote_code=trust_remote_code, local_files_only=True
        )
    except Exception as e:  # noqa: BLE001 - report any loader failure as a user error
        raise EmrlError(f"could not load a tokenizer from {str(path)!r}: {e}") from e
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except Exception as e:  # noqa: BLE001
        raise EmrlError(f"could not load a causal language model from {str(path)!r}: {e}") from e
    prepare_tokenizer(tokenizer, model)
    if dropout is not None:
        set_dropout(model, dropout)
    return model, tokenizer


def prepare_tokenizer(tokenizer, model=None) -> None:
    """Make ``tokenizer`` usable for batched generation: a pad token, left padding.

    Also copies pad/EOS ids into ``model.generation_config`` when they are missing there.
    """
    if tokenizer.eos_token is None:
        raise EmrlError("the tokenizer has no EOS token; emrl needs one to end completions")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model is not None:
        gc = model.generation_config
        if gc.pad_token_id is None:
            gc.pad_token_id = tokenizer.pad_token_id
        if gc.eos_token_id is None:
            gc.eos_token_id = tokenizer.eos_token_id


def context_length(model) -> int | None:
    """The model's maximum number of positions (prompt + completion), if it declares one."""
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def set_dropout(model: nn.Module, p: float) -> nn.Module:
    """Set attention and residual dropout of ``model`` to ``p`` in place (spec §9).

    Every ``nn.Dropout`` module gets probability ``p``; attention modules that read a float
    attribute at forward time (``attention_dropout`` in Llama/GPT-NeoX style attention) get
    it too, and so do the dropout fields of ``model.config`` (so ``save_pretrained`` keeps
    it). Warns when the model has no dropout module outside attention (no residual dropout
    to set, e.g. Llama). Returns ``model``.
    """
    p = _check_p(p)
    n_modules = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
            n_modules += 1
        else:
            for attr in _DROPOUT_MODULE_FLOATS:
                v = getattr(module, attr, None)
                if isinstance(v, float) and not isinstance(v, bool):
                    setattr(module, attr, p)
    cfg = getattr(model, "config", None)
    if cfg is not None:
        for attr in _DROPOUT_CONFIG_ATTRS:
            v = getattr(cfg, attr, None)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                setattr(cfg, attr, p)
    if n_modules == 0 and p > 0:
        warnings.warn(
            f"{type(model).__name__} has no residual dropout modules; only attention dropout "
            "was set",
            stacklevel=2,
        )
    return model


def get_dropout(model: nn.Module) -> float:
    """The largest attention/residual dropout probability set in ``model`` (0.0 if none)."""
    ps = [0.0]
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            ps.append(float(module.p))
        else:
            for attr in _DROPOUT_MODULE_FLOATS:
                v = getattr(module, attr, None)
                if isinstance(v, float) and not isinstance(v, bool):
                    ps.append(v)
    return max(ps)


def num_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def load_lora_merged(path: Path, **kwargs: Any):
    """``(model, tokenizer)`` of an adapter directory: its base model (a local directory)
    with the adapters merged in; the tokenizer saved next to the adapters."""
    from emrl.lm.lora import ADAPTER_CONFIG, _peft

    peft = _peft()
    base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise EmrlError(
            f"{str(path)!r} holds LoRA adapters of the base model {base!r}, which is not a local "
            "directory; load the adapters onto their base with peft, or train with --lora-merge "
            "to save a merged model")
    model, tokenizer = load_model_and_tokenizer(base, **kwargs)
    if (path / "tokenizer_config.json").is_file():
        tokenizer = _load_adapter_tokenizer(path, model)
    model = peft.PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return model, tokenizer


def _load_adapter_tokenizer(path: Path, model: nn.Module):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    prepare_tokenizer(tok, model)
    return tok
