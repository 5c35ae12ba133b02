"""Mechanics of the agents: targets, E-step top-k, α response, Gaussian KL split,
and the actor's outputs equal the update's recomputation for the LSTM core."""

from __future__ import annotations

import pytest
import torch

from emrl.control.algos import VMPO, build_algorithm
from emrl.control.config import ControlConfig
from emrl.control.envs import make_vec_env
from emrl.control.rollout import Actor
from emrl.control.train import Minibatch, build_agent, minibatches
from emrl.nn.heads import GaussianHead
from emrl.objectives.returns import gae, nstep_targets
from emrl.seeding import seed_everything


def _setup(env_id="CartPole-v1", T=32, N=4, **kw):
    seed_everything(0)
    cfg = ControlConfig(env=env_id, num_envs=N, unroll_length=T, **kw)
    envs = make_vec_env(env_id, N)
    agent = build_agent(cfg, envs.single_observation_space, envs.single_action_space)
    actor = Actor(envs, agent, env_id, seed=0, obs_rms=None, device=torch.device("cpu"))
    batch = actor.collect(T)
    envs.close()
    return cfg, agent, batch


def _full_mb(batch) -> Minibatch:
    return Minibatch(obs=batch.obs, actions=batch.actions, logp=batch.logp, params=batch.params,
                     values=batch.values, reset=batch.reset, state0=batch.state0,
                     extra=dict(batch.extra))


def test_lstm_actor_outputs_equal_update_recomputation():
    cfg, agent, batch = _setup(core="lstm", lstm_hidden_size=16, T=40, N=3)
    assert batch.reset[1:].any(), "CartPole episodes under a random policy end within 40 steps"
    params, values, _ = agent(batch.obs, batch.state0, batch.reset)
    torch.testing.assert_close(params, batch.params, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, batch.values, atol=1e-5, rtol=1e-5)
    # minibatches over envs carry the stored state of those envs
    gen = torch.Generator().manual_seed(0)
    for mb in minibatches(batch, 3, stateful=True, gen=gen):
        p, _, _ = agent(mb.obs, mb.state0, mb.reset)
        torch.testing.assert_close(p, mb.params, atol=1e-5, rtol=1e-5)


def test_rollout_flags_follow_the_objectives_conventions():
    _, _, batch = _setup(T=64, N=2)
    assert batch.reset[0].all()
    torch.testing.assert_close(batch.reset[1:], batch.dones[:-1])
    # no truncation within 64 CartPole steps: next values are the following values
    not_done = ~batch.dones[:-1]
    torch.testing.assert_close(batch.next_values[:-1][not_done], batch.values[1:][not_done])


@pytest.mark.parametrize("targets", ["nstep", "gae"])
def test_vmpo_uses_the_configured_targets(targets):
    cfg, agent, batch = _setup(algo="vmpo", vmpo_targets=targets, nstep=5, gae_lambda=0.9)
    algo = build_algorithm(cfg, agent)
    algo.prepare(batch)
    args = (batch.rewards, batch.values, batch.next_values, batch.terminated, batch.dones, cfg.gamma)
    nstep = nstep_targets(*args, 5)
    adv_gae, ret_gae = gae(*args, 0.9)
    if targets == "nstep":
        torch.testing.assert_close(batch.extra["returns"], nstep)
        torch.testing.assert_close(batch.extra["adv"], nstep - batch.values)
        assert not torch.allclose(nstep, ret_gae)
    else:
        torch.testing.assert_close(batch.extra["returns"], ret_gae)
        torch.testing.assert_close(batch.extra["adv"], adv_gae)


