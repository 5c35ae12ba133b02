"""V-MPO's duals on the control side follow the one schedule of emrl.objectives.duals:
the same advantages give the same η and α trajectory as the holder driven directly
the way the language-model loop drives it (schedule "update")."""

from __future__ import annotations

import pytest
import torch

from emrl.control.algos import build_algorithm
from emrl.control.config import ControlConfig
from emrl.control.envs import make_vec_env
from emrl.control.rollout import Actor
from emrl.control.train import build_agent, train
from emrl.metrics import SHARED_METRICS, read_metrics
from emrl.objectives.duals import Duals
from emrl.seeding import seed_everything


def _algo(env_id="CartPole-v1", T=16, N=4, **kw):
    seed_everything(0)
    cfg = ControlConfig(env=env_id, algo="vmpo", num_envs=N, unroll_length=T, dual_lr=0.05, **kw)
    envs = make_vec_env(env_id, N)
    agent = build_agent(cfg, envs.single_observation_space, envs.single_action_space)
    actor = Actor(envs, agent, env_id, seed=0, obs_rms=None, device=torch.device("cpu"))
    return cfg, agent, actor, envs


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_same_advantages_give_the_same_eta_and_alpha_trajectory(env_id):
    cfg, agent, actor, envs = _algo(env_id, dual_schedule="update")  # the LM default
    algo = build_algorithm(cfg, agent)
    # the holder as the LM loop drives it: E-step + one η step per batch, one α step per
    # update on the realised KL
    ref = Duals(eta_init=cfg.eta_init, alpha_init=cfg.alpha_init, gaussian=algo.gaussian, lr=0.05,
                adam_eps=cfg.adam_eps, schedule="update")
    gen = torch.Generator().manual_seed(1)
    etas, alphas = [], []
    for _ in range(5):
        batch = actor.collect(cfg.unroll_length)
        adv = torch.randn(cfg.unroll_length, cfg.num_envs, generator=gen) * 3.0
        w, m = algo.estep(adv)  # the control E-step on these advantages
        w_ref, _, info = ref.update_temperature(adv.reshape(-1), cfg.eps_eta, cfg.top_fraction)
        torch.testing.assert_close(w.reshape(-1), w_ref)
        assert m["estep/eta"] == pytest.approx(float(info.eta))
        batch.extra.update(adv=adv, returns=batch.values, weights=w)
        with torch.no_grad():  # the policy moves between updates: a non-zero KL to π_old
            for p in agent.policy_head.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        fin = algo.finish_update(batch)
        for name in algo.duals.names[1:]:
            kl = fin["mstep/kl" if name == "alpha" else f"mstep/kl{name[5:]}"]
            ref.update_alpha(kl, algo.eps_alpha[name], name)
        etas.append((algo.duals.eta, ref.eta))
        alphas.append([(algo.duals.get(n), ref.get(n)) for n in ref.names[1:]])
    envs.close()
    for a, b in etas:
        assert a == pytest.approx(b, rel=1e-6)
    for pairs in alphas:
        for a, b in pairs:
            assert a == pytest.approx(b, rel=1e-6)
    assert etas[-1][0] != pytest.approx(cfg.eta_init)  # they did move
    assert alphas[-1][0][0] != pytest.approx(cfg.alpha_init)


@pytest.mark.parametrize("schedule, steps", [("update", 4), ("minibatch", 4 * 3 * 2)])
def test_duals_step_once_per_update_or_once_per_minibatch(tmp_path, schedule, steps):
    cfg = ControlConfig(algo="vmpo", num_envs=4, unroll_length=16, total_steps=256, epochs=3,
                        num_minibatches=2, eval_every=0, eval_episodes=1, save_every=0,
                        dual_schedule=schedule)
    train(cfg, tmp_path / "run")
    from emrl.checkpoint import latest_checkpoint, load_checkpoint

    state, _ = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    opt = state["algo"]["duals"]["optimizer"]["state"]
    assert [int(s["step"]) for s in opt.values()] == [steps, steps]  # η and α
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss/policy" in r]
    for key in (*SHARED_METRICS["common"], *SHARED_METRICS["vmpo"], "policy/entropy"):
        assert all(key in r for r in rows), key
    assert not any("entropy" in r or "grad_norm" in r for r in rows)  # the old bare names are gone


def test_ppo_logs_the_shared_metric_names(tmp_path):
    cfg = ControlConfig(algo="ppo", num_envs=4, unroll_length=16, total_steps=128, epochs=2,
                        eval_every=0, eval_episodes=1, save_every=0)
    train(cfg, tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss/policy" in r]
    assert rows
    for key in (*SHARED_METRICS["common"], *SHARED_METRICS["ppo"], "policy/entropy"):
        assert all(key in r for r in rows), key
