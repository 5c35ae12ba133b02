"""The dual variables of V-MPO in one holder: the temperature η and the trust-region
multipliers α (categorical policies) or α_μ, α_Σ (Gaussian policies).

Each dual is a positive function of an unconstrained parameter ξ
(:func:`emrl.objectives.positive.temperature`, softplus by default; spec §6 "Positive
Parameterisation of the Temperature"), and all of them are trained by one Adam of
their own (learning rate ``lr``, not annealed, not clipped) — never by the policy's
optimiser. Both training loops (language models and control) build a :class:`Duals`
and follow the same :data:`DUAL_SCHEDULES`:

``"update"`` (the language models' default)
    Once per batch of rollouts, **before** the M-step: the E-step (top-k selection and
    weights at the current η) and one step of the temperature dual
    ``L_η = η(ε_η + g(η))`` (:meth:`Duals.update_temperature`). During the M-step the
    policy sees only ``sg[α]·KL`` (:meth:`Duals.kl_penalty`); **after** it, α takes one
    step on ``α(ε_α − sg[KL_realised])`` with the KL the update realised
    (:meth:`Duals.update_alpha`). η and α each take one step per update.
``"minibatch"`` (control's default; chosen by measurement, see ``docs/architecture.md``)
    Inside every minibatch loss: the E-step and ``L_η`` on the minibatch's advantages
    (:meth:`Duals.temperature_loss`) and the full spec §5 eq. (1) term
    ``α(ε_α − sg[KL]) + sg[α]·KL`` (:meth:`Duals.alpha_loss`) are added to the loss; the
    loop back-propagates it and calls :meth:`Duals.optimizer_step` after each policy
    step. η and α then take ``epochs × minibatches`` steps per update.

:meth:`Duals.state_dict` holds the parameters and the optimiser state (data only: it
goes into a checkpoint as it is).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from emrl.objectives._checks import check_choice, check_positive
from emrl.objectives.estep import VMPOInfo, vmpo_estep
from emrl.objectives.positive import TEMPERATURE_PARAMS, inverse_temperature_param, temperature
from emrl.objectives.trust_region import AlphaInfo, alpha_trust_region

__all__ = ["DUAL_SCHEDULES", "Duals"]

#: how often the duals step: once per update, or with every minibatch (module docstring)
DUAL_SCHEDULES = ("update", "minibatch")


class Duals:
    """η and α (or α_μ, α_Σ) with their positive maps and their own Adam.

    Args:
        eta_init: initial temperature η > 0, or ``None`` for no temperature (e.g. a fixed
            η, or an algorithm with the trust region only).
        alpha_init: initial multiplier(s) α > 0, or ``None`` for no trust region.
        gaussian: two multipliers ``alpha_mu`` / ``alpha_sigma`` (decoupled Gaussian
            KL) instead of one ``alpha``.
        lr: the duals' Adam learning rate (one for all of them). adam_eps: its ε.
        schedule: ``"update"`` or ``"minibatch"`` (see the module docstring); the holder
            records it for the loop, whose steps it shapes.
        eta_param: ``"softplus"`` (spec) or ``"log"`` for η (α always uses softplus).
        eta_min, alpha_min: floors of the positive maps.
        device: where the parameters live.
    """

    def __init__(
        self, *, eta_init: float | None = None, alpha_init: float | None = None, gaussian: bool = False,
        lr: float = 1e-3, adam_eps: float = 1e-8, schedule: str = "update", eta_param: str = "softplus",
        eta_min: float = 1e-8, alpha_min: float = 0.0, device: torch.device | str | None = None,
    ) -> None:
        self.schedule = check_choice(schedule, "dual_schedule", DUAL_SCHEDULES)
        self.eta_param = check_choice(eta_param, "eta_param", TEMPERATURE_PARAMS)
        self.eta_min = check_positive(eta_min, "eta_min", allow_zero=True)
        self.alpha_min = check_positive(alpha_min, "alpha_min", allow_zero=True)
        lr = check_positive(lr, "dual_lr")
        # name -> (positive map, floor) and name -> parameter ξ
        self._maps: dict[str, tuple[str, float]] = {}
        self.params: dict[str, torch.nn.Parameter] = {}
        if eta_init is not None:
            self._add("eta", eta_init, self.eta_param, self.eta_min, device)
        if alpha_init is not None:
            for name in (("alpha_mu", "alpha_sigma") if gaussian else ("alpha",)):
                self._add(name, alpha_init, "softplus", self.alpha_min, device)
        if not self.params:
            raise ValueError("Duals needs eta_init, alpha_init or both")
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=lr, eps=adam_eps)

    def _add(self, name: str, init: float, param: str, floor: float, device) -> None:
        xi = inverse_temperature_param(check_positive(init, f"{name}_init"), param, floor)
        self.params[name] = torch.nn.Parameter(xi.to(device))
        self._maps[name] = (param, floor)

    # values -------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.params)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.params.values())

    def value(self, name: str) -> Tensor:
        """The dual ``name`` (``"eta"``, ``"alpha"``, ``"alpha_mu"``, ``"alpha_sigma"``),
        differentiable w.r.t. its parameter."""
        if name not in self.params:
            raise KeyError(f"no dual {name!r} in this holder; it has {', '.join(self.params)}")
        param, floor = self._maps[name]
        return temperature(self.params[name], param, floor)

    def get(self, name: str) -> float:
        """The current value of the dual ``name`` as a float."""
        return float(self.value(name).detach())

    @property
    def eta(self) -> float:
        return self.get("eta")

    # losses -------------------------------------------------------------------
    def temperature_loss(
        self, advantages: Tensor, eps_eta: float, top_fraction: float, mask: Tensor | None = None, *,
        selection: tuple[Tensor, int] | None = None, diagnostics: bool = True,
        min_advantage: float | None = None,
    ) -> tuple[Tensor, Tensor, VMPOInfo]:
        """The V-MPO E-step at the current η: ``(weights, L_η, info)`` of
        :func:`emrl.objectives.estep.vmpo_estep` on this holder's ξ_η."""
        return vmpo_estep(advantages, self.params["eta"], eps_eta, top_fraction, mask, self.eta_param,
                          self.eta_min, selection=selection, diagnostics=diagnostics,
                          min_advantage=min_advantage)

    def alpha_loss(self, kl: Tensor, eps_alpha: float, name: str = "alpha") -> tuple[Tensor, AlphaInfo]:
        """Spec §5 eq. (1), both halves: ``α(ε_α − sg[KL]) + sg[α]·KL``
        (:func:`emrl.objectives.trust_region.alpha_trust_region`)."""
        param, floor = self._maps[name]
        return alpha_trust_region(kl, self.params[name], eps_alpha, param, floor)

    def kl_penalty(self, kl: Tensor, name: str = "alpha") -> Tensor:
        """The policy's half of eq. (1), ``sg[α]·KL`` (schedule ``"update"``)."""
        return self.value(name).detach().to(kl.dtype) * kl

    # steps --------------------------------------------------------------------
    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self, reduce_grads: Callable[[Tensor], Tensor] | None = None) -> None:
        """One Adam step on the gradients the duals hold, then clear them. A dual without
        a gradient does not move. ``reduce_grads``: e.g. an all-reduce over processes,
        applied to each gradient first."""
        if reduce_grads is not None:
            for p in self.params.values():
                if p.grad is not None:
                    p.grad = reduce_grads(p.grad)
        self.optimizer.step()
        self.zero_grad()

    def step(self, loss: Tensor, reduce_grads: Callable[[Tensor], Tensor] | None = None) -> None:
        """One Adam step on ``loss`` (a dual loss, differentiable w.r.t. ξ only)."""
        self.zero_grad()
        loss.backward()
        self.optimizer_step(reduce_grads)

    def update_temperature(
        self, advantages: Tensor, eps_eta: float, top_fraction: float, mask: Tensor | None = None, *,
        min_advantage: float | None = None, reduce_grads: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, VMPOInfo]:
        """Schedule ``"update"``'s E-step: weights at the current η, then one step of
        ``L_η`` (none when nothing is selected: η has no data). Returns
        ``(weights, L_η detached, info)``; ``info.eta`` is the η the weights used."""
        w, loss_eta, info = self.temperature_loss(advantages, eps_eta, top_fraction, mask,
                                                  min_advantage=min_advantage)
        if info.k > 0:
            self.step(loss_eta, reduce_grads)
        return w, loss_eta.detach(), info

    def update_alpha(self, kl: float | Tensor, eps_alpha: float, name: str = "alpha") -> AlphaInfo:
        """Schedule ``"update"``'s α step: one step on ``α(ε_α − sg[KL])`` with the KL the
        update realised. Returns the :class:`AlphaInfo` (its ``alpha`` is α before the step)."""
        p = self.params[name]
        kl_t = torch.as_tensor(kl, dtype=p.dtype, device=p.device).detach().reshape(())
        loss, info = self.alpha_loss(kl_t, eps_alpha, name)
        self.step(loss)
        return info

    # persistence --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"params": {k: p.detach().clone() for k, p in self.params.items()},
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; raises ``ValueError`` naming what does not fit."""
        if not isinstance(state, dict) or "params" not in state or "optimizer" not in state:
            raise ValueError("dual state must be a mapping with 'params' and 'optimizer' (Duals.state_dict())")
        if set(state["params"]) != set(self.params):
            raise ValueError(f"dual state holds {sorted(state['params'])}, this holder {sorted(self.params)}")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state["params"][k])
        self.optimizer.load_state_dict(state["optimizer"])
