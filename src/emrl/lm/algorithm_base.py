"""The base of the LM algorithm plug-ins and the parts the RL ones share.

:class:`Algorithm` is the protocol (see :mod:`emrl.lm.algorithms`); :class:`_RL` holds
rollout collection, π_old/π_ref log-probs, advantages and the weighted-NLL M-step loss of
V-MPO, AWR and DAR (PPO replaces the loss). Every plug-in sees its loop only through a
:class:`~emrl.lm.context.LoopContext` (``ctx``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from emrl import objectives as O
from emrl.errors import ConfigError
from emrl.lm.rollout import Batch

if TYPE_CHECKING:  # pragma: no cover
    from emrl.lm.context import LoopContext
    from emrl.lm.forward import ForwardOut


# ----------------------------------------------------------------------------------
# base class
# ----------------------------------------------------------------------------------
class Algorithm:
    """Base of the plug-ins; see the module docstring for the protocol."""

    name = "base"
    #: the loop adds the α trust region (spec §5 eq. 1) when the config asks for it.
    uses_trust_region = False
    #: the M-step only needs samples with a non-zero E-step weight.
    skip_zero_weight = False
    #: the forward pass must return logits / hidden-state values.
    needs_logits = False
    #: the loop's dual holder carries a temperature η for this plug-in (V-MPO).
    learns_temperature = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    # parameters outside the policy (temperature/value head) -----------------------
    def setup(self, ctx: LoopContext) -> None:
        """Create extra parameters (duals, value head) once the model exists."""

    def value_head(self) -> nn.Module | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # the protocol ----------------------------------------------------------------
    def collect(self, ctx: LoopContext, step: int) -> Batch:
        raise NotImplementedError

    def estep(self, ctx: LoopContext, batch: Batch) -> dict[str, float]:
        raise NotImplementedError

    def loss(self, ctx: LoopContext, mb: Batch, out: ForwardOut) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def stop_epochs(self, ctx: LoopContext, metrics: dict[str, float]) -> bool:
        """Return True to end the M-step epochs of this update early (PPO's KL stop)."""
        return False


def _nll_loss(ctx: LoopContext, mb: Batch, out: ForwardOut) -> tuple[Tensor, dict[str, float]]:
    """The shared M-step: weighted NLL of the batch's completion tokens (spec §6).

    ``mb["weights"]`` is ``[n]`` (per sequence) or ``[n, S]`` (per token), normalised over
    the global batch; ``ctx.loss_scale`` turns the minibatch's share of the sum into
    a full-batch estimate.
    """
    loss, _ = O.weighted_nll(out.logp, mb["completion_mask"], mb["weights"], reduction="sum")
    loss = loss * ctx.loss_scale
    return loss, {"loss/policy": float(loss.detach())}



# ----------------------------------------------------------------------------------
# RL: shared rollout collection and advantages
# ----------------------------------------------------------------------------------
class _RL(Algorithm):
    """Shared parts of the RL plug-ins: rollouts, rewards, advantages (spec §6)."""

    uses_trust_region = True
    needs_ref = False

    def setup(self, ctx: LoopContext) -> None:
        cfg = self.cfg
        self._value: nn.Module | None = None
        if cfg.baseline == "value" or (self.name == "ppo" and cfg.ppo_level == "token"):
            self._value = ctx.make_value_head()
        self.ref = ctx.reference() if self.needs_ref else None

    def value_head(self) -> nn.Module | None:
        return self._value

    def collect(self, ctx: LoopContext, step: int) -> Batch:
        rows = ctx.next_rows(step)
        k = self.cfg.num_samples
        ro, rewards = ctx.sample_and_score(rows, k, temperature=self.cfg.temperature,
                                                top_p=self.cfg.top_p)
        return self.finish_batch(ctx, ctx.rollout_batch(ro, rewards, rows, k))

    def finish_batch(self, ctx: LoopContext, batch: Batch) -> Batch:
        """Add π_old's log-probs (and logits for the exact KL, values for a value head) and
        π_ref's log-probs to a batch of scored completions (eval mode, no gradient)."""
        want_logits = self.uses_trust_region and ctx.cfg.trust_region and \
            ctx.cfg.kl_estimator == "exact" and not ctx.old_logits_from_mstep(len(batch))
        want_values = self._value is not None
        # π_old's log-probs usually come from generation (``rollout_batch``); a teacher-forced
        # pass is needed only for π_old's logits (exact KL, when the first M-step forward
        # cannot provide them) or the value head's V(s)
        if want_logits or want_values or "old_logp" not in batch:
            with torch.no_grad():
                old = ctx.forward(batch, train=False, need_logits=want_logits,
                                      need_values=want_values, grad=False)
            batch["old_logp"] = old.logp
            if old.logits is not None:
                batch["old_logits"] = old.logits
            if old.values is not None:
                batch["old_values"] = old.values
                if self.cfg.baseline == "value":
                    batch["old_prompt_values"] = ctx.prompt_values(batch, old.values)
        if self.ref is not None:
            batch["ref_logp"] = ctx.forward_frozen_logp(self.ref, batch)
        return batch

    def advantages(self, ctx: LoopContext, batch: Batch) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Global sequence advantages ``A[N_global]`` and global rewards (spec §6: A = r − b)."""
        cfg = self.cfg
        rewards = ctx.gather(batch["rewards"])
        k = cfg.num_samples
        if cfg.baseline in ("group_mean", "loo"):
            if k < 2:
                raise ConfigError(
                    f"baseline={cfg.baseline} needs num_samples >= 2: a group of one sample has "
                    "no other sample to compare with, so every advantage would be 0")
            adv = O.group_advantages(rewards, k, mode="mean" if cfg.baseline == "group_mean" else "loo")
        elif cfg.baseline == "batch_mean":
            adv = rewards - rewards.mean()
        else:  # learned V(x): value at the last prompt token of the old forward
            adv = rewards - ctx.gather(batch["old_prompt_values"])
        if cfg.normalize_advantages:
            adv = O.normalize_advantages(adv)
        metrics = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "adv/abs_mean": float(adv.abs().mean()),
        }
        return adv, rewards, metrics

    def _set_weights(self, ctx: LoopContext, batch: Batch, w_global: Tensor,
                     adv: Tensor | None = None) -> dict[str, float]:
        """Store this process's slice of the global weights (per sequence or per token).

        Returns diagnostics of the target against the advantages ``adv`` (global): the
        E-step's weight on samples that are no better than their baseline (``A <= 0``) and
        the fraction of samples that are. An all-zero target marks the update a no-op
        (``target_empty``: the M-step is skipped).
        """
        metrics: dict[str, float] = {}
        total = float(w_global.sum())
        self.target_empty = not total > 0.0
        if adv is not None:
            nonpos = adv <= 0
            metrics["estep/weight_nonpositive"] = float(w_global[nonpos].sum()) / total if total > 0 else 0.0
            metrics["estep/positive_fraction"] = float((~nonpos).float().mean())
        metrics["estep/empty"] = float(self.target_empty)
        w = ctx.local_slice(w_global, len(batch))
        if self.cfg.weight_level == "token":
            # per-token weights: the sequence's mass spread evenly over its tokens, so each
            # selected sequence contributes its mean token log-likelihood (spec §6 "Token-Level Form").
            m = batch["completion_mask"].float()
            w = w[:, None] * m / m.sum(1, keepdim=True).clamp(min=1.0)
        batch["weights"] = w
        return metrics

    def loss(self, ctx: LoopContext, mb: Batch, out: ForwardOut) -> tuple[Tensor, dict[str, float]]:
        loss, metrics = _nll_loss(ctx, mb, out)
        if self._value is not None and self.cfg.baseline == "value":
            vl, _ = O.value_loss(ctx.prompt_values(mb, out.values), mb["old_prompt_values"], mb["rewards"])
            loss = loss + self.cfg.vf_coef * vl
            metrics["loss/value"] = float(vl.detach())
        if self.cfg.kl_ref_coef > 0:
            kl_ref = ctx.kl_to_reference(mb, out)
            loss = loss + self.cfg.kl_ref_coef * kl_ref
            metrics["mstep/kl_ref"] = float(kl_ref.detach())
        return loss, metrics


