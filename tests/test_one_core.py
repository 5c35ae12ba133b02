"""One EM core for both domains: the LM and the control V-MPO share the dual holder and
its schedule (same advantages -> same η and α trajectory) and log the same metric keys
for the shared quantities (DESIGN.md's metric table, ``emrl.metrics.SHARED_METRICS``)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "lm"))  # the LM tests' tiny model and task

from trainer_helpers import make_trainer, rl_config  # noqa: E402

from emrl.api import VMPOConfig  # noqa: E402
from emrl.control.algos import build_algorithm  # noqa: E402
from emrl.control.config import ControlConfig  # noqa: E402
from emrl.control.envs import make_vec_env  # noqa: E402
from emrl.control.rollout import Actor  # noqa: E402
from emrl.control.train import build_agent, train  # noqa: E402
from emrl.lm.train_config import RLConfig  # noqa: E402
from emrl.metrics import SHARED_METRICS, read_metrics  # noqa: E402
from emrl.seeding import seed_everything  # noqa: E402

T, N = 8, 4  # control unroll x envs = 32 advantages; LM: 8 prompts x 4 samples = 32
EPS_ETA, TOP, ETA0, ALPHA0, LR, EPS_ALPHA = 0.1, 0.5, 1.0, 1.0, 0.05, 0.01


def _control():
    seed_everything(0)
    cfg = ControlConfig(env="CartPole-v1", algo="vmpo", num_envs=N, unroll_length=T, dual_lr=LR,
                        eps_eta=EPS_ETA, top_fraction=TOP, eta_init=ETA0, alpha_init=ALPHA0,
                        eps_alpha=EPS_ALPHA, adam_eps=1e-8,
                        dual_schedule="update")  # the LM default; control's is minibatch  # the LM duals' Adam ε (torch default)
    envs = make_vec_env(cfg.env, N)
    agent = build_agent(cfg, envs.single_observation_space, envs.single_action_space)
    actor = Actor(envs, agent, cfg.env, seed=0, obs_rms=None, device=torch.device("cpu"))
    return cfg, agent, actor, envs, build_algorithm(cfg, agent)


def _lm(tmp_path):
    cfg = rl_config(algo="vmpo", baseline="batch_mean", num_samples=4, batch_size=8, min_advantage=None,
                    eps_eta=EPS_ETA, top_fraction=TOP, eta_init=ETA0, alpha_init=ALPHA0, dual_lr=LR,
                    eps_alpha=EPS_ALPHA, kl_backtrack=None, kl_adapt_lr=False)
    return make_trainer(cfg, tmp_path, out=None)


def _lm_batch(tr, adv):
    """A scored LM batch whose batch-mean advantages are ``adv`` (rewards = adv, mean 0)."""
    rows = tr.task.train[: len(adv) // tr.cfg.num_samples]
    k = tr.cfg.num_samples
    b = tr.encode([r["prompt"] for r in rows for _ in range(k)], [f"{i % 7}a" for i in range(len(adv))],
                  [r for r in rows for _ in range(k)])
    b["rewards"] = (adv - adv.mean()).float()
    return tr.algo.finish_batch(tr.ctx, b)


def test_same_advantages_give_the_same_eta_and_alpha_on_lm_and_control(tmp_path):
    ccfg, agent, actor, envs, calgo = _control()
    tr = _lm(tmp_path)
    gen = torch.Generator().manual_seed(3)
    traj = []
    for _ in range(5):
        adv = torch.randn(T * N, generator=gen) * 3.0
        adv = adv - adv.mean()
        # control: its E-step on these advantages, then its α step on the KL it measures
        batch = actor.collect(ccfg.unroll_length)
        w_c, m_c = calgo.estep(adv.reshape(T, N))
        batch.extra.update(adv=adv.reshape(T, N), returns=batch.values, weights=w_c)
        with torch.no_grad():  # the policy moves: a non-zero KL to π_old
            for p in agent.policy_head.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        kl = calgo.finish_update(batch)["mstep/kl"]
        # LM: the V-MPO plug-in's E-step on the same advantages, then the M-step's trust-region
        # settling told that the update realised the same KL
        m_l = tr.algo.estep(tr.ctx, _lm_batch(tr, adv))
        fin = tr.mstep.settle_trust_region(None, [], None, EPS_ALPHA, kl=kl)
        assert m_l["estep/eta"] == pytest.approx(m_c["estep/eta"], rel=1e-5)
        assert m_l["estep/selected_fraction"] == pytest.approx(m_c["estep/selected_fraction"], rel=1e-6)
        traj.append((tr.duals.eta, calgo.duals.eta, tr.duals.get("alpha"), calgo.duals.get("alpha"),
                     fin["mstep/alpha"]))
    envs.close()
    for eta_l, eta_c, a_l, a_c, a_logged in traj:
        assert eta_l == pytest.approx(eta_c, rel=1e-5)
        assert a_l == pytest.approx(a_c, rel=1e-5)
        assert a_logged == pytest.approx(a_l)
    assert traj[-1][0] != pytest.approx(ETA0) and traj[-1][2] != pytest.approx(ALPHA0)  # they moved


def test_same_advantages_give_the_same_weights_on_lm_and_control(tmp_path):
    _, _, _, envs, calgo = _control()
    envs.close()
    tr = _lm(tmp_path)
    adv = torch.randn(T * N, generator=torch.Generator().manual_seed(5)) * 2.0
    adv = adv - adv.mean()
    w_c, _ = calgo.estep(adv.reshape(T, N))
    b = _lm_batch(tr, adv)
    tr.algo.estep(tr.ctx, b)
    w_l = b["weights"]
    torch.testing.assert_close(w_l / w_l.sum(), (w_c.reshape(-1) / w_c.sum()).float(), rtol=1e-5, atol=1e-7)


def _keys(path):
    rows = [r for r in read_metrics(path) if "loss/policy" in r]
    assert rows
    return set.intersection(*(set(r) for r in rows))


@pytest.mark.parametrize("algo", ["vmpo", "ppo"])
def test_lm_and_control_log_the_same_keys_for_shared_quantities(tmp_path, algo):
    ccfg = ControlConfig(algo=algo, num_envs=4, unroll_length=16, total_steps=128, epochs=2,
                         num_minibatches=2, eval_every=0, eval_episodes=1, save_every=0)
    train(ccfg, tmp_path / "control")
    tr = make_trainer(rl_config(algo=algo, max_steps=3), tmp_path, out="lm")
    tr.train()
    shared = set(SHARED_METRICS["common"]) | set(SHARED_METRICS[algo]) | {"wall_time"}
    c_keys, l_keys = _keys(tmp_path / "control" / "metrics.jsonl"), _keys(tmp_path / "lm" / "metrics.jsonl")
    assert shared <= c_keys, sorted(shared - c_keys)
    assert shared <= l_keys, sorted(shared - l_keys)
    # the quantities both sides have go by one name: no old spellings on either side
    for old in ("entropy", "grad_norm", "ppo/entropy"):
        assert old not in c_keys and old not in l_keys


def test_old_lm_dual_names_still_work_and_warn():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = RLConfig(eta_lr=0.2)
        step = RLConfig(dual_schedule="step")
        api = VMPOConfig(alpha_lr=0.3, output_dir="unused")
    assert cfg.dual_lr == 0.2 and step.dual_schedule == "minibatch" and api.dual_lr == 0.3
    assert any("eta_lr" in str(w.message) for w in caught)
    assert any("dual_schedule='step'" in str(w.message) for w in caught)
