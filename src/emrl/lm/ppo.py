"""PPO as an LM plug-in (spec §4): the policy-gradient contrast in the same loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from emrl import objectives as O
from emrl.lm.algorithm_base import _RL
from emrl.lm.rollout import Batch

if TYPE_CHECKING:  # pragma: no cover
    from emrl.lm.context import LoopContext
    from emrl.lm.forward import ForwardOut


# ----------------------------------------------------------------------------------
# PPO
# ----------------------------------------------------------------------------------
class PPO(_RL):
    """PPO (spec §4), the policy-gradient contrast in the same loop.

    ``ppo_level="token"``: a value head over the policy's hidden states, per-token rewards
    ``-kl_coef (log π_old - log π_ref)`` plus the sequence reward on the last token, GAE(γ, λ)
    over completion tokens, normalised advantages, clipped surrogate + clipped value loss
    − entropy bonus. ``ppo_level="sequence"``: sequence-level ratio with group (or batch)
    advantages (spec §4 "Sequence-Level PPO"). Epochs stop early once the approximate KL
    exceeds ``target_kl``.
    """

    name = "ppo"
    uses_trust_region = False

    def setup(self, ctx: LoopContext) -> None:
        self.needs_ref = self.cfg.kl_coef > 0 and self.cfg.ppo_level == "token"
        super().setup(ctx)
        self.needs_logits = self.cfg.ent_coef > 0

    def estep(self, ctx: LoopContext, batch: Batch) -> dict[str, float]:
        cfg = self.cfg
        n = len(batch)
        if cfg.ppo_level == "sequence":
            adv, _, metrics = self.advantages(ctx, batch)
            batch["advantages"] = ctx.local_slice(adv, n)
            return metrics
        rewards_g = ctx.gather(batch["rewards"])
        metrics = {"reward/mean": float(rewards_g.mean()),
                   "reward/std": float(rewards_g.std()) if rewards_g.numel() > 1 else 0.0}
        mask = batch["completion_mask"]
        S = mask.shape[1]
        # token rewards on completion positions: KL penalty to the reference + final reward
        r_tok = torch.zeros_like(batch["old_logp"])
        if self.ref is not None:
            kl_tok = (batch["old_logp"] - batch["ref_logp"]) * mask
            r_tok = r_tok - cfg.kl_coef * kl_tok
            metrics["mstep/kl_ref"] = float(ctx.global_masked_mean(kl_tok, mask))
        last = _last_index(mask)
        r_tok[torch.arange(n, device=mask.device), last] += batch["rewards"]
        values = batch["old_values"] * mask
        # time-major [S, n] over positions; positions outside the completion are masked:
        # "terminated" at the last completion token (no bootstrap) and at every masked
        # position so nothing is carried across them.
        pos = torch.arange(S, device=mask.device)[None, :]
        terminated = (pos == last[:, None]) | ~mask
        next_values = torch.cat([values[:, 1:], values.new_zeros(n, 1)], dim=1)
        adv, ret = O.gae(r_tok.T, values.T, next_values.T, terminated.T, terminated.T,
                         cfg.gamma, cfg.gae_lambda)
        adv, ret = adv.T * mask, ret.T * mask
        batch["returns"] = ret
        adv_g, mask_g = ctx.gather_padded(adv), ctx.gather_padded(mask)
        adv_n = O.normalize_advantages(adv_g, mask_g)
        batch["advantages"] = ctx.local_slice(adv_n, n)[:, :S] * mask
        metrics["adv/abs_mean"] = float((adv_g.abs() * mask_g).sum() / mask_g.sum().clamp(min=1))
        return metrics

    def loss(self, ctx: LoopContext, mb: Batch, out: ForwardOut) -> tuple[Tensor, dict[str, float]]:
        cfg = self.cfg
        mask = mb["completion_mask"]
        loss, info = O.ppo_clip_loss(out.logp, mb["old_logp"], mb["advantages"], mask, cfg.clip_eps,
                                     level=cfg.ppo_level)
        metrics = {"loss/policy": float(loss.detach()), "ppo/clip_fraction": float(info.clip_fraction),
                   "ppo/approx_kl": float(info.approx_kl)}
        if cfg.ppo_level == "token":
            vl, _ = O.value_loss(out.values, mb["old_values"], mb["returns"], clip=cfg.vf_clip, mask=mask)
            loss = loss + cfg.vf_coef * vl
            metrics["loss/value"] = float(vl.detach())
        if cfg.ent_coef > 0 and out.logits is not None:
            m1 = mask[:, 1:]
            ent = O.entropy_from_logits(out.logits, mask=m1).sum() / m1.sum().clamp(min=1)
            loss = loss - cfg.ent_coef * ent
            metrics["policy/entropy"] = float(ent.detach())
        return loss, metrics

    def stop_epochs(self, ctx: LoopContext, metrics: dict[str, float]) -> bool:
        tk = self.cfg.target_kl
        return tk is not None and metrics.get("ppo/approx_kl", 0.0) > tk


def _last_index(mask: Tensor) -> Tensor:
    """Index of the last True position of each row of ``mask[N, S]`` (0 for an empty row)."""
    S = mask.shape[1]
    pos = torch.arange(S, device=mask.device).expand_as(mask)
    return torch.where(mask, pos, torch.full_like(pos, -1)).max(1).values.clamp(min=0)


