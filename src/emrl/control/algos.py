"""Algorithm plug-ins for the one training loop (:mod:`emrl.control.train`).

A plug-in owns the maths specific to its algorithm, all of it from
:mod:`emrl.objectives`:

* ``prepare(batch)`` — targets and advantages on the collected batch (stored in
  ``batch.extra``, [T, N]), with the values V_old of the acting network; V-MPO with
  ``dual_schedule="update"`` also runs its E-step here, once per batch;
* ``loss(params, values, mb, progress, diagnostics=True)`` — the scalar loss of a
  recomputed minibatch and a dict of metrics under the shared names of DESIGN.md
  (``diagnostics=False``: the training loop does not read the metrics of this
  minibatch, so metric-only work such as a no-gradient entropy is skipped; the loss
  is identical);
* ``after_minibatch()`` — called after each policy optimiser step (V-MPO with
  ``dual_schedule="minibatch"``: the duals' step);
* ``finish_update(batch)`` — called once after the epochs (V-MPO with
  ``dual_schedule="update"``: α's step on the realised KL); returns metrics;
* ``stop_early(metrics)`` — PPO's approximate-KL early stop (``may_stop_early``: whether
  it is configured, so the loop knows which minibatches need metrics);
* ``state_dict()`` / ``load_state_dict()`` — what a checkpoint keeps of the plug-in.

:class:`PPO` (spec §4): clipped surrogate, GAE, optional value clipping, entropy bonus.
:class:`VMPO` (spec §5, Song et al. 2019): n-step or GAE targets, top-k E-step with the
adaptive temperature η, M-step weighted maximum likelihood under the KL trust region
with α — categorical KL for discrete actions, decoupled mean / covariance KL with
α_μ, α_Σ for Gaussian policies; π_old is the policy that collected the batch (its
distribution parameters are stored in the rollout). The duals live in an
:class:`emrl.objectives.duals.Duals`, stepped on its schedule.
"""

from __future__ import annotations

from typing import Any

import torch

from emrl.control.agent import Agent
from emrl.control.config import ControlConfig
from emrl.control.rollout import Batch, Minibatch, whole_batch
from emrl.errors import unknown_name_error
from emrl.metrics import estep_metrics, ppo_metrics, trust_region_metrics
from emrl.nn.heads import GaussianHead
from emrl.objectives import checks
from emrl.objectives.duals import Duals
from emrl.objectives.estep import vmpo_topk
from emrl.objectives.mstep import categorical_kl, gaussian_kl_decoupled, weighted_nll
from emrl.objectives.ppo import entropy_from_logits, ppo_clip_loss, value_loss
from emrl.objectives.returns import gae, normalize_advantages, nstep_targets