def test_vmpo_estep_keeps_the_top_half_and_only_they_move_the_policy():
    cfg, agent, batch = _setup(algo="vmpo", dual_schedule="minibatch")
    algo = build_algorithm(cfg, agent)
    algo.prepare(batch)
    mb = _full_mb(batch)
    params = batch.params.clone().requires_grad_(True)  # = π_old: KL gradient is 0 here
    values = batch.values.clone().requires_grad_(True)
    loss, m = algo.loss(params, values, mb, progress=1.0)
    assert m["estep/selected_fraction"] == 0.5
    loss.backward()
    moved = params.grad.abs().sum(-1) > 1e-6  # [T, N]; KL grad at π_old is ~0
    adv = batch.extra["adv"]
    assert int(moved.sum()) == adv.numel() // 2
    assert adv[moved].min() >= adv[~moved].max()
    # one minibatch: S is selected once in prepare and carried with the samples; the
    # loss equals the one that selects on the minibatch itself
    assert torch.equal(batch.extra["topk"], moved)
    mb_own = _full_mb(batch)
    del mb_own.extra["topk"]
    loss_own, _ = algo.loss(batch.params.clone(), batch.values.clone(), mb_own, progress=1.0)
    assert torch.equal(loss.detach(), loss_own.detach())


def _alpha_after_step(algo, params, mb) -> tuple[float, float]:
    opt = torch.optim.SGD(algo.dual_parameters(), lr=0.5)
    loss, m = algo.loss(params, mb.values.clone(), mb, progress=1.0)
    a0 = float(m["mstep/alpha"])
    opt.zero_grad()
    loss.backward()
    opt.step()
    _, m2 = algo.loss(params.detach(), mb.values.clone(), mb, progress=1.0)
    return a0, float(m2["mstep/alpha"])


def test_alpha_rises_when_kl_exceeds_bound_and_falls_below():
    cfg, agent, batch = _setup(algo="vmpo", eps_alpha=0.01, dual_schedule="minibatch")
    algo = build_algorithm(cfg, agent)
    algo.prepare(batch)
    mb = _full_mb(batch)
    far = batch.params + torch.randn_like(batch.params) * 3.0  # KL >> 0.01
    a0, a1 = _alpha_after_step(algo, far.requires_grad_(True), mb)
    assert a1 > a0
    algo2 = build_algorithm(cfg, agent)
    b0, b1 = _alpha_after_step(algo2, batch.params.clone().requires_grad_(True), mb)  # KL = 0
    assert b1 < b0


def test_gaussian_vmpo_uses_decoupled_mean_and_covariance_kl():
    cfg, agent, batch = _setup(env_id="Pendulum-v1", algo="vmpo", T=16, N=2, dual_schedule="minibatch")
    algo = build_algorithm(cfg, agent)
    assert isinstance(algo, VMPO) and algo.gaussian
    assert algo.duals.names == ("eta", "alpha_mu", "alpha_sigma")
    algo.prepare(batch)
    mb = _full_mb(batch)
    mu, std = GaussianHead.split(batch.params)
    full = torch.distributions.kl_divergence
    # only the mean moves: all KL is in the mean part
    p_mu = torch.cat([mu + 0.3, std], -1)
    _, m = algo.loss(p_mu, batch.values, mb, progress=1.0)
    expect = full(torch.distributions.Normal(mu, std), torch.distributions.Normal(mu + 0.3, std)).sum(-1).mean()
    assert float(m["mstep/kl_sigma"]) == pytest.approx(0.0, abs=1e-7)
    assert float(m["mstep/kl_mu"]) == pytest.approx(float(expect), rel=1e-4)
    # only the std moves: all KL is in the covariance part
    p_sig = torch.cat([mu, std * 1.5], -1)
    _, m = algo.loss(p_sig, batch.values, mb, progress=1.0)
    expect = full(torch.distributions.Normal(mu, std), torch.distributions.Normal(mu, std * 1.5)).sum(-1).mean()
    assert float(m["mstep/kl_mu"]) == pytest.approx(0.0, abs=1e-7)
    assert float(m["mstep/kl_sigma"]) == pytest.approx(float(expect), rel=1e-4)
    # separate multipliers: only α_Σ's bound is exceeded -> only α_Σ rises
    opt = torch.optim.SGD(algo.dual_parameters(), lr=0.5)
    loss, m0 = algo.loss(p_sig, batch.values, mb, progress=1.0)
    opt.zero_grad()
    loss.backward()
    opt.step()
    _, m1 = algo.loss(p_sig, batch.values, mb, progress=1.0)
    assert float(m1["mstep/alpha_sigma"]) > float(m0["mstep/alpha_sigma"])
    assert float(m1["mstep/alpha_mu"]) < float(m0["mstep/alpha_mu"])


