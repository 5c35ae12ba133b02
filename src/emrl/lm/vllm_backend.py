"""Rollouts from a vLLM engine (``--generation-backend vllm``, optional extra ``vllm``).

Colocated generation: one vLLM engine per process on the same GPU as the trainer, with
its own copy of the weights. The loop is unchanged except where completions come from:

1. before sampling, if the policy changed since the last push, its weights are pushed to
   the engine (:func:`sync_weights`: full weights gathered from shards, LoRA adapters
   merged into the base weights, transformers names);
2. the engine samples ``k`` completions per prompt (token ids);
3. :func:`rollout` lays them out like HF ``generate``'s :class:`~emrl.lm.generation.Rollout`;
   the trainer then computes π_old's log-probs itself with its own teacher-forced pass
   (as it does for HF generation), so the engine's numerics (kernels, bf16, sampling)
   never enter the E-step or the trust region.

Any object with :class:`Engine`'s two methods can stand in for vLLM
(``trainer.generation_engine = ...``); the tests use a transformers-backed one. vLLM
itself is **not yet tested** with emrl (no GPU and no CPU build of vLLM in CI).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from emrl.errors import ConfigError, EmrlError
from emrl.lm.forward import assemble_batch, fit_to_context
from emrl.lm.generation import Rollout
from emrl.lm.models import context_length

if TYPE_CHECKING:  # pragma: no cover
    from emrl.lm.rollout import Rollouts


class Engine(Protocol):
    def generate(self, prompt_ids: Sequence[Sequence[int]], *, num_samples: int, max_new_tokens: int,
                 temperature: float, top_p: float, eos_token_id: int) -> list[list[int]]:
        """``len(prompt_ids) * num_samples`` completions (the k of a prompt contiguous),
        each a list of token ids ending with EOS when it finished."""

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> None:
        """Replace the engine's weights (transformers parameter names)."""


class VLLMEngine:
    """A colocated ``vllm.LLM`` built from the trainer's model directory."""

    def __init__(self, model_path: str, *, seed: int, dtype: str = "auto", gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None) -> None:
        try:
            import vllm
        except ImportError as e:
            raise ConfigError("--generation-backend vllm needs vLLM: pip install 'emrl[vllm]' (a GPU machine); "
                              "or use --generation-backend hf") from e
        self._vllm = vllm
        self.llm = vllm.LLM(model=model_path, seed=seed, dtype=dtype, enable_prefix_caching=True,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len)

    def generate(self, prompt_ids, *, num_samples, max_new_tokens, temperature, top_p, eos_token_id):
        sp = self._vllm.SamplingParams(n=num_samples, temperature=temperature, top_p=top_p,
                                       max_tokens=max_new_tokens, stop_token_ids=[eos_token_id])
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], sp, use_tqdm=False)
        return [list(c.token_ids) for o in outs for c in o.outputs]

    def load_weights(self, weights):
        model = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        model.load_weights(weights)
        self.llm.reset_prefix_cache()


def engine_for(trainer: Rollouts) -> Engine:
    """The trainer's engine (``trainer.generation_engine``), built on first use."""
    eng = getattr(trainer, "generation_engine", None)
    if eng is None:
        from pathlib import Path

        path = Path(str(trainer.cfg.model))
        if not path.is_dir():
            raise ConfigError(f"--generation-backend vllm loads the model from a directory; {trainer.cfg.model!r} "
                              "is not one (save the model first, e.g. the final/ of an SFT run)")
        eng = VLLMEngine(str(path), seed=trainer.cfg.seed + trainer.rank,
                         max_model_len=context_length(trainer.unwrapped))
        trainer.generation_engine = eng
        trainer.engine_step = None
    return eng


def policy_weights(trainer: Rollouts) -> dict[str, Tensor]:
    """The policy's full weights under transformers names (LoRA merged, shards gathered)."""
    from emrl.lm.lora import is_lora
    from emrl.lm.sharding import full_params

    lm = trainer.unwrapped
    with torch.no_grad(), full_params(trainer.policy):
        if is_lora(lm):
            lm.merge_adapter()
            try:
                base = lm.get_base_model()
                sd = {}
                for k, v in base.state_dict().items():
                    if "lora_" in k:
                        continue
                    sd[k.replace(".base_layer", "")] = v.detach().clone()
            finally:
                lm.unmerge_adapter()
            return sd
        return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
                for k, v in lm.state_dict().items()}


def sync_weights(trainer: Rollouts, engine: Engine) -> bool:
    """Push the policy's weights to ``engine`` if they changed since the last push."""
    if getattr(trainer, "engine_step", None) == trainer.step:
        return False
    engine.load_weights(policy_weights(trainer).items())
    trainer.engine_step = trainer.step
    return True


def rollout(trainer: Rollouts, prompts: list[str], k: int, *, temperature: float, top_p: float) -> Rollout:
    """``k`` completions per prompt from the engine, as a :class:`Rollout` (no log-probs:
    the trainer computes π_old's itself)."""
    tok = trainer.tokenizer
    eos = tok.eos_token_id
    if eos is None:
        raise EmrlError("the tokenizer has no EOS token")
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    L = trainer.cfg.max_new_tokens
    ctx = context_length(trainer.unwrapped)
    enc = [fit_to_context(list(ids), L, ctx, truncate=False, index=i)
           for i, ids in enumerate(tok(list(prompts), add_special_tokens=True)["input_ids"])]
    engine = engine_for(trainer)
    sync_weights(trainer, engine)
    comps = engine.generate(enc, num_samples=k, max_new_tokens=L, temperature=temperature, top_p=top_p,
                            eos_token_id=eos)
    order = [i for i in range(len(prompts)) for _ in range(k)]
    if len(comps) != len(order):
        raise EmrlError(f"the generation engine returned {len(comps)} completions for {len(order)} requests")
    comps = [list(c[: (c.index(eos) + 1) if eos in c else L]) for c in comps]
    finished = [bool(c) and c[-1] == eos for c in comps]
    layout = assemble_batch([enc[i] for i in order], comps, pad)
    texts = [tok.decode(c[:-1] if f else c, skip_special_tokens=True) for c, f in zip(comps, finished, strict=True)]
    return Rollout(prompts=[prompts[i] for i in order], texts=texts, group=torch.tensor(order, device="cpu"),
                   input_ids=layout["input_ids"], attention_mask=layout["attention_mask"],
                   completion_mask=layout["completion_mask"], sample_logprobs=None, policy_logprobs=None,
                   completion_lengths=layout["completion_lengths"],
                   finished=torch.tensor(finished, dtype=torch.bool, device="cpu"), prompt_len=layout["prompt_len"])


def check_backend(cfg: Any) -> None:
    """``--generation-backend vllm`` without vLLM installed: say which extra."""
    if getattr(cfg, "generation_backend", "hf") != "vllm":
        return
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("--generation-backend vllm needs vLLM, which is not installed: pip install "
                          "'emrl[vllm]' (GPU machines); or use --generation-backend hf (the default)")
