"""The M-step of one LM update and the trust-region settling (spec §5 eq. 1, §6).

EM algorithms with the trust region: gradient steps on ``L_π + sg[α]·KL(π_old‖π_θ)``
over up to ``epochs`` passes, ended early once the measured KL reaches ``ε_α``
(``kl_early_stop``: the KL budget, not the learning rate, sets the step); then the
realised KL over the whole batch is measured, an update that overshot
``kl_backtrack × ε_α`` is scaled back towards θ_old (halving), and the dual α takes one
step on ``α(ε_α − sg[KL_realised])`` (``dual_schedule="update"``) or one per gradient
step (``"minibatch"``, spec eq. 1 literally). PPO plugs its clipped ratio loss into the
same loop without the trust region. A non-finite loss or gradient skips that step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from emrl import objectives as O
from emrl.errors import EmrlError
from emrl.lm.context import LoopContext, quiet_mstep
from emrl.lm.forward import ForwardOut
from emrl.lm.rollout import Batch
from emrl.metrics import trust_region_metrics


class MStep:
    """Runs the M-step of an update over the plug-in's loss (see the module docstring).

    Holds what persists across updates besides the duals (``ctx.duals``, the loop's
    :class:`~emrl.objectives.duals.Duals`): the learning-rate scale of ``kl_adapt_lr`` and
    the count of non-finite steps in a row.
    """

    def __init__(self, cfg: Any, ctx: LoopContext, optimizer: Any, accelerator: Any) -> None:
        self.cfg, self.ctx, self.optimizer, self.accelerator = cfg, ctx, optimizer, accelerator
        self.duals = ctx.duals
        self.lr_scale = 1.0  # the M-step's step-size adaptation (kl_adapt_lr), persisted
        self.nonfinite_in_a_row = 0

    # ------------------------------------------------------------------ KL(π_old ‖ π_θ)
    def kl_old(self, mb: Batch, out: ForwardOut) -> Tensor:
        """Mean per-token KL(π_old ‖ π_θ) over the minibatch's completion tokens (spec §5)."""
        m = mb["completion_mask"]
        if getattr(out, "kl_old", None) is not None:  # computed in chunks (emrl.lm.chunked)
            return out.kl_old
        if self.cfg.kl_estimator == "exact" and "old_logits" in mb:
            kl = O.categorical_kl(mb["old_logits"], out.logits, mask=m[:, 1:], chunk_size=self.cfg.kl_chunk_size)
            return kl.sum() / m[:, 1:].sum().clamp(min=1)
        k3 = O.kl_k3(mb["old_logp"], out.logp)
        return (k3 * m).sum() / m.sum().clamp(min=1)

    def realised_kl(self, batch: Batch) -> float:
        """KL(π_old ‖ π_θ) per token over the whole (global) batch, eval mode, no gradient."""
        with torch.no_grad():
            # (the chunked path computes its KL to π_old's snapshot only on an M-step pass,
            # grad=True, which the surrounding no_grad keeps free of a graph)
            out = self.ctx.forward(batch, train=False, need_logits="old_logits" in batch,
                                   grad=bool(self.cfg.logp_chunk_size))
            kl = self.kl_old(batch, out)  # exact, chunked or k3, as in the M-step
            c = batch["completion_mask"][:, 1:].sum()
            tot = self.ctx.dist.sum(torch.stack([(kl * c).float(), c.float()]))
            return float(tot[0] / tot[1].clamp(min=1))

    def scale_lr(self, factor: float) -> None:
        """Multiply the M-step's learning rate by ``factor`` now and for later updates
        (``kl_adapt_lr``: the learning rate follows the KL budget, within [1e-3, 1e3]x)."""
        new = min(1e3, max(1e-3, self.lr_scale * factor))
        for g in self.optimizer.param_groups:
            g["lr"] *= new / self.lr_scale
        self.lr_scale = new

    # ------------------------------------------------------------------ one M-step
    def run(self, batch: Batch, algo: Any, eps: float) -> dict[str, float]:
        """The M-step of one update with KL budget ``eps`` (see the module docstring).

        Returns its metrics (means over gradient steps) and ``_tokens`` (tokens seen).
        """
        cfg, ctx, acc = self.cfg, self.ctx, self.accelerator
        world = ctx.dist.world
        n = len(batch)
        idx = torch.arange(n)
        trust = algo.uses_trust_region and cfg.trust_region and "old_logp" in batch
        if getattr(algo, "target_empty", False):
            # nothing to fit (e.g. no sample beat its baseline): a no-op update, not an
            # Adam step on a zero gradient (momentum would still move the weights)
            return {"mstep/skipped": 1.0, "mstep/sequences": 0.0, "mstep/grad_steps": 0.0,
                    "mstep/kl": 0.0, "_tokens": 0.0}
        # Samples with zero E-step weight add nothing to the weighted NLL; they are still
        # needed where the M-step looks at every state of π_old: the trust region's
        # E_s KL(π_old‖π_θ) over all states (``trust_region_states="all"``, spec §5), a value
        # baseline, and DDP (equal work per process). With ``"selected"`` the trust region is
        # taken over the states of the selected samples, where the M-step moves the policy.
        kl_all = trust and cfg.trust_region_states == "all"
        if algo.skip_zero_weight and not kl_all and world == 1 and getattr(cfg, "baseline", "") != "value":
            keep = (batch["weights"].reshape(n, -1) > 0).any(1)
            idx = idx[keep.cpu()]
        mb_size = cfg.minibatch_size or max(1, len(idx))
        n_mb = max(1, math.ceil(len(idx) / mb_size))
        # sum-reduced losses over normalised weights: rescale a minibatch to a full-batch
        # estimate, and undo DDP's averaging over processes
        ctx.loss_scale = float(n_mb * world)
        exact = trust and cfg.kl_estimator == "exact"
        old_from_first = exact and "old_logits" not in batch and cfg.logp_chunk_size is None \
            and ctx.old_logits_from_mstep(n)  # see LoopContext.old_logits_from_mstep
        need_logits = algo.needs_logits or exact
        need_values = algo.value_head() is not None
        per_step_dual = trust and cfg.dual_schedule == "minibatch"
        params = [p for p in ctx.policy.parameters() if p.requires_grad]
        theta0 = [p.detach().clone() for p in params] if trust and cfg.kl_backtrack else None
        # a full-batch pass without dropout noise measures the realised KL itself
        whole_quiet = n_mb == 1 and world == 1 and quiet_mstep(cfg, ctx.lm)
        if len(idx) < n:  # the M-step (and its KL) sees the selected samples only,
            batch = batch.select(idx).trim_padding()  # and no column that is padding in all of them
            idx = torch.arange(len(idx))
            n = len(idx)
        kl_final: float | None = None
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        first, tokens, skipped, steps, stop, kl_stop = True, 0, 0, 0, False, False
        for _epoch in range(cfg.epochs):
            order = idx[torch.randperm(len(idx))] if n_mb > 1 else idx
            for j in range(n_mb):
                mb = batch.select(order[j * mb_size:(j + 1) * mb_size])
                out = ctx.forward(mb, train=cfg.mstep_dropout, need_logits=need_logits, need_values=need_values)
                if old_from_first and first:
                    # θ = θ_old, no dropout noise, the whole batch: these are π_old's logits
                    batch["old_logits"] = mb["old_logits"] = out.logits.detach()
                elif old_from_first:
                    mb["old_logits"] = batch["old_logits"]
                m: dict[str, float] = {}
                if first and "old_logp" in mb:
                    # what the PPO ratio sees before any parameter change: with dropout on
                    # in the M-step this is the dropout noise alone (spec §9)
                    _, info = O.ppo_clip_loss(out.logp.detach(), mb["old_logp"],
                                              torch.zeros(len(mb), device=out.logp.device), mb["completion_mask"],
                                              getattr(cfg, "clip_eps", 0.2))
                    m["ppo/ratio_std"] = float(info.ratio_std)
                    m["ppo/ratio_mean_first"] = float(info.ratio_mean)
                first = False
                kl = self.kl_old(mb, out) if trust else None
                if trust and cfg.kl_early_stop and steps > 0 and float(kl.detach()) >= eps:
                    kl_stop = stop = True  # the budget is spent: this θ is the M-step's result
                    if whole_quiet:  # this pass saw the whole batch at the final θ, no noise
                        kl_final = float(kl.detach())
                    break
                if trust and cfg.kl_adapt_lr and steps > 0 and float(kl.detach()) < eps / 4:
                    self.scale_lr(2.0)  # far from the budget: larger steps
                loss, m_algo = algo.loss(ctx, mb, out)
                m.update(m_algo)
                if per_step_dual:  # spec eq. (1) as written: α(ε − sg[KL]) + sg[α]·KL
                    la, ainfo = self.duals.alpha_loss(kl, eps)
                    loss = loss + la
                    m["loss/alpha"] = float(ainfo.loss_alpha)
                elif trust:  # the policy's half of eq. (1); α steps once per update
                    loss = loss + self.duals.kl_penalty(kl)
                elif "old_logp" in mb:
                    with torch.no_grad():
                        m["mstep/kl"] = float(self.kl_old(mb, out))
                ok = bool(torch.isfinite(loss.detach()))
                if ok:
                    self._zero_grad()
                    acc.backward(loss)
                    if cfg.max_grad_norm > 0:
                        gn = acc.clip_grad_norm_(ctx.policy.parameters(), cfg.max_grad_norm)
                    else:
                        gn = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in ctx.policy.parameters()
                                            if p.grad is not None))
                    ok = bool(torch.isfinite(torch.as_tensor(gn)))
                    m["mstep/grad_norm"] = float(gn)
                if not ok:
                    self._zero_grad()
                    skipped += 1
                    self._count_nonfinite()
                    continue
                self.nonfinite_in_a_row = 0
                self.optimizer.step()
                if per_step_dual:  # α's gradient is this process's: averaged over processes
                    self.duals.optimizer_step(ctx.dist.mean if world > 1 else None)
                steps += 1
                tokens += int(mb["attention_mask"].sum())
                for k, v in m.items():
                    if math.isfinite(v):
                        sums[k] = sums.get(k, 0.0) + v
                        counts[k] = counts.get(k, 0) + 1
                if algo.stop_epochs(ctx, m):
                    stop = True
                    break
            if stop:
                break
        out_m = {k: sums[k] / counts[k] for k in sums}
        if trust:
            out_m.update(self.settle_trust_region(batch, params, theta0, eps, kl_final))
            if kl_stop:
                out_m["mstep/kl_early_stop"] = 1.0
        out_m["mstep/grad_steps"] = float(steps)
        out_m["mstep/nonfinite_skipped"] = float(skipped)
        out_m["mstep/sequences"] = float(len(idx))
        out_m["_tokens"] = float(tokens)
        if stop and not kl_stop:
            out_m["ppo/early_stop"] = 1.0
        return out_m

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.duals is not None:
            self.duals.zero_grad()

    def _count_nonfinite(self) -> None:
        self.nonfinite_in_a_row += 1
        cap = self.cfg.max_nonfinite_steps
        if self.nonfinite_in_a_row >= cap:
            raise EmrlError(
                f"{self.nonfinite_in_a_row} M-step gradient steps in a row had a non-finite "
                f"loss or gradient (max_nonfinite_steps={cap}); stopping. "
                "The last checkpoint was written before this and holds finite weights; try a "
                "lower learning_rate")

    # ------------------------------------------------------------------ trust region
    def settle_trust_region(self, batch: Batch, params: list[Tensor], theta0: list[Tensor] | None,
                            eps: float, kl: float | None = None) -> dict[str, float]:
        """Measure the update's realised KL (unless the M-step's last pass did), scale back an
        overshoot, step the dual α."""
        cfg = self.cfg
        if kl is None:
            kl = self.realised_kl(batch)
        out = {"mstep/kl_before_backtrack": kl}
        scale = 1.0
        if theta0 is not None and kl > cfg.kl_backtrack * eps:
            theta1 = [p.detach().clone() for p in params]
            for _ in range(10):
                scale *= 0.5
                with torch.no_grad():
                    for p, a, b in zip(params, theta0, theta1, strict=True):
                        p.copy_(a + scale * (b - a))
                kl = self.realised_kl(batch)
                if kl <= cfg.kl_backtrack * eps:
                    break
            else:  # still over budget at 1/1024 of the step: keep θ_old
                with torch.no_grad():
                    for p, a in zip(params, theta0, strict=True):
                        p.copy_(a)
                scale, kl = 0.0, 0.0
        if cfg.kl_adapt_lr and scale < 1.0:
            self.scale_lr(max(scale, 1e-2))  # the steps overshot: smaller ones next time
        if cfg.dual_schedule == "update":
            # the dual sees what the gradient steps did (before any backtracking): α rises
            # while the M-step pushes past ε_α, so the next M-step's sg[α]·KL holds it back
            ainfo = self.duals.update_alpha(out["mstep/kl_before_backtrack"], eps)
            out["loss/alpha"] = float(ainfo.loss_alpha)
        out.update(trust_region_metrics(kl, self.duals.get("alpha"), eps))
        out.update({"mstep/lr_scale": self.lr_scale, "mstep/backtrack_scale": scale})
        return out
