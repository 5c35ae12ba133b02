"""Transformer cores inside the control agents: storage of segment states, short runs."""

from __future__ import annotations

import math

import pytest
import torch

from emrl.control.agent import Agent
from emrl.control.config import ControlConfig
from emrl.control.envs import make_vec_env
from emrl.control.rollout import Actor
from emrl.control.train import load_agent, train
from emrl.metrics import read_metrics
from emrl.nn.core import index_state

CORES = ["trxl", "trxl-i", "gtrxl"]
SMALL = {"d_model": 16, "n_layers": 2, "n_heads": 2, "memory_length": 6}


@pytest.mark.parametrize("prev_action_reward", [False, True])
@pytest.mark.parametrize("core", CORES)
def test_update_recomputation_equals_what_the_actor_saw(core, prev_action_reward):
    torch.manual_seed(0)
    envs = make_vec_env("CartPole-v1", 4)
    try:
        agent = Agent(envs.single_observation_space, envs.single_action_space, core=core,
                      core_kwargs=SMALL, prev_action_reward=prev_action_reward)
        agent.eval()
        actor = Actor(envs, agent, "CartPole-v1", seed=0, obs_rms=None, device=torch.device("cpu"))
        for _segment in range(3):  # later segments start from a carried, non-empty memory
            batch = actor.collect(16)
            prev = (batch.prev_actions, batch.prev_rewards) if prev_action_reward else ()
            assert (batch.prev_actions is not None) == prev_action_reward
            with torch.no_grad():  # the rollout's tensors are inference tensors
                params, values, _ = agent(batch.obs, batch.state0, batch.reset, *prev)
            torch.testing.assert_close(params, batch.params, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(values, batch.values, atol=1e-5, rtol=1e-5)
            idx = torch.tensor([3, 1])  # a minibatch over environments
            p_mb, _, _ = agent(batch.obs[:, idx], index_state(batch.state0, idx), batch.reset[:, idx],
                               *(x[:, idx] for x in prev))
            p_mb.sum().backward()  # as in the update: gradients through the segment
            torch.testing.assert_close(p_mb, batch.params[:, idx], atol=1e-5, rtol=1e-5)
        assert batch.reset[1:].any()  # CartPole episodes ended inside the segments
        assert batch.state0[1].sum() > 0  # ... and the stored memory was in use
    finally:
        envs.close()


@pytest.mark.parametrize("algo", ["ppo", "vmpo"])
@pytest.mark.parametrize("core", CORES)
def test_short_training_run_with_a_transformer_core(tmp_path, algo, core):
    cfg = ControlConfig(
        algo=algo, env="CartPole-v1", core=core, core_kwargs=SMALL, total_steps=256, num_envs=4,
        unroll_length=16, num_minibatches=2, epochs=2, eval_every=0, eval_episodes=2,
        save_every=0, seed=1,
    )
    final = train(cfg, tmp_path / "run")
    assert math.isfinite(final["eval/return"]) and final["eval/return"] >= 8  # CartPole episode >= 8 steps
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) >= 4 and all(math.isfinite(r.get("loss/value", 0.0)) for r in rows)
    agent, cfg2, _ = load_agent(tmp_path / "run")
    assert cfg2.core == core and agent.core.variant == core
    assert agent.core.memory_length == SMALL["memory_length"]
