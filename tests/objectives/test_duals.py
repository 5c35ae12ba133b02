"""The dual-variable holder (emrl.objectives.duals): values, schedules, persistence."""

import pytest
import torch

import emrl.objectives as O
from emrl.objectives.duals import DUAL_SCHEDULES, Duals


def test_initial_values_and_names():
    d = Duals(eta_init=0.5, alpha_init=2.0, lr=0.1)
    assert d.names == ("eta", "alpha")
    assert d.eta == pytest.approx(0.5, rel=1e-6)
    assert d.get("alpha") == pytest.approx(2.0, rel=1e-6)
    g = Duals(alpha_init=1.5, gaussian=True)
    assert g.names == ("alpha_mu", "alpha_sigma")
    with pytest.raises(KeyError, match="no dual 'eta'"):
        g.value("eta")
    log = Duals(eta_init=3.0, eta_param="log")
    assert log.eta == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "eta_init, alpha_init or both"),
    ({"eta_init": 1.0, "schedule": "epoch"}, "dual_schedule must be one of"),
    ({"eta_init": -1.0}, "eta_init must be > 0"),
    ({"eta_init": 1.0, "lr": 0.0}, "dual_lr must be > 0"),
    ({"eta_init": 1.0, "eta_param": "exp"}, "eta_param must be one of"),
])
def test_bad_arguments_name_what_is_wrong(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Duals(**kwargs)


def test_update_temperature_is_one_adam_step_on_the_estep_loss():
    adv = torch.linspace(-2, 3, 40)
    d = Duals(eta_init=1.0, lr=0.05)
    xi = O.inverse_temperature_param(1.0).clone().requires_grad_(True)
    ref = torch.optim.Adam([xi], lr=0.05)
    for _ in range(5):
        w, loss, info = d.update_temperature(adv, 0.1, 0.5)
        w_ref, loss_ref, info_ref = O.vmpo_estep(adv, xi, 0.1, 0.5)
        ref.zero_grad()
        loss_ref.backward()
        ref.step()
        torch.testing.assert_close(w, w_ref)
        assert float(info.eta) == pytest.approx(float(info_ref.eta))
        assert d.eta == pytest.approx(float(O.temperature(xi.detach())))
    # the dual moved η (KL(w‖uniform) differs from ε_η at η = 1 on these advantages)
    assert d.eta != pytest.approx(1.0)


def test_update_alpha_rises_over_budget_and_falls_under():
    over, under = Duals(alpha_init=1.0, lr=0.1), Duals(alpha_init=1.0, lr=0.1)
    for _ in range(3):
        info = over.update_alpha(0.05, eps_alpha=0.01)  # KL over the budget: α rises
        under.update_alpha(0.0, eps_alpha=0.01)  # no KL: α falls
    assert over.get("alpha") > float(info.alpha) > 1.0  # info.alpha: α before the step
    assert under.get("alpha") < 1.0


def test_steps_move_only_the_duals_with_a_gradient():
    d = Duals(eta_init=1.0, alpha_init=1.0, lr=0.1)
    d.update_alpha(1.0, 0.01)
    assert d.eta == pytest.approx(1.0, rel=1e-6)
    assert d.get("alpha") != pytest.approx(1.0)


def test_minibatch_schedule_accumulates_into_one_step():
    d = Duals(eta_init=1.0, alpha_init=1.0, lr=0.1, schedule="minibatch")
    theta = torch.zeros(3, requires_grad=True)
    kl = (theta - 1.0).pow(2).sum() * 0.01
    _, loss_eta, _ = d.temperature_loss(torch.randn(16), 0.1, 0.5)
    loss_a, info = d.alpha_loss(kl, 0.01)
    (loss_eta + loss_a).backward()
    assert theta.grad is not None and all(p.grad is not None for p in d.parameters())
    torch.testing.assert_close(theta.grad, 2 * 0.01 * (theta.detach() - 1.0) * float(info.alpha))
    d.optimizer_step()
    assert all(p.grad is None for p in d.parameters())
    assert d.eta != pytest.approx(1.0) and d.get("alpha") != pytest.approx(1.0)


def test_kl_penalty_is_stop_gradient_alpha_times_kl():
    d = Duals(alpha_init=2.0)
    kl = torch.tensor(0.3, requires_grad=True)
    pen = d.kl_penalty(kl)
    pen.backward()
    assert float(pen.detach()) == pytest.approx(0.6, rel=1e-5)
    assert d.params["alpha"].grad is None
    assert float(kl.grad) == pytest.approx(2.0, rel=1e-5)


def test_state_dict_round_trip_continues_the_same_trajectory(tmp_path):
    from emrl.checkpoint import load_checkpoint, save_checkpoint

    adv = torch.randn(32, generator=torch.Generator().manual_seed(0))
    a = Duals(eta_init=1.0, alpha_init=1.0, lr=0.05)
    for _ in range(3):
        a.update_temperature(adv, 0.1, 0.25)
        a.update_alpha(0.02, 0.01)
    save_checkpoint(tmp_path / "c", {"duals": a.state_dict()})
    b = Duals(eta_init=5.0, alpha_init=5.0, lr=0.05)
    b.load_state_dict(load_checkpoint(tmp_path / "c")[0]["duals"])
    for d in (a, b):
        d.update_temperature(adv, 0.1, 0.25)
        d.update_alpha(0.02, 0.01)
    assert a.eta == b.eta and a.get("alpha") == b.get("alpha")
    with pytest.raises(ValueError, match="holds"):
        Duals(eta_init=1.0).load_state_dict(a.state_dict())


def test_nothing_selected_leaves_eta_in_place():
    d = Duals(eta_init=1.0, lr=0.5)
    w, _, info = d.update_temperature(torch.full((8,), -1.0), 0.1, 0.5, min_advantage=0.0)
    assert info.k == 0 and float(w.sum()) == 0.0
    assert d.eta == pytest.approx(1.0, rel=1e-6)


def test_schedules_are_exported():
    assert O.DUAL_SCHEDULES == DUAL_SCHEDULES == ("update", "minibatch")
    assert O.Duals is Duals
