"""Algorithm plug-ins for the one training loop (:mod:`emrl.control.train`).

A plug-in owns the maths specific to its algorithm, all of it from
:mod:`emrl.objectives`:

* ``prepare(batch)`` — targets and advantages on the collected batch (stored in
  ``batch.extra``, [T, N]), with the values V_old of the acting network;
* ``loss(params, values, mb, progress, diagnostics=True)`` — the scalar loss of a
  recomputed minibatch and a dict of metrics under the shared names of DESIGN.md
  (``diagnostics=False``: the training loop does not read the metrics of this
  minibatch, so metric-only work such as a no-gradient entropy is skipped; the loss
  is identical);
* ``dual_parameters()`` — extra parameters (V-MPO's η and α) with their own optimiser;
* ``stop_early(metrics)`` — PPO's approximate-KL early stop (``may_stop_early``: whether
  it is configured, so the loop knows which minibatches need metrics).

:class:`PPO` (spec §4): clipped surrogate, GAE, optional value clipping, entropy bonus.
:class:`VMPO` (spec §5, Song et al. 2019): n-step or GAE targets, top-k E-step with the
adaptive temperature η, M-step weighted maximum likelihood under the KL trust region
with α — categorical KL for discrete actions, decoupled mean / covariance KL with
α_μ, α_Σ for Gaussian policies; π_old is the policy that collected the batch (its
distribution parameters are stored in the rollout).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from emrl.control.agent import Agent
from emrl.control.config import ControlConfig
from emrl.control.rollout import Batch
from emrl.nn.heads import GaussianHead
from emrl.objectives.estep import inverse_temperature_param, temperature, vmpo_estep, vmpo_topk
from emrl.objectives.mstep import (
    alpha_trust_region,
    categorical_kl,
    gaussian_kl_decoupled,
    weighted_nll,
)
from emrl.objectives.ppo import entropy_from_logits, ppo_clip_loss, value_loss
from emrl.objectives.returns import gae, normalize_advantages, nstep_targets


class Algorithm(nn.Module):
    """Base class of plug-ins (an ``nn.Module`` so duals are saved in ``state_dict``)."""

    name = "base"

    def __init__(self, cfg: ControlConfig, agent: Agent) -> None:
        super().__init__()
        self.cfg = cfg
        self.agent = [agent]  # not a submodule: the agent is saved on its own

    def dual_parameters(self) -> list[nn.Parameter]:
        return []

    def project_duals(self) -> None:
        """Called after each dual step (nothing to do with softplus parameterisation)."""

    def prepare(self, batch: Batch) -> dict[str, Any]:
        raise NotImplementedError

    def loss(
        self, params: torch.Tensor, values: torch.Tensor, mb, progress: float, diagnostics: bool = True,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def stop_early(self, metrics: dict[str, Any]) -> bool:
        return False

    @property
    def may_stop_early(self) -> bool:
        """Whether :meth:`stop_early` can return True (the loop then computes the
        metrics of every epoch's last minibatch, not only of the final epoch's)."""
        return False

    # helpers ----------------------------------------------------------------
    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        head = self.agent[0].policy_head
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
        self._adv_normalized = c.norm_adv and c.num_minibatches == 1
        if self._adv_normalized:
            batch.extra["adv"] = normalize_advantages(adv)
        return metrics

    def loss(self, params, values, mb, progress, diagnostics=True):
        c = self.cfg
        head = self.agent[0].policy_head
        clip = c.clip_coef * progress if c.anneal_clip else c.clip_coef
        clip = max(clip, 1e-8)
        adv = mb.extra["adv"]
        if c.norm_adv and not getattr(self, "_adv_normalized", False):
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
        m = {
            "loss/policy": pg_loss.detach(), "loss/value": vloss.detach(), "entropy": ent.detach(),
            "ppo/clip_fraction": info.clip_fraction, "ppo/approx_kl": info.approx_kl,
            "ppo/ratio_std": info.ratio_std, "ppo/clip_eps": clip,
        }
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
    GAE (A = GAE, target = A + V_old). E-step: top ``topk_fraction`` advantages,
    weights ``softmax(A/η)`` over them, temperature loss ``L_η``. M-step: ``−Σ w log π``
    plus ``L_α`` on ``KL(π_old ‖ π_θ)`` (categorical), or on the decoupled Gaussian KLs
    with separate α_μ, α_Σ. η and α are softplus-parameterised duals.

    Advantages are computed once per batch with V_old; the E-step (top-k selection,
    weights and the temperature loss) runs on each minibatch's advantages, so with one
    minibatch (the default) it is exactly the batch-level E-step of the paper.
    """

    name = "vmpo"

    def __init__(self, cfg: ControlConfig, agent: Agent) -> None:
        super().__init__(cfg, agent)
        self.xi_eta = nn.Parameter(inverse_temperature_param(cfg.eta_init))
        self.gaussian = isinstance(agent.policy_head, GaussianHead)
        if self.gaussian:
            self.xi_alpha_mu = nn.Parameter(inverse_temperature_param(cfg.alpha_init))
            self.xi_alpha_sigma = nn.Parameter(inverse_temperature_param(cfg.alpha_init))
        else:
            self.xi_alpha = nn.Parameter(inverse_temperature_param(cfg.alpha_init))

    def dual_parameters(self):
        return list(self.parameters())

    @property
    def eta(self) -> float:
        return float(temperature(self.xi_eta.detach()))

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
        if c.num_minibatches == 1:
            # one minibatch = all samples (in some order): the top-k set S does not depend
            # on η, so it is selected once per batch and carried with the samples (k = |S|)
            selected, _ = vmpo_topk(adv.reshape(-1), c.topk_fraction)
            batch.extra["topk"] = selected.reshape(adv.shape)
        return {"adv/mean": adv.mean(), "value/target_mean": ret.mean()}

    def loss(self, params, values, mb, progress, diagnostics=True):
        c = self.cfg
        head = self.agent[0].policy_head
        adv = mb.extra["adv"].reshape(-1)
        # E-step: top-k, weights, temperature dual
        sel = mb.extra.get("topk")
        weights, loss_eta, einfo = vmpo_estep(
            adv, self.xi_eta, c.eps_eta, c.topk_fraction, diagnostics=diagnostics,
            selection=None if sel is None else (sel.reshape(-1), int(sel.sum())))
        logp = head.log_prob(params, mb.actions).reshape(1, -1)
        # M-step: weighted maximum likelihood
        loss_pi, _ = weighted_nll(logp, weights=weights.reshape(1, -1), reduction="sum", diagnostics=False)
        # trust region against π_old (the acting policy's stored parameters)
        m: dict[str, Any] = {}
        if self.gaussian:
            mu_old, std_old = GaussianHead.split(mb.params)
            mu, std = GaussianHead.split(params)
            kl_mu, kl_sigma = gaussian_kl_decoupled(mu_old, std_old, mu, std)
            loss_a_mu, ainfo_mu = alpha_trust_region(kl_mu, self.xi_alpha_mu, c.eps_alpha_mu)
            loss_a_sig, ainfo_sig = alpha_trust_region(kl_sigma, self.xi_alpha_sigma, c.eps_alpha_sigma)
            loss_alpha = loss_a_mu + loss_a_sig
            m.update({
                "mstep/kl": (kl_mu + kl_sigma).detach(), "mstep/kl_mu": kl_mu.detach(),
                "mstep/kl_sigma": kl_sigma.detach(), "mstep/alpha": ainfo_mu.alpha,
                "mstep/alpha_mu": ainfo_mu.alpha, "mstep/alpha_sigma": ainfo_sig.alpha,
            })
        else:
            kl = categorical_kl(mb.params, params).mean()
            loss_alpha, ainfo = alpha_trust_region(kl, self.xi_alpha, c.eps_alpha)
            m.update({"mstep/kl": kl.detach(), "mstep/alpha": ainfo.alpha})
        vloss, _ = value_loss(values, None, mb.extra["returns"], diagnostics=False)
        loss = loss_pi + loss_eta + loss_alpha + c.vf_coef * vloss
        if not diagnostics:
            return loss, {}
        m.update({
            "loss/policy": loss_pi.detach(), "loss/value": vloss.detach(),
            "loss/temperature": loss_eta.detach(), "loss/alpha": loss_alpha.detach(),
            "estep/eta": einfo.eta, "estep/ess": einfo.ess,
            "estep/selected_fraction": einfo.selected_fraction,
            "estep/weight_entropy": einfo.weight_entropy,
            "entropy": self.entropy(params.detach()).mean(),
        })
        return loss, m


ALGORITHMS: dict[str, type[Algorithm]] = {"ppo": PPO, "vmpo": VMPO}


def build_algorithm(cfg: ControlConfig, agent: Agent) -> Algorithm:
    from emrl.errors import unknown_name_error

    if cfg.algo not in ALGORITHMS:
        raise unknown_name_error("algorithm", cfg.algo, ALGORITHMS)
    return ALGORITHMS[cfg.algo](cfg, agent)