@pytest.mark.parametrize("algo", ["ppo", "vmpo"])
def test_lstm_agent_trains_with_env_minibatches(tmp_path, algo):
    from emrl.control.train import train
    from emrl.metrics import read_metrics

    cfg = ControlConfig(algo=algo, core="lstm", lstm_hidden_size=16, num_envs=4, num_minibatches=2,
                        unroll_length=16, epochs=2, total_steps=256, eval_episodes=1,
                        save_every=0)
    final = train(cfg, tmp_path / "run")
    assert final["samples"] == 256
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss/value" in r]
    assert len(rows) == 4 and all(r["mstep/grad_norm"] > 0 for r in rows)


def test_clip_grad_norm_matches_torch():
    from emrl.control.fastopt import clip_grad_norm

    torch.manual_seed(0)
    for scale in (0.01, 10.0):  # below and above the bound
        a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
        b = [torch.nn.Parameter(p.detach().clone()) for p in a]
        for p, q in zip(a, b, strict=True):
            g = torch.randn_like(p) * scale
            p.grad, q.grad = g.clone(), g.clone()
        n1 = clip_grad_norm(a, 0.5)
        n2 = torch.nn.utils.clip_grad_norm_(b, 0.5)
        assert torch.equal(n1, n2)  # the same operations: bit-identical
        for p, q in zip(a, b, strict=True):
            assert torch.equal(p.grad, q.grad)
        assert (scale > 1) == bool(n1 > 0.5)


@pytest.mark.parametrize("fused", [True, False])
def test_adam_step_is_bit_identical_to_opt_step(fused):
    """AdamStep (cached lists + torch's functional adam) equals Adam.step exactly: two
    groups, lr changes, a step where one parameter has no gradient (fallback), and a
    load_state_dict mid-way (the cache must follow the new state)."""
    import copy

    from emrl.control.fastopt import AdamStep

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7)),
         torch.nn.Parameter(torch.randn(()))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]

    def make(ps):
        return torch.optim.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05}], lr=0.01,
                                eps=1e-5, fused=fused, foreach=None if fused else True)

    opt_a, opt_b = make(a), make(b)
    step_a = AdamStep(opt_a)
    for k in range(8):
        if k == 5:  # reload both from a snapshot of b's optimizer
            snap = opt_b.state_dict()  # (deep copies: load_state_dict may keep the tensors)
            opt_a.load_state_dict(copy.deepcopy(snap))
            opt_b.load_state_dict(copy.deepcopy(snap))
        opt_a.param_groups[0]["lr"] = opt_b.param_groups[0]["lr"] = 0.01 * (1 - k / 10)
        for i, (p, q) in enumerate(zip(a, b, strict=True)):
            if k == 3 and i == 1:
                p.grad = q.grad = None
                continue
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        step_a()
        opt_b.step()
        for p, q in zip(a, b, strict=True):
            assert torch.equal(p, q), k
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(opt_a.state[p][key], opt_b.state[q][key])
    assert step_a._cache is not None  # the fast path was in use at the end
    assert all(c[5] for c in step_a._cache) == fused  # fused: the kernels are called directly
    assert float(opt_a.state[a[0]]["step"]) == 8 and float(opt_a.state[a[1]]["step"]) == 7


