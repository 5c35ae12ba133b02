"""Algorithm plug-ins of the one LM training loop (:mod:`emrl.lm.trainer`).

Every algorithm answers the same three questions for the loop, and all of its maths
comes from :mod:`emrl.objectives`:

``collect(ctx, step) -> Batch``
    The data of one update. SFT: demonstrations (and, for n-best, samples of the model);
    RL: ``k`` completions per prompt sampled from the current policy in eval mode
    (π_old), their rewards, π_old's per-token log-probs (and logits for the exact KL),
    and the reference policy's log-probs where the algorithm needs them.
``estep(ctx, batch) -> metrics``
    The E-step: the target the M-step fits (spec §3 "EM Iterations"). SFT: a δ on the
    demonstration, label smoothing, n-best weights or a teacher's distribution (spec §6
    "E-step / M-step for SFT"); V-MPO: top-k weights with the adaptive temperature dual
    (spec §6 "Full Adaptive EM Procedure"); AWR: fixed-temperature weights; DAR: the
    closed-form reference/sampling-policy weights (spec §7); PPO: GAE or group
    advantages (spec §4). Everything normalised over the **global** batch (all
    processes), so a distributed run computes what one process would.
``loss(ctx, mb, out) -> (loss, metrics)``
    The M-step loss of one minibatch given the current policy's forward pass ``out``.
    SFT and the EM algorithms share :func:`emrl.objectives.weighted_nll` (or its soft
    target form); PPO plugs its clipped ratio loss into the same place. The α trust
    region on KL(π_old ‖ π_θ) (spec §5 eq. 1) is added by the loop for EM algorithms.

``ctx`` is a :class:`~emrl.lm.context.LoopContext`: all a plug-in may use of its loop
(cross-process helpers, data and sampling, forward passes, reference/teacher models,
``loss_scale``); no plug-in imports the trainer. A :class:`~emrl.lm.rollout.Batch` holds
per-sample tensors with the sample dimension first (``N`` sequences of ``S`` positions:
left-padded prompt, completion, right padding) plus a few per-sample Python lists;
``Batch.select`` takes minibatches. The base class and the shared RL parts live in
:mod:`emrl.lm.algorithm_base`, PPO in :mod:`emrl.lm.ppo`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from emrl import objectives as O
from emrl.errors import ConfigError
from emrl.lm.algorithm_base import _RL, Algorithm, _nll_loss
from emrl.lm.ppo import PPO
from emrl.lm.rollout import Batch
from emrl.metrics import estep_metrics

if TYPE_CHECKING:  # pragma: no cover
    from emrl.lm.context import LoopContext
    from emrl.lm.forward import ForwardOut


# ----------------------------------------------------------------------------------
# SFT
# ----------------------------------------------------------------------------------
class SFT(Algorithm):
    """Supervised fine-tuning as an EM M-step with an SFT E-step target (spec §6).

    * ``delta``: q(τ|x) = δ(τ = y) on the demonstration (spec §6 eq. 2);
    * ``label_smoothing``: q = (1 − ε) δ_y + ε·uniform per token;
    * ``nbest``: ``nbest_n`` samples of the current model plus the demonstration per
      prompt, weighted by ``softmax(reward / nbest_temperature)`` within the prompt;
    * ``distill``: q(·|s_t) = the teacher's token distribution (forward KL to the teacher).

    Every target is fitted by the same weighted-NLL M-step (:func:`O.weighted_nll`, via
    :func:`O.soft_target_nll` for the token-level targets).
    """

    name = "sft"
    needs_logits = True

    def setup(self, ctx: LoopContext) -> None:
        self.teacher = None
        self.needs_logits = self.cfg.target != "nbest"
        if self.cfg.target == "distill":
            self.teacher = ctx.load_frozen(self.cfg.teacher, what="teacher")
            tv = self.teacher.get_output_embeddings().weight.shape[0]
            sv = ctx.unwrapped.get_output_embeddings().weight.shape[0]
            if tv != sv:
                raise ConfigError(
                    f"teacher {self.cfg.teacher!r} has a vocabulary of {tv} tokens but the student "
                    f"has {sv}; distillation needs the same tokenizer")

    def collect(self, ctx: LoopContext, step: int) -> Batch:
        rows = ctx.next_rows(step)
        demos = [ctx.demonstration(r) for r in rows]
        if self.cfg.target != "nbest":
            return ctx.encode([r["prompt"] for r in rows], demos, rows)
        # n-best: n samples of the current model per prompt plus the demonstration,
        # scored by the task's reward (spec §6: n-best targets keep the EM structure).
        n = self.cfg.nbest_n
        ro, rewards = ctx.sample_and_score(rows, n, temperature=1.0)
        demo_rewards = ctx.score([r["prompt"] for r in rows], demos, rows)
        prompts, texts, out_rows, rw = [], [], [], []
        for g, row in enumerate(rows):
            for j in range(n):
                prompts.append(row["prompt"])
                texts.append(ro.texts[g * n + j])
                out_rows.append(row)
                rw.append(float(rewards[g * n + j]))
            prompts.append(row["prompt"])
            texts.append(demos[g])
            out_rows.append(row)
            rw.append(float(demo_rewards[g]))
        batch = ctx.encode(prompts, texts, out_rows)
        batch["rewards"] = torch.tensor(rw, dtype=torch.float32, device=batch["input_ids"].device)
        return batch

    def estep(self, ctx: LoopContext, batch: Batch) -> dict[str, float]:
        n_local = len(batch)
        metrics: dict[str, float] = {}
        if self.cfg.target == "nbest":
            rewards = ctx.gather(batch["rewards"])
            w, info = O.nbest_weights(rewards, group_size=self.cfg.nbest_n + 1,
                                      temperature=self.cfg.nbest_temperature)
            w = w / w.sum()  # each prompt's candidates sum to 1; every prompt gets equal mass
            batch["weights"] = ctx.local_slice(w, n_local)
            metrics["reward/mean"] = float(rewards.mean())
            metrics["reward/std"] = float(rewards.std()) if rewards.numel() > 1 else 0.0
            metrics["estep/ess"] = float(info.ess.float().mean())
            return metrics
        # δ / label-smoothing / distillation: one unit of mass per demonstration, normalised
        # over the global batch; the token-level target itself is built per minibatch.
        batch["weights"] = torch.full((n_local,), 1.0 / ctx.global_count(n_local),
                                      device=batch["input_ids"].device)
        if self.cfg.target == "distill":
            batch["teacher_logits"] = ctx.forward_frozen(self.teacher, batch)
        return metrics

    def target(self, mb: Batch) -> O.SoftTarget:
        """The token-level E-step target of a minibatch (aligned with ``out.logits``)."""
        labels = mb["input_ids"][:, 1:]
        mask = mb["completion_mask"][:, 1:]
        if self.cfg.target == "delta":
            return O.delta_target(labels, mask)
        if self.cfg.target == "label_smoothing":
            return O.label_smoothing_target(labels, self.cfg.label_smoothing, mask)
        return O.distillation_target(mb["teacher_logits"], self.cfg.distill_temperature, mask)

    def loss(self, ctx: LoopContext, mb: Batch, out: ForwardOut) -> tuple[Tensor, dict[str, float]]:
        if self.cfg.target == "nbest" or out.logits is None:  # no logits: delta target in chunks
            return _nll_loss(ctx, mb, out)
        loss, _ = O.soft_target_nll(out.logits, self.target(mb), weights=mb["weights"], reduction="sum")
        loss = loss * ctx.loss_scale
        return loss, {"loss/policy": float(loss.detach())}



# ----------------------------------------------------------------------------------
# V-MPO
# ----------------------------------------------------------------------------------
class VMPO(_RL):
    """Sequence-level V-MPO (spec §6 "Full Adaptive EM Procedure").

    E-step: η_det = sg[η(ξ)], top-k by A/η_det with k = max(1, ⌊ρN⌋), weights by the
    stable log-sum-exp softmax; the temperature dual L_η = η(ε_η + g(η)) takes one step
    of the loop's dual holder (:class:`emrl.objectives.duals.Duals`, shared with α and
    with the control V-MPO) per update (``adaptive_temperature``), or η stays fixed.
    M-step: weighted NLL of the selected samples under the α trust region.
    """

    name = "vmpo"
    skip_zero_weight = True

    @property
    def learns_temperature(self) -> bool:
        return bool(self.cfg.adaptive_temperature)

    def setup(self, ctx: LoopContext) -> None:
        super().setup(ctx)
        self.needs_ref = self.cfg.kl_ref_coef > 0
        if self.needs_ref:
            self.ref = ctx.reference()
        self.duals = ctx.duals  # η lives in the loop's one dual holder (emrl.objectives.duals)

    def eta(self) -> float:
        return self.duals.eta if self.cfg.adaptive_temperature else float(self.cfg.eta_init)

    def estep(self, ctx: LoopContext, batch: Batch) -> dict[str, float]:
        adv, _, metrics = self.advantages(ctx, batch)
        cfg = self.cfg
        if cfg.adaptive_temperature:
            # weights at the current η, then one step of L_η = η(ε_η + g(η)) — once per batch
            # of rollouts under either dual schedule (the LM E-step is per batch)
            w, loss_eta, info = self.duals.update_temperature(adv, cfg.eps_eta, cfg.top_fraction,
                                                              min_advantage=cfg.min_advantage)
            metrics["loss/temperature"] = float(loss_eta)
        else:
            w, info = O.vmpo_weights(adv, float(cfg.eta_init), top_fraction=cfg.top_fraction,
                                     min_advantage=cfg.min_advantage)
        metrics.update(estep_metrics(info))
        metrics["estep/eta"] = float(info.eta)
        metrics["estep/eta_next"] = self.eta()
        metrics.update(self._set_weights(ctx, batch, w, adv))
        return metrics


# ----------------------------------------------------------------------------------
# AWR
# ----------------------------------------------------------------------------------
class AWR(_RL):
    """AWR (spec §7 "Advantage Weighted Regression"): all samples, w ∝ exp(A/τ) at a fixed
    temperature with max-weight clipping, normalised over the global batch."""

    name = "awr"

    def setup(self, ctx: LoopContext) -> None:
        super().setup(ctx)
        self.needs_ref = self.cfg.kl_ref_coef > 0
        if self.needs_ref:
            self.ref = ctx.reference()

    def estep(self, ctx: LoopContext, batch: Batch) -> dict[str, float]:
        adv, _, metrics = self.advantages(ctx, batch)
        w, info = O.awr_weights(adv, self.cfg.awr_temperature, max_weight=self.cfg.awr_max_weight)
        metrics.update(estep_metrics(info))
        metrics["estep/eta"] = float(self.cfg.awr_temperature)
        metrics.update(self._set_weights(ctx, batch, w, adv))
        return metrics


# ----------------------------------------------------------------------------------
# DAR
# ----------------------------------------------------------------------------------
class DAR(_RL):
    """Direct Advantage Regression (spec §7): for y ~ π_t the sampled objective weights
    each sample by (π_ref/π_t)^{α/t} exp(A/t), t = α + β, computed in log space, clipped
    and self-normalised over the global batch; logs the decomposed log-weight terms."""

    name = "dar"
    needs_ref = True

    def estep(self, ctx: LoopContext, batch: Batch) -> dict[str, float]:
        adv, _, metrics = self.advantages(ctx, batch)
        mask = batch["completion_mask"]
        logp_ref = ctx.gather((batch["ref_logp"] * mask).sum(1))
        logp_t = ctx.gather((batch["old_logp"] * mask).sum(1))
        w, info = O.dar_weights(logp_ref, logp_t, adv, alpha=self.cfg.dar_alpha, beta=self.cfg.dar_beta,
                                clip_max=self.cfg.dar_clip_max)
        metrics.update(estep_metrics(info))
        for name in ("log_ref_term", "log_sample_term", "adv_term"):
            v = getattr(info, name, None)
            if v is not None:
                metrics[f"dar/{name}"] = float(torch.as_tensor(v).float().mean())
        metrics["estep/eta"] = float(self.cfg.dar_alpha + self.cfg.dar_beta)
        metrics.update(self._set_weights(ctx, batch, w, adv))
        return metrics


ALGORITHMS: dict[str, type[Algorithm]] = {"sft": SFT, "vmpo": VMPO, "awr": AWR, "dar": DAR, "ppo": PPO}


def make_algorithm(name: str, cfg: Any) -> Algorithm:
    """The plug-in called ``name`` (``sft``, ``vmpo``, ``awr``, ``dar``, ``ppo``)."""
    if name not in ALGORITHMS:
        from emrl.errors import unknown_name_error

        raise unknown_name_error("algorithm", name, ALGORITHMS)
    return ALGORITHMS[name](cfg)


__all__ = ["Algorithm", "Batch", "SFT", "VMPO", "AWR", "DAR", "PPO", "ALGORITHMS", "make_algorithm"]

