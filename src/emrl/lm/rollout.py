"""The data of an LM update: training rows in epoch order, sampling, scoring, :class:`Batch`.

:class:`Rollouts` is what the algorithm plug-ins see of the data side of the loop
(through :class:`emrl.lm.context.LoopContext`): this process's share of the next global
batch of rows, demonstrations, teacher-forcing tensors for (prompt, completion) pairs,
``k`` samples per prompt from the current policy in eval mode and their validated
rewards. Its data order (generator, permutation, cursor) is part of every checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from emrl.errors import EmrlError


@dataclass
class Batch:
    """Per-sample tensors (``[N, ...]``) and lists (length ``N``) of one update.

    ``N`` sequences of ``S`` positions (left-padded prompt, completion, right padding;
    :mod:`emrl.lm.forward`), plus per-sample Python lists (``prompts``, ``texts``, ``rows``).
    """

    tensors: dict[str, Tensor] = field(default_factory=dict)
    lists: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.tensors["input_ids"].shape[0])

    def __getitem__(self, key: str) -> Tensor:
        return self.tensors[key]

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def __setitem__(self, key: str, value: Tensor) -> None:
        self.tensors[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self.tensors.get(key, default)

    def select(self, idx: Tensor) -> Batch:
        """The samples ``idx`` (``LongTensor[n]``) of every tensor and list."""
        il = idx.tolist()
        return Batch(
            {k: v[idx] for k, v in self.tensors.items()},
            {k: [v[i] for i in il] for k, v in self.lists.items()},
        )

    def trim_padding(self) -> Batch:
        """The same samples without the columns that are padding in every row.

        Positions come from the attention mask (:func:`emrl.lm.forward.position_ids_from_mask`),
        so the model computes the same values on the columns kept. Per-position tensors
        ``[N, S, ...]`` keep columns ``a:b``; the logits-aligned ones ``[N, S-1, ...]``
        (position ``j`` predicts token ``j + 1``) keep ``a:b-1``.
        """
        am = self.tensors["attention_mask"]
        n, S = am.shape[0], am.shape[1]
        cols = am.bool().any(0).nonzero().squeeze(1)
        if len(cols) == 0:
            return self
        a, b = int(cols[0]), int(cols[-1]) + 1
        if a == 0 and b == S:
            return self
        out = {}
        for k, v in self.tensors.items():
            if v.dim() >= 2 and v.shape[0] == n and v.shape[1] == S:
                v = v[:, a:b]
            elif v.dim() >= 2 and v.shape[0] == n and v.shape[1] == S - 1:
                v = v[:, a:b - 1]
            out[k] = v
        return Batch(out, dict(self.lists))


class Rollouts:
    """Rows, demonstrations, encoding, sampling and scoring for one process.

    Args:
        cfg: the run's config (``batch_size``, ``seed``, ``max_new_tokens``,
            ``generation_backend``, ``logp_chunk_size``).
        task: the :class:`~emrl.lm.task_core.Task`.
        tokenizer / lm: the tokenizer and the bare causal LM (generation).
        policy: the (wrapped) policy module; a sharded one is gathered for generation.
        device, rank, world: where tensors go; this process's share of each batch.
        clock: the loop's update counter (the vLLM engine pushes weights once per update).
    """

    def __init__(self, cfg: Any, task: Any, tokenizer: Any, lm: nn.Module, policy: nn.Module, *,
                 device: Any, rank: int = 0, world: int = 1, clock: Callable[[], int] = lambda: 0) -> None:
        self.cfg, self.task, self.tokenizer, self.lm, self.policy = cfg, task, tokenizer, lm, policy
        self.device, self.rank, self.world, self._clock = device, rank, world, clock
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.perm = torch.randperm(len(task.train), generator=self.data_gen)
        self.cursor = 0
        self.generation_engine: Any = None  # --generation-backend vllm (emrl.lm.vllm_backend)
        self.engine_step: int | None = None

    # what emrl.lm.vllm_backend reads -------------------------------------------------
    @property
    def step(self) -> int:
        return self._clock()

    @property
    def unwrapped(self) -> nn.Module:
        return self.lm

    # data order ------------------------------------------------------------------------
    def next_rows(self, step: int) -> list[dict]:
        """This process's share of the next global batch of training rows (epoch shuffles)."""
        B = self.cfg.batch_size
        idx: list[int] = []
        while len(idx) < B:
            if self.cursor >= len(self.perm):
                self.perm = torch.randperm(len(self.task.train), generator=self.data_gen)
                self.cursor = 0
            take = min(B - len(idx), len(self.perm) - self.cursor)
            idx += self.perm[self.cursor:self.cursor + take].tolist()
            self.cursor += take
        per = B // self.world
        return [self.task.train[i] for i in idx[self.rank * per:(self.rank + 1) * per]]

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.data_gen.get_state(), "perm": self.perm.clone(), "cursor": self.cursor}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.data_gen.set_state(d["gen"])
        self.perm, self.cursor = d["perm"], int(d["cursor"])

    # rows -> tensors -------------------------------------------------------------------
    def demonstration(self, row: dict) -> str:
        comp = row.get("completion")
        if comp is None:
            if row.get("answer") is None:
                raise EmrlError(f"task {self.task.name!r} has no 'completion' (or 'answer') column: "
                                "SFT needs demonstrations")
            comp = str(row["answer"])
        return str(comp)

    def encode(self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[dict]) -> Batch:
        """Teacher-forcing tensors for ``prompt + completion + EOS`` (left-padded).

        Returns a :class:`Batch` with ``input_ids``, ``attention_mask``, ``completion_mask``
        (``[n, S]``; True on completion tokens and EOS).
        """
        from emrl.lm.forward import encode_prompt_completion
        from emrl.lm.models import context_length

        enc = encode_prompt_completion(self.tokenizer, list(prompts), list(completions),
                                       max_length=context_length(self.lm))
        return Batch({"input_ids": enc["input_ids"].to(self.device),
                      "attention_mask": enc["attention_mask"].to(self.device),
                      "completion_mask": enc["completion_mask"].to(self.device)},
                     {"prompts": list(prompts), "texts": list(completions), "rows": list(rows)})

    def score(self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[dict]) -> Tensor:
        """Validated rewards ``[n]`` (the task's verifier or the configured reward functions)."""
        return torch.as_tensor(self.task.reward(list(prompts), list(completions), list(rows)),
                               dtype=torch.float32)

    def sample_and_score(self, rows: Sequence[dict], k: int, *, temperature: float = 1.0,
                         top_p: float = 1.0):
        """``k`` samples per row's prompt from the current policy in eval mode, and rewards."""
        from emrl.lm.generation import generate
        from emrl.lm.sharding import full_params

        lm = self.lm
        was = lm.training
        lm.eval()
        if self.cfg.generation_backend == "vllm":  # emrl.lm.vllm_backend: weights pushed, then sampled
            from emrl.lm.vllm_backend import rollout as engine_rollout

            ro = engine_rollout(self, [r["prompt"] for r in rows], k, temperature=temperature, top_p=top_p)
        else:
            # generation's own log-probs are π_old's (eval mode, temperature 1) and save a
            # teacher-forced pass, but transformers keeps a [b, V] tensor per step for them:
            # kept only while that stays small (else π_old is recomputed, chunked if asked)
            vocab = int(lm.get_output_embeddings().weight.shape[0])
            keep = len(rows) * k * self.cfg.max_new_tokens * vocab * 4 <= 2**28 and \
                self.cfg.logp_chunk_size is None
            with full_params(self.policy):  # a sharded policy is gathered for generation
                ro = generate(lm, self.tokenizer, [r["prompt"] for r in rows], num_samples=k,
                              max_new_tokens=self.cfg.max_new_tokens, temperature=temperature,
                              top_p=top_p, logprobs=keep)
        lm.train(was)
        rows_rep = [r for r in rows for _ in range(k)]
        return ro, self.score(ro.prompts, ro.texts, rows_rep)

    def rollout_batch(self, ro: Any, rewards: Tensor, rows: Sequence[dict], k: int) -> Batch:
        """A :class:`Batch` of scored samples (``k`` per row, contiguous)."""
        rows_rep = [r for r in rows for _ in range(k)]
        # π_old's per-token log-probs come with the samples: generation ran the policy in
        # eval mode at temperature 1 (``policy_logprobs``), so no second pass is needed
        t = {"input_ids": ro.input_ids.to(self.device), "attention_mask": ro.attention_mask.to(self.device),
             "completion_mask": ro.completion_mask.to(self.device).bool(), "rewards": rewards.to(self.device)}
        if getattr(ro, "policy_logprobs", None) is not None:
            t["old_logp"] = ro.policy_logprobs.to(self.device)
        return Batch(t, {"prompts": list(ro.prompts), "texts": list(ro.texts), "rows": rows_rep})
