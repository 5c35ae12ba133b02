"""Algorithm plug-ins of the one LM training loop (:mod:`emrl.lm.trainer`).

Every algorithm answers the same three questions for the loop, and all of its maths
comes from :mod:`emrl.objectives`:

``collect(trainer, step) -> Batch``
    The data of one update. SFT: demonstrations (and, for n-best, samples of the model);
    RL: ``k`` completions per prompt sampled from the current policy in eval mode
    (π_old), their rewards, π_old's per-token log-probs (and logits for the exact KL),
    and the reference policy's log-probs where the algorithm needs them.
``estep(trainer, batch) -> metrics``
    The E-step: the target the M-step fits (spec §3 "EM Iterations"). SFT: a δ on the
    demonstration, label smoothing, n-best weights or a teacher's distribution (spec §6
    "E-step / M-step for SFT"); V-MPO: top-k weights with the adaptive temperature dual
    (spec §6 "Full Adaptive EM Procedure"); AWR: fixed-temperature weights; DAR: the
    closed-form reference/sampling-policy weights (spec §7); PPO: GAE or group
    advantages (spec §4). Everything normalised over the **global** batch (all
    processes), so a distributed run computes what one process would.
``loss(trainer, mb, out) -> (loss, metrics)``
    The M-step loss of one minibatch given the current policy's forward pass ``out``.
    SFT and the EM algorithms share :func:`emrl.objectives.weighted_nll` (or its soft
    target form); PPO plugs its clipped ratio loss into the same place. The α trust
    region on KL(π_old ‖ π_θ) (spec §5 eq. 1) is added by the loop for EM algorithms.

A :class:`Batch` holds per-sample tensors with the sample dimension first (``N``
sequences of ``S`` positions: left-padded prompt, completion, right padding) plus a few
per-sample Python lists; :meth:`Batch.select` takes minibatches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from emrl import objectives as O
from emrl.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from emrl.lm.trainer import ForwardOut, LMTrainer


@dataclass
class Batch:
    """Per-sample tensors (``[N, ...]``) and lists (length ``N``) of one update."""

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

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    # parameters outside the policy (temperature/value head) -----------------------
    def setup(self, trainer: LMTrainer) -> None:
        """Create extra parameters (duals, value head) once the model exists."""

    def value_head(self) -> nn.Module | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # the protocol ----------------------------------------------------------------
    def collect(self, trainer: LMTrainer, step: int) -> Batch:
        raise NotImplementedError

    def estep(self, trainer: LMTrainer, batch: Batch) -> dict[str, float]:
        raise NotImplementedError

    def loss(self, trainer: LMTrainer, mb: Batch, out: ForwardOut) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def stop_epochs(self, trainer: LMTrainer, metrics: dict[str, float]) -> bool:
        """Return True to end the M-step epochs of this update early (PPO's KL stop)."""
        return False


def _nll_loss(trainer: LMTrainer, mb: Batch, out: ForwardOut) -> tuple[Tensor, dict[str, float]]:
    """The shared M-step: weighted NLL of the batch's completion tokens (spec §6).

    ``mb["weights"]`` is ``[n]`` (per sequence) or ``[n, S]`` (per token), normalised over
    the global batch; ``trainer.loss_scale`` turns the minibatch's share of the sum into
    a full-batch estimate.
    """
    loss, _ = O.weighted_nll(out.logp, mb["completion_mask"], mb["weights"], reduction="sum")
    loss = loss * trainer.loss_scale
    return loss, {"loss/policy": float(loss.detach())}


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

    def setup(self, trainer: LMTrainer) -> None:
        self.teacher = None
        self.needs_logits = self.cfg.target != "nbest"
        if self.cfg.target == "distill":
            self.teacher = trainer.load_frozen(self.cfg.teacher, what="teacher")
            tv = self.teacher.get_output_embeddings().weight.shape[0]
            sv = trainer.unwrapped.get_output_embeddings().weight.shape[0]
            if tv != sv:
                raise ConfigError(
                    f"teacher {self.cfg.teacher!r} has a vocabulary of {tv} tokens but the student "
                    f"has {sv}; distillation needs the same tokenizer")

    def collect(self, trainer: LMTrainer, step: int) -> Batch:
        rows = trainer.next_rows(step)
        demos = [trainer.demonstration(r) for r in rows]
        if self.cfg.target != "nbest":
            return trainer.encode([r["prompt"] for r in rows], demos, rows)
        # n-best: n samples of the current model per prompt plus the demonstration,
        # scored by the task's reward (spec §6: n-best targets keep the EM structure).
        n = self.cfg.nbest_n
        ro, rewards = trainer.sample_and_score(rows, n, temperature=1.0)
        demo_rewards = trainer.score([r["prompt"] for r in rows], demos, rows)
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
        batch = trainer.encode(prompts, texts, out_rows)
        batch["rewards"] = torch.tensor(rw, dtype=torch.float32, device=batch["input_ids"].device)
        return batch

    def estep(self, trainer: LMTrainer, batch: Batch) -> dict[str, float]:
        n_local = len(batch)
        metrics: dict[str, float] = {}
        if self.cfg.target == "nbest":
            rewards = trainer.gather(batch["rewards"])
            w, info = O.nbest_weights(rewards, group_size=self.cfg.nbest_n + 1,
                                      temperature=self.cfg.nbest_temperature)
            w = w / w.sum()  # each prompt's candidates sum to 1; every prompt gets equal mass
            batch["weights"] = trainer.local_slice(w, n_local)
            metrics["reward/mean"] = float(rewards.mean())
            metrics["reward/std"] = float(rewards.std()) if rewards.numel() > 1 else 0.0
            metrics["estep/ess"] = float(info.ess.float().mean())
            return metrics
        # δ / label-smoothing / distillation: one unit of mass per demonstration, normalised
        # over the global batch; the token-level target itself is built per minibatch.
        batch["weights"] = torch.full((n_local,), 1.0 / trainer.global_count(n_local),
                                      device=batch["input_ids"].device)
        if self.cfg.target == "distill":
            batch["teacher_logits"] = trainer.forward_frozen(self.teacher, batch)
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

    def loss(self, trainer: LMTrainer, mb: Batch, out: ForwardOut) -> tuple[Tensor, dict[str, float]]:
        if self.cfg.target == "nbest" or out.logits is None:  # no logits: delta target in chunks
            return _nll_loss(trainer, mb, out)
        loss, _ = O.soft_target_nll(out.logits, self.target(mb), weights=mb["weights"], reduction="sum")
        loss = loss * trainer.loss_scale
        return loss, {"loss/policy": float(loss.detach())}


# ----------------------------------------------------------------------------------
# RL: shared rollout collection and advantages
# ----------------------------------------------------------------------------------
class _RL(Algorithm):
    """Shared parts of the RL plug-ins: rollouts, rewards, advantages (spec §6)."""

    uses_trust_region = True
    needs_ref = False

    def setup(self, trainer: LMTrainer) -> None:
        cfg = self.cfg
        self._value: nn.Module | None = None
        if cfg.baseline == "value" or (self.name == "ppo" and cfg.ppo_level == "token"):
            self._value = trainer.make_value_head()
        self.ref = trainer.reference() if self.needs_ref else None

    def value_head(self) -> nn.Module | None:
        return self._value

    def collect(self, trainer: LMTrainer, step: int) -> Batch:
        rows = trainer.next_rows(step)
        k = self.cfg.num_samples
        ro, rewards = trainer.sample_and_score(rows, k, temperature=self.cfg.temperature,
                                                top_p=self.cfg.top_p)
        return self.finish_batch(trainer, trainer.rollout_batch(ro, rewards, rows, k))

    def finish_batch(self, trainer: LMTrainer, batch: Batch) -> Batch:
        """Add π_old's log-probs (and logits for the exact KL, values for a value head) and
        π_ref's log-probs to a batch of scored completions (eval mode, no gradient)."""
        want_logits = self.uses_trust_region and trainer.cfg.trust_region and \
            trainer.cfg.kl_estimator == "exact" and not trainer.old_logits_from_mstep(len(batch))
        want_values = self._value is not None
        # π_old's log-probs usually come from generation (``rollout_batch``); a teacher-forced
        # pass is needed only for π_old's logits (exact KL, when the first M-step forward
        # cannot provide them) or the value head's V(s)
        if want_logits or want_values or "old_logp" not in batch:
            with torch.no_grad():
                old = trainer.forward(batch, train=False, need_logits=want_logits,
                                      need_values=want_values, grad=False)
            batch["old_logp"] = old.logp
            if old.logits is not None:
                batch["old_logits"] = old.logits
            if old.values is not None:
                batch["old_values"] = old.values
                if self.cfg.baseline == "value":
                    batch["old_prompt_values"] = trainer.prompt_values(batch, old.values)
        if self.ref is not None:
            batch["ref_logp"] = trainer.forward_frozen_logp(self.ref, batch)
        return batch

    def advantages(self, trainer: LMTrainer, batch: Batch) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Global sequence advantages ``A[N_global]`` and global rewards (spec §6: A = r − b)."""
        cfg = self.cfg
        rewards = trainer.gather(batch["rewards"])
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
            adv = rewards - trainer.gather(batch["old_prompt_values"])
        if cfg.normalize_advantages:
            adv = O.normalize_advantages(adv)
        metrics = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "adv/abs_mean": float(adv.abs().mean()),
        }
        return adv, rewards, metrics

    def _set_weights(self, trainer: LMTrainer, batch: Batch, w_global: Tensor,
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
        w = trainer.local_slice(w_global, len(batch))
        if self.cfg.weight_level == "token":
            # per-token weights: the sequence's mass spread evenly over its tokens, so each
            # selected sequence contributes its mean token log-likelihood (spec §6 "Token-Level Form").
            m = batch["completion_mask"].float()
            w = w[:, None] * m / m.sum(1, keepdim=True).clamp(min=1.0)
        batch["weights"] = w
        return metrics

    def loss(self, trainer: LMTrainer, mb: Batch, out: ForwardOut) -> tuple[Tensor, dict[str, float]]:
        loss, metrics = _nll_loss(trainer, mb, out)
        if self._value is not None and self.cfg.baseline == "value":
            vl, _ = O.value_loss(trainer.prompt_values(mb, out.values), mb["old_prompt_values"], mb["rewards"])
            loss = loss + self.cfg.vf_coef * vl
            metrics["loss/value"] = float(vl.detach())
        if self.cfg.kl_ref_coef > 0:
            kl_ref = trainer.kl_to_reference(mb, out)
            loss = loss + self.cfg.kl_ref_coef * kl_ref
            metrics["mstep/kl_ref"] = float(kl_ref.detach())
        return loss, metrics


# ----------------------------------------------------------------------------------
# V-MPO
# ----------------------------------------------------------------------------------
class VMPO(_RL):
    """Sequence-level V-MPO (spec §6 "Full Adaptive EM Procedure").

    E-step: η_det = sg[η(ξ)], top-k by A/η_det with k = max(1, ⌊ρN⌋), weights by the
    stable log-sum-exp softmax; the temperature dual L_η = η(ε_η + g(η)) is minimised by
    one step of its own optimiser per update (``adaptive_temperature``), or η stays fixed.
    M-step: weighted NLL of the selected samples under the α trust region.
    """

    name = "vmpo"
    skip_zero_weight = True

    def setup(self, trainer: LMTrainer) -> None:
        super().setup(trainer)
        self.needs_ref = self.cfg.kl_ref_coef > 0
        if self.needs_ref:
            self.ref = trainer.reference()
        xi0 = O.inverse_temperature_param(torch.tensor(float(self.cfg.eta_init)), param=self.cfg.eta_param)
        self.xi = nn.Parameter(xi0.detach().clone().float().to(trainer.device))
        self.eta_opt = torch.optim.Adam([self.xi], lr=self.cfg.eta_lr)

    def eta(self) -> float:
        return float(O.temperature(self.xi.detach(), param=self.cfg.eta_param))

    def estep(self, trainer: LMTrainer, batch: Batch) -> dict[str, float]:
        adv, _, metrics = self.advantages(trainer, batch)
        cfg = self.cfg
        if cfg.adaptive_temperature:
            w, loss_eta, info = O.vmpo_estep(adv, self.xi, cfg.eps_eta, top_fraction=cfg.top_fraction,
                                             param=cfg.eta_param, min_advantage=cfg.min_advantage)
            if info.k > 0:  # an empty target leaves the temperature where it is
                self.eta_opt.zero_grad(set_to_none=True)
                loss_eta.backward()
                self.eta_opt.step()
            metrics["loss/temperature"] = float(loss_eta.detach())
        else:
            w, info = O.vmpo_weights(adv, float(cfg.eta_init), top_fraction=cfg.top_fraction,
                                     min_advantage=cfg.min_advantage)
        metrics.update(_estep_metrics(info))
        metrics["estep/eta"] = float(info.eta)
        metrics["estep/eta_next"] = self.eta()
        metrics.update(self._set_weights(trainer, batch, w, adv))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"xi": self.xi.detach().clone(), "eta_opt": self.eta_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.xi.copy_(state["xi"])
        self.eta_opt.load_state_dict(state["eta_opt"])


def _estep_metrics(info: Any) -> dict[str, float]:
    out = {}
    for src, dst in (("ess", "estep/ess"), ("selected_fraction", "estep/selected_fraction"),
                     ("weight_entropy", "estep/weight_entropy"), ("kl_to_uniform", "estep/kl_to_uniform")):
        v = getattr(info, src, None)
        if v is not None:
            out[dst] = float(v)
    return out


# ----------------------------------------------------------------------------------
# AWR
# ----------------------------------------------------------------------------------
class AWR(_RL):
    """AWR (spec §7 "Advantage Weighted Regression"): all samples, w ∝ exp(A/τ) at a fixed
    temperature with max-weight clipping, normalised over the global batch."""

    name = "awr"

    def setup(self, trainer: LMTrainer) -> None:
        super().setup(trainer)
        self.needs_ref = self.cfg.kl_ref_coef > 0
        if self.needs_ref:
            self.ref = trainer.reference()

    def estep(self, trainer: LMTrainer, batch: Batch) -> dict[str, float]:
        adv, _, metrics = self.advantages(trainer, batch)
        w, info = O.awr_weights(adv, self.cfg.awr_temperature, max_weight=self.cfg.awr_max_weight)
        metrics.update(_estep_metrics(info))
        metrics["estep/eta"] = float(self.cfg.awr_temperature)
        metrics.update(self._set_weights(trainer, batch, w, adv))
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

    def estep(self, trainer: LMTrainer, batch: Batch) -> dict[str, float]:
        adv, _, metrics = self.advantages(trainer, batch)
        mask = batch["completion_mask"]
        logp_ref = trainer.gather((batch["ref_logp"] * mask).sum(1))
        logp_t = trainer.gather((batch["old_logp"] * mask).sum(1))
        w, info = O.dar_weights(logp_ref, logp_t, adv, alpha=self.cfg.dar_alpha, beta=self.cfg.dar_beta,
                                clip_max=self.cfg.dar_clip_max)
        metrics.update(_estep_metrics(info))
        for name in ("log_ref_term", "log_sample_term", "adv_term"):
            v = getattr(info, name, None)
            if v is not None:
                metrics[f"dar/{name}"] = float(torch.as_tensor(v).float().mean())
        metrics["estep/eta"] = float(self.cfg.dar_alpha + self.cfg.dar_beta)
        metrics.update(self._set_weights(trainer, batch, w, adv))
        return metrics


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

    def setup(self, trainer: LMTrainer) -> None:
        self.needs_ref = self.cfg.kl_coef > 0 and self.cfg.ppo_level == "token"
        super().setup(trainer)
        self.needs_logits = self.cfg.ent_coef > 0

    def estep(self, trainer: LMTrainer, batch: Batch) -> dict[str, float]:
        cfg = self.cfg
        n = len(batch)
        if cfg.ppo_level == "sequence":
            adv, _, metrics = self.advantages(trainer, batch)
            batch["advantages"] = trainer.local_slice(adv, n)
            return metrics
        rewards_g = trainer.gather(batch["rewards"])
        metrics = {"reward/mean": float(rewards_g.mean()),
                   "reward/std": float(rewards_g.std()) if rewards_g.numel() > 1 else 0.0}
        mask = batch["completion_mask"]
        S = mask.shape[1]
        # token rewards on completion positions: KL penalty to the reference + final reward
        r_tok = torch.zeros_like(batch["old_logp"])
        if self.ref is not None:
            kl_tok = (batch["old_logp"] - batch["ref_logp"]) * mask
            r_tok = r_tok - cfg.kl_coef * kl_tok
            metrics["mstep/kl_ref"] = float(trainer.global_masked_mean(kl_tok, mask))
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
        adv_g, mask_g = trainer.gather_padded(adv), trainer.gather_padded(mask)
        adv_n = O.normalize_advantages(adv_g, mask_g)
        batch["advantages"] = trainer.local_slice(adv_n, n)[:, :S] * mask
        metrics["adv/abs_mean"] = float((adv_g.abs() * mask_g).sum() / mask_g.sum().clamp(min=1))
        return metrics

    def loss(self, trainer: LMTrainer, mb: Batch, out: ForwardOut) -> tuple[Tensor, dict[str, float]]:
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
            metrics["ppo/entropy"] = float(ent.detach())
        return loss, metrics

    def stop_epochs(self, trainer: LMTrainer, metrics: dict[str, float]) -> bool:
        tk = self.cfg.target_kl
        return tk is not None and metrics.get("ppo/approx_kl", 0.0) > tk


def _last_index(mask: Tensor) -> Tensor:
    """Index of the last True position of each row of ``mask[N, S]`` (0 for an empty row)."""
    S = mask.shape[1]
    pos = torch.arange(S, device=mask.device).expand_as(mask)
    return torch.where(mask, pos, torch.full_like(pos, -1)).max(1).values.clamp(min=0)


ALGORITHMS: dict[str, type[Algorithm]] = {"sft": SFT, "vmpo": VMPO, "awr": AWR, "dar": DAR, "ppo": PPO}


def make_algorithm(name: str, cfg: Any) -> Algorithm:
    """The plug-in called ``name`` (``sft``, ``vmpo``, ``awr``, ``dar``, ``ppo``)."""
    if name not in ALGORITHMS:
        from emrl.errors import unknown_name_error

        raise unknown_name_error("algorithm", name, ALGORITHMS)
    return ALGORITHMS[name](cfg)


__all__ = ["Algorithm", "Batch", "SFT", "VMPO", "AWR", "DAR", "PPO", "ALGORITHMS", "make_algorithm"]