@pytest.mark.parametrize("core", ["mlp", "lstm"])
def test_prev_action_reward_inputs_are_stored_and_used(core):
    """Spec §8 extra inputs: the batch stores r_{t-1} and one-hot a_{t-1} (zero at episode
    starts); the update's recomputation with them equals what the actor saw, and they
    do change the agent's output (so a wrong stored input would be caught)."""
    cfg, agent, batch = _setup(core=core, lstm_hidden_size=16, T=40, N=3, prev_action_reward=True)
    pa, pr = batch.prev_actions, batch.prev_rewards
    assert pa.shape == (40, 3, 2) and pr.shape == (40, 3)
    assert batch.reset[1:].any()
    start = batch.reset  # episode starts (incl. the very first step): zero inputs
    assert (pa[start] == 0).all() and (pr[start] == 0).all()
    cont = ~batch.reset[1:]
    onehot = torch.nn.functional.one_hot(batch.actions[:-1], 2).float()
    torch.testing.assert_close(pa[1:][cont], onehot[cont])
    torch.testing.assert_close(pr[1:][cont], batch.rewards[:-1][cont])  # reward_scale = 1
    with torch.no_grad():
        params, values, _ = agent(batch.obs, batch.state0, batch.reset, pa, pr)
        torch.testing.assert_close(params, batch.params, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(values, batch.values, atol=1e-5, rtol=1e-5)
        p_wrong, _, _ = agent(batch.obs, batch.state0, batch.reset, torch.zeros_like(pa), pr + 1.0)
        assert not torch.allclose(p_wrong, batch.params, atol=1e-5)
    with pytest.raises(ValueError, match="prev_action"):
        agent(batch.obs, batch.state0, batch.reset)
    gen = torch.Generator().manual_seed(0)
    for mb in minibatches(batch, 3 if core == "lstm" else 2, stateful=core == "lstm", gen=gen):
        assert mb.prev_actions is not None
        with torch.no_grad():
            p, _, _ = agent(mb.obs, mb.state0, mb.reset, *mb.prev())
        torch.testing.assert_close(p, mb.params, atol=1e-5, rtol=1e-5)


def test_training_with_prev_action_reward_and_evaluation(tmp_path):
    from emrl.control.train import load_agent, train

    cfg = ControlConfig(core="lstm", lstm_hidden_size=16, prev_action_reward=True, total_steps=256,
                        num_envs=4, unroll_length=16, num_minibatches=2, epochs=2, eval_every=0,
                        eval_episodes=1, save_every=0)
    final = train(cfg, tmp_path / "run")
    assert final["eval/return"] >= 8  # a CartPole episode lasts >= 8 steps
    agent, cfg2, _ = load_agent(tmp_path / "run")
    assert cfg2.prev_action_reward and agent.prev_action_reward
    assert agent.core.input_size == 4 + 1 + 2  # obs + reward + one-hot action


def test_stateless_rollout_batched_values_and_logp_equal_per_step_ones():
    """The mlp actor computes V(s_t) and log π(a_t|s_t) for the whole rollout at the end;
    they must equal the per-step forward of the acting network."""
    _, agent, batch = _setup(T=24, N=3)
    with torch.no_grad():
        for t in range(24):
            p, v, _ = agent(batch.obs[t:t + 1], (), batch.reset[t:t + 1])
            torch.testing.assert_close(p[0], batch.params[t])
            torch.testing.assert_close(v[0], batch.values[t], atol=1e-6, rtol=1e-6)
            logp = agent.policy_head.log_prob(p[0], batch.actions[t])
            torch.testing.assert_close(logp, batch.logp[t], atol=1e-6, rtol=1e-6)


def test_prev_action_inputs_for_box_actions_are_the_clipped_actions():
    _, agent, batch = _setup("Pendulum-v1", T=8, N=2, prev_action_reward=True, init_std=3.0)
    pa, pr = batch.prev_actions, batch.prev_rewards
    assert pa.shape == (8, 2, 1) and (pa[0] == 0).all() and (pr[0] == 0).all()
    torch.testing.assert_close(pa[1:], batch.actions[:-1].clamp(-2.0, 2.0))  # env bounds ±2
    assert (batch.actions.abs() > 2.0).any()  # std 3: some actions were clipped
    torch.testing.assert_close(pr[1:], batch.rewards[:-1])
    with torch.no_grad():
        params, _, _ = agent(batch.obs, batch.state0, batch.reset, pa, pr)
    torch.testing.assert_close(params, batch.params, atol=1e-5, rtol=1e-5)