class Algorithm:
    """Base class of plug-ins."""

    name = "base"

    def __init__(self, cfg: ControlConfig, agent: Agent) -> None:
        self.cfg = cfg
        self.agent = agent

    def dual_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def prepare(self, batch: Batch) -> dict[str, Any]:
        raise NotImplementedError

    def loss(
        self, params: torch.Tensor, values: torch.Tensor, mb: Minibatch, progress: float,
        diagnostics: bool = True,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def after_minibatch(self) -> None:
        """Called after each policy optimiser step."""

    def finish_update(self, batch: Batch) -> dict[str, Any]:
        """Called once after the epochs of an update; returns metrics to log."""
        return {}

    def stop_early(self, metrics: dict[str, Any]) -> bool:
        return False

    @property
    def may_stop_early(self) -> bool:
        """Whether :meth:`stop_early` can return True (the loop then computes the
        metrics of every epoch's last minibatch, not only of the final epoch's)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, the checkpoint holds {sorted(state)}")

    # helpers ----------------------------------------------------------------
    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        head = self.agent.policy_head
        if head.discrete:
            return entropy_from_logits(params)
        return head.entropy(params)


class PPO(Algorithm):
    """PPO (spec §4): GAE(γ, λ) advantages, per-minibatch normalisation, clipped
    surrogate with (annealed) ε, value loss (optionally clipped), entropy bonus."""

    name = "ppo"

    def prepare(self, batch: Batch) -> dict[str, Any]:
        c = self.cfg
        adv, ret = gae(batch.rewards, batch.values, batch.next_values, batch.terminated,
                       batch.dones, c.gamma, c.gae_lambda)
        batch.extra["adv"] = adv
        batch.extra["returns"] = ret
        metrics = {"adv/mean": adv.mean(), "value/target_mean": ret.mean()}
        # one minibatch = the whole batch: normalising once here equals per minibatch
        self._adv_normalized = c.normalize_advantages and c.num_minibatches == 1
        if self._adv_normalized:
            batch.extra["adv"] = normalize_advantages(adv)
        return metrics

    def loss(self, params, values, mb, progress, diagnostics=True):
        c = self.cfg
        head = self.agent.policy_head
        clip = c.clip_eps * progress if c.anneal_clip else c.clip_eps
        clip = max(clip, 1e-8)
        adv = mb.extra["adv"]
        if c.normalize_advantages and not getattr(self, "_adv_normalized", False):
            adv = normalize_advantages(adv)
        logp = head.log_prob(params, mb.actions)
        pg_loss, info = ppo_clip_loss(logp, mb.logp, adv, clip_eps=clip, diagnostics=diagnostics)
        # the value diagnostics are not reported: skip them (same loss, no host sync)
        vloss, _ = value_loss(values, mb.values if c.clip_vloss else None, mb.extra["returns"],
                              clip=clip if c.clip_vloss else None, diagnostics=False)
        if c.ent_coef:
            ent = self.entropy(params).mean()
            loss = pg_loss + c.vf_coef * vloss - c.ent_coef * ent
        else:  # only reported: no graph
            loss = pg_loss + c.vf_coef * vloss
            if not diagnostics:
                return loss, {}
            with torch.no_grad():
                ent = self.entropy(params).mean()
        if not diagnostics:
            return loss, {}
        m = {"loss/policy": pg_loss.detach(), "loss/value": vloss.detach(), "policy/entropy": ent.detach(),
             **ppo_metrics(info), "ppo/clip_eps": clip}
        return loss, m

    @property
    def may_stop_early(self) -> bool:
        return self.cfg.target_kl is not None

    def stop_early(self, metrics):
        tk = self.cfg.target_kl
        return tk is not None and bool(metrics) and float(metrics["ppo/approx_kl"]) > tk


class VMPO(Algorithm):
    """V-MPO (spec §5; Song et al. 2019).

    Targets: n-step bootstrapped ``G^(n)`` (``vmpo_targets="nstep"``, A = G − V_old) or
    GAE (A = GAE, target = A + V_old). E-step: top ``top_fraction`` advantages,
    weights ``softmax(A/η)`` over them, temperature loss ``L_η``. M-step: ``−Σ w log π``
    under the trust region on ``KL(π_old ‖ π_θ)`` (categorical) with α, or on the
    decoupled Gaussian KLs with separate α_μ, α_Σ. The duals are an
    :class:`~emrl.objectives.duals.Duals` with their own Adam (``dual_lr``).

    ``dual_schedule="update"``: the E-step runs once per batch in :meth:`prepare` (η takes
    one step), the minibatch losses use its weights and ``sg[α]·KL``, and α takes one
    step in :meth:`finish_update` on the KL the update realised over the whole batch.
    ``"minibatch"``: the E-step (top-k, weights, ``L_η``) and the full α term run in each
    minibatch's loss and the duals step after each minibatch; with one minibatch the
    top-k set is selected once per batch (it does not depend on η).
    """

    name = "vmpo"

    def __init__(self, cfg: ControlConfig, agent: Agent) -> None:
        super().__init__(cfg, agent)
        self.gaussian = isinstance(agent.policy_head, GaussianHead)
        device = next(agent.parameters()).device
        self.duals = Duals(eta_init=cfg.eta_init, alpha_init=cfg.alpha_init, gaussian=self.gaussian,
                           lr=cfg.dual_lr or cfg.learning_rate, adam_eps=cfg.adam_eps,
                           schedule=cfg.dual_schedule, device=device)
        self.per_minibatch = cfg.dual_schedule == "minibatch"
        self.eps_alpha = ({"alpha_mu": cfg.eps_alpha_mu, "alpha_sigma": cfg.eps_alpha_sigma} if self.gaussian
                          else {"alpha": cfg.eps_alpha})

    def dual_parameters(self):
        return self.duals.parameters()

    @property
    def eta(self) -> float:
        return self.duals.eta

    def state_dict(self) -> dict[str, Any]:
        return {"duals": self.duals.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "duals" not in state:
            raise ValueError(f"the checkpoint's V-MPO state holds {sorted(state)}, not the duals")
        self.duals.load_state_dict(state["duals"])

    def prepare(self, batch: Batch) -> dict[str, Any]:
        c = self.cfg
        if c.vmpo_targets == "nstep":
            ret = nstep_targets(batch.rewards, batch.values, batch.next_values, batch.terminated,
                                batch.dones, c.gamma, c.nstep)
            adv = ret - batch.values
        else:
            adv, ret = gae(batch.rewards, batch.values, batch.next_values, batch.terminated,
                           batch.dones, c.gamma, c.gae_lambda)
        if c.vmpo_norm_adv:
            adv = normalize_advantages(adv)
        batch.extra["adv"] = adv
        batch.extra["returns"] = ret
        metrics = {"adv/mean": adv.mean(), "value/target_mean": ret.mean()}
        if not self.per_minibatch:
            weights, est = self.estep(adv)
            batch.extra["weights"] = weights
            metrics.update(est)
        elif c.num_minibatches == 1:
            # one minibatch = all samples (in some order): the top-k set S does not depend
            # on η, so it is selected once per batch and carried with the samples (k = |S|)
            selected, _ = vmpo_topk(adv.reshape(-1), c.top_fraction)
            batch.extra["topk"] = selected.reshape(adv.shape)
        return metrics

    def estep(self, adv: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The once-per-batch E-step (``dual_schedule="update"``): weights of the samples
        (shape of ``adv``) at the current η, then one step of the temperature dual."""
        w, loss_eta, info = self.duals.update_temperature(adv.reshape(-1), self.cfg.eps_eta, self.cfg.top_fraction)
        return w.reshape(adv.shape), {"loss/temperature": loss_eta, **estep_metrics(info)}

    def kls(self, params: torch.Tensor, old_params: torch.Tensor) -> dict[str, torch.Tensor]:
        """``KL(π_old ‖ π_θ)`` averaged over the samples, per dual: ``{"alpha": KL}``, or
        ``{"alpha_mu": KL_μ, "alpha_sigma": KL_Σ}`` for a Gaussian policy."""
        if self.gaussian:
            mu_old, std_old = GaussianHead.split(old_params)
            mu, std = GaussianHead.split(params)
            kl_mu, kl_sigma = gaussian_kl_decoupled(mu_old, std_old, mu, std)
            return {"alpha_mu": kl_mu, "alpha_sigma": kl_sigma}
        return {"alpha": categorical_kl(old_params, params).mean()}

    def _trust_metrics(self, kls: dict[str, torch.Tensor]) -> dict[str, Any]:
        d = self.duals
        if not self.gaussian:
            return trust_region_metrics(kls["alpha"], d.value("alpha").detach(), self.eps_alpha["alpha"])
        kl_mu, kl_sigma = kls["alpha_mu"], kls["alpha_sigma"]
        m = trust_region_metrics(kl_mu + kl_sigma, d.value("alpha_mu").detach(), self.eps_alpha["alpha_mu"],
                                 kl_mu=kl_mu, kl_sigma=kl_sigma, alpha_mu=d.value("alpha_mu").detach(),
                                 alpha_sigma=d.value("alpha_sigma").detach())
        # two budgets: the larger share of either is what is used up
        m["mstep/kl_budget_used"] = max(m["mstep/kl_mu"] / self.eps_alpha["alpha_mu"],
                                        m["mstep/kl_sigma"] / self.eps_alpha["alpha_sigma"])
        return m

    def loss(self, params, values, mb, progress, diagnostics=True):
        c, d = self.cfg, self.duals
        head = self.agent.policy_head
        m: dict[str, Any] = {}
        if self.per_minibatch:  # E-step on this minibatch: top-k, weights, temperature dual
            sel = mb.extra.get("topk")
            weights, loss_eta, einfo = d.temperature_loss(
                mb.extra["adv"].reshape(-1), c.eps_eta, c.top_fraction, diagnostics=diagnostics,
                selection=None if sel is None else (sel.reshape(-1), int(sel.sum())))
            scale = 1.0
        else:  # the batch's E-step weights; this minibatch's share of them
            weights, loss_eta, einfo = mb.extra["weights"].reshape(-1), None, None
            scale = float(c.num_minibatches)  # the sum-reduced loss as a full-batch estimate
        logp = head.log_prob(params, mb.actions).reshape(1, -1)
        # M-step: weighted maximum likelihood under the trust region against π_old
        loss_pi, _ = weighted_nll(logp, weights=weights.reshape(1, -1), reduction="sum", diagnostics=False)
        loss_pi = loss_pi * scale
        kls = self.kls(params, mb.params)
        if self.per_minibatch:  # spec §5 eq. (1): α(ε − sg[KL]) + sg[α]·KL per dual
            loss_alpha = sum(d.alpha_loss(kl, self.eps_alpha[n], n)[0] for n, kl in kls.items())
        else:  # the policy's half; α steps once per update (finish_update)
            loss_alpha = sum(d.kl_penalty(kl, n) for n, kl in kls.items())
        vloss, _ = value_loss(values, None, mb.extra["returns"], diagnostics=False)
        loss = loss_pi + loss_alpha + c.vf_coef * vloss
        if loss_eta is not None:
            loss = loss + loss_eta
        if not diagnostics:
            return loss, {}
        m.update(self._trust_metrics({n: kl.detach() for n, kl in kls.items()}))
        m.update({"loss/policy": loss_pi.detach(), "loss/value": vloss.detach(),
                  "policy/entropy": self.entropy(params.detach()).mean()})
        if self.per_minibatch:
            m.update({"loss/temperature": loss_eta.detach(), "loss/alpha": loss_alpha.detach(),
                      **estep_metrics(einfo)})
        return loss, m

    def after_minibatch(self) -> None:
        if self.per_minibatch:
            self.duals.optimizer_step()

    def finish_update(self, batch: Batch) -> dict[str, Any]:
        """``dual_schedule="update"``: the KL the update realised over the whole batch
        (one forward pass, no gradient), and one step of each α on it."""
        if self.per_minibatch:
            return {}
        mb = whole_batch(batch)
        with torch.no_grad(), checks(enabled=False):
            params, _, _ = self.agent(mb.obs, mb.state0, mb.reset, *mb.prev())
            kls = self.kls(params, mb.params)
        m = self._trust_metrics(kls)  # α before its step, with the realised KL
        infos = [self.duals.update_alpha(kl, self.eps_alpha[n], n) for n, kl in kls.items()]
        m["loss/alpha"] = float(sum(float(i.loss_alpha) for i in infos))
        return m


ALGORITHMS: dict[str, type[Algorithm]] = {"ppo": PPO, "vmpo": VMPO}


def build_algorithm(cfg: ControlConfig, agent: Agent) -> Algorithm:
    if cfg.algo not in ALGORITHMS:
        raise unknown_name_error("algorithm", cfg.algo, ALGORITHMS)
    return ALGORITHMS[cfg.algo](cfg, agent)
