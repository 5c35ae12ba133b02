"""What an algorithm plug-in may use of the LM loop: :class:`LoopContext`.

The plug-ins (:mod:`emrl.lm.algorithms`) receive this object, never the trainer. It is
the whole interface between an algorithm and its loop:

* ``cfg``, ``device`` — the run's config and where tensors live;
* cross-process helpers — ``gather``, ``gather_padded``, ``local_slice``,
  ``global_count``, ``global_masked_mean`` (:class:`emrl.lm.distributed.Distributed`):
  the E-step normalises over the global batch;
* data — ``next_rows``, ``demonstration``, ``encode``, ``score``, ``sample_and_score``,
  ``rollout_batch`` (:class:`emrl.lm.rollout.Rollouts`);
* forward passes — ``forward`` (the policy; training's own pass, plain or chunked),
  ``forward_frozen`` / ``forward_frozen_logp`` (teacher logits, reference log-probs),
  ``prompt_values``, ``kl_to_reference``, ``old_logits_from_mstep``;
* models — ``reference()`` (π_ref), ``load_frozen`` (a teacher), ``make_value_head``,
  ``unwrapped`` (the bare causal LM);
* ``duals`` — the loop's one dual holder (:class:`emrl.objectives.duals.Duals`: η for
  V-MPO, α for the trust region; ``None`` when the run has neither);
* ``loss_scale`` — set by the M-step (:mod:`emrl.lm.mstep`) before each update's
  minibatches: the factor that turns a minibatch's sum-reduced loss over globally
  normalised weights into a full-batch estimate (and undoes DDP's averaging).

The trainer builds the context in two stages: models first (so a plug-in's ``setup`` can
ask for a reference or a value head), then ``attach`` the wrapped policy and the data.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from emrl import objectives as O
from emrl.errors import ConfigError
from emrl.lm.distributed import Distributed
from emrl.lm.forward import (
    ForwardOut,
    first_index,
    frozen_logits,
    frozen_logp,
    make_value_head,
    policy_forward,
)
from emrl.lm.rollout import Batch, Rollouts


def quiet_mstep(cfg: Any, lm: nn.Module) -> bool:
    """M-step forwards carry no dropout noise (no dropout in the model, or it is off)."""
    from emrl.lm.models import get_dropout

    return not cfg.mstep_dropout or get_dropout(lm) == 0.0


class LoopContext:
    """The plug-ins' view of the loop (see the module docstring)."""

    def __init__(self, cfg: Any, lm: nn.Module, dist: Distributed, device: Any, duals: Any = None) -> None:
        self.cfg, self.lm, self.dist, self.device, self.duals = cfg, lm, dist, device, duals
        self.loss_scale = 1.0
        self.policy: nn.Module | None = None
        self.rollouts: Rollouts | None = None
        self.has_value_head = False
        self._ref: nn.Module | None = None
        self._old_head: tuple | None = None  # π_old's output layer (emrl.lm.chunked)

    def attach(self, policy: nn.Module, rollouts: Rollouts, has_value_head: bool) -> None:
        self.policy, self.rollouts, self.has_value_head = policy, rollouts, has_value_head

    # models ------------------------------------------------------------------------
    @property
    def unwrapped(self) -> nn.Module:
        """The bare causal LM (for generation and saving)."""
        return self.lm

    def load_frozen(self, path: str, *, what: str) -> nn.Module:
        """A frozen model from ``path`` (teacher), in eval mode."""
        from emrl.lm.models import load_model_and_tokenizer

        if not path:
            raise ConfigError(f"no {what} model given")
        m, _ = load_model_and_tokenizer(path, seed=self.cfg.seed)
        m = m.to(self.device).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    def reference(self) -> nn.Module:
        """The frozen reference policy π_ref: a copy of the policy before any update."""
        from emrl.lm.lora import AdaptersDisabled, is_lora

        if self._ref is None and is_lora(self.lm):  # the base weights, adapters off: no copy
            self._ref = AdaptersDisabled(self.lm)
        if self._ref is None:
            self._ref = copy.deepcopy(self.lm).eval()
            for p in self._ref.parameters():
                p.requires_grad_(False)
        return self._ref

    def make_value_head(self) -> nn.Module:
        return make_value_head(int(self.lm.config.hidden_size)).to(self.device)

    # cross-process helpers -----------------------------------------------------------
    def gather(self, x: Tensor) -> Tensor:
        return self.dist.gather(x)

    def gather_padded(self, x: Tensor) -> Tensor:
        return self.dist.gather_padded(x)

    def local_slice(self, x: Tensor, n_local: int) -> Tensor:
        return self.dist.local_slice(x, n_local)

    def global_count(self, n_local: int) -> int:
        return self.dist.global_count(n_local)

    def global_masked_mean(self, x: Tensor, mask: Tensor) -> float:
        return self.dist.global_masked_mean(x, mask)

    # data ---------------------------------------------------------------------------
    def next_rows(self, step: int) -> list[dict]:
        return self.rollouts.next_rows(step)

    def demonstration(self, row: dict) -> str:
        return self.rollouts.demonstration(row)

    def encode(self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[dict]) -> Batch:
        return self.rollouts.encode(prompts, completions, rows)

    def score(self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[dict]) -> Tensor:
        return self.rollouts.score(prompts, completions, rows)

    def sample_and_score(self, rows: Sequence[dict], k: int, *, temperature: float = 1.0, top_p: float = 1.0):
        return self.rollouts.sample_and_score(rows, k, temperature=temperature, top_p=top_p)

    def rollout_batch(self, ro: Any, rewards: Tensor, rows: Sequence[dict], k: int) -> Batch:
        return self.rollouts.rollout_batch(ro, rewards, rows, k)

    # forward passes -------------------------------------------------------------------
    def forward(self, batch: Batch, *, train: bool, need_logits: bool = False,
                need_values: bool = False, grad: bool = True) -> ForwardOut:
        """Teacher-forced pass of the policy (dropout on iff ``train``); see
        :class:`~emrl.lm.forward.ForwardOut`. ``logp_chunk_size``: :mod:`emrl.lm.chunked`."""
        if self.cfg.logp_chunk_size:  # vocabulary-bounded memory
            from emrl.lm import chunked

            return chunked.forward(self, batch, train=train, need_logits=need_logits,
                                   need_values=need_values, grad=grad)
        self.policy.train(train)
        return policy_forward(self.policy, batch, need_logits=need_logits, need_values=need_values, grad=grad)

    def forward_frozen(self, model: nn.Module, batch: Batch) -> Tensor:
        """Logits ``[n, S-1, V]`` of a frozen model (teacher), aligned like ForwardOut.logits."""
        return frozen_logits(model, batch)

    def forward_frozen_logp(self, model: nn.Module, batch: Batch) -> Tensor:
        """``logp[n, S]`` of a frozen model (reference) at completion positions."""
        return frozen_logp(model, batch)

    def prompt_values(self, batch: Batch, values: Tensor | None = None) -> Tensor:
        """V(x): the value before the first completion token, ``[n]``."""
        v = batch["old_values"] if values is None else values
        first = first_index(batch["completion_mask"])
        return v[torch.arange(v.shape[0], device=v.device), first]

    def kl_to_reference(self, mb: Batch, out: ForwardOut) -> Tensor:
        """Sampled per-token KL(π_θ ‖ π_ref) on the batch's tokens (k3 estimator), mean."""
        m = mb["completion_mask"]
        k3 = O.kl_k3(out.logp, mb["ref_logp"])
        return (k3 * m).sum() / m.sum().clamp(min=1)

    def old_logits_from_mstep(self, n_local: int) -> bool:
        """Whether the first M-step forward can serve as π_old's logits for the exact KL.

        True when that forward sees the whole local batch at θ_old with no dropout noise
        (no dropout in the model, or ``mstep_dropout`` off) and no value head: it then
        equals a separate eval-mode pass over the rollouts, which is skipped.
        """
        cfg = self.cfg
        whole = cfg.minibatch_size is None or cfg.minibatch_size >= n_local
        return whole and quiet_mstep(cfg, self.lm) and not self.has_value_head and cfg.logp_chunk_size is None
