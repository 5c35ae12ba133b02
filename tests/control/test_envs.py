"""Environments: vectorisation, spaces, normalisation, Atari / popgym / bsuite adapters."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from emrl.control.agent import Agent
from emrl.control.envs import RunningMeanStd, make_env, make_vec_env, restore_envs, snapshot_envs
from emrl.errors import EmrlError


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_env_same_step_autoreset(mode):
    envs = make_vec_env("CartPole-v1", 2, vectorization=mode)
    try:
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (2, 4)
        ended = False
        for _ in range(200):
            obs, r, term, trunc, info = envs.step(np.array([0, 0]))
            if (term | trunc).any():
                i = int(np.nonzero(term | trunc)[0][0])
                # SAME_STEP: the returned obs starts the next episode, the final one is in info
                assert not np.allclose(info["final_obs"][i], obs[i])
                assert np.abs(obs[i]).max() <= 0.05  # CartPole resets into [-0.05, 0.05]
                ended = True
                break
        assert ended
    finally:
        envs.close()


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "LunarLander-v3"])
def test_lean_sync_vector_env_returns_what_gymnasium_returns(env_id):
    """LeanSyncVectorEnv (what make_vec_env uses for Box observations) gives exactly the
    outputs of Gymnasium's SyncVectorEnv with SAME_STEP autoreset, episode ends and
    truncations included."""
    import functools

    from emrl.control.envs import LeanSyncVectorEnv, _make_single

    fns = [functools.partial(_make_single, env_id) for _ in range(3)]
    lean = make_vec_env(env_id, 3)
    assert isinstance(lean, LeanSyncVectorEnv)
    ref = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    assert lean.observation_space == ref.observation_space and lean.action_space == ref.action_space
    try:
        for x, y in zip(lean.reset(seed=5)[0], ref.reset(seed=5)[0], strict=True):
            np.testing.assert_array_equal(x, y)
        ref.action_space.seed(1)
        ends = 0
        for _ in range(260):  # Pendulum truncates at 200 steps; CartPole/LunarLander end earlier
            a = ref.action_space.sample()
            out, exp = lean.step(a.copy()), ref.step(a)
            for u, v in zip(out[:4], exp[:4], strict=True):
                np.testing.assert_array_equal(u, v)
                assert u.dtype == v.dtype
            assert sorted(out[4]) == sorted(exp[4])
            if "final_obs" in exp[4]:
                ends += 1
                np.testing.assert_array_equal(out[4]["_final_obs"], exp[4]["_final_obs"])
                for i in np.nonzero(exp[4]["_final_obs"])[0]:
                    np.testing.assert_array_equal(out[4]["final_obs"][i], exp[4]["final_obs"][i])
        assert ends > 0
    finally:
        lean.close()
        ref.close()


def test_unknown_vectorization():
    with pytest.raises(EmrlError, match="unknown vectorization 'threads'"):
        make_vec_env("CartPole-v1", 2, vectorization="threads")


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(1000, 3))
    rms = RunningMeanStd((3,))
    for chunk in np.split(data, 10):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-3)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-3)
    z = rms.normalize(data)
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1.0) < 0.05
    rms2 = RunningMeanStd((3,))
    rms2.load_state_dict(rms.state_dict())
    np.testing.assert_array_equal(rms2.normalize(data), z)


def test_box_actions_get_a_gaussian_head():
    env = make_env("Pendulum-v1")
    agent = Agent(env.observation_space, env.action_space)
    params, value, _ = agent(torch.zeros(1, 3, 3), (), torch.zeros(1, 3, dtype=torch.bool))
    assert params.shape == (1, 3, 2) and value.shape == (1, 3)
    assert not agent.discrete


def test_atari_preprocessing_and_conv_agent():
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    env = make_env("ALE/Pong-v5")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    spec = env.unwrapped.spec
    assert env.unwrapped._frameskip == 1 and spec.kwargs["repeat_action_probability"] == 0.25
    agent = Agent(env.observation_space, env.action_space)
    x = torch.as_tensor(obs)[None, None]
    params, _, _ = agent(x, (), torch.ones(1, 1, dtype=torch.bool))
    assert params.shape == (1, 1, env.action_space.n)
    env.close()


def test_popgym_adapter():
    pytest.importorskip("popgym")
    env = make_env("popgym-CountRecallEasy-v0")
    obs, _ = env.reset(seed=0)
    # MultiDiscrete([2, 2]) observations become a concatenated one-hot vector of size 4
    assert obs.shape == (4,) and obs.sum() == 2.0


def test_bsuite_memory_len_adapter():
    pytest.importorskip("bsuite")
    env = make_env("bsuite/memory_len/length=3")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3,)
    steps, done, r = 0, False, 0.0
    while not done:
        obs, r, term, trunc, _ = env.step(0)
        steps += 1
        done = term or trunc
    assert steps == 4 and r in (-1.0, 1.0)  # length + 1 steps, reward ±1 at the end
    assert make_env("bsuite/memory_len/9").unwrapped.memory_length == 10
    with pytest.raises(EmrlError, match="bad bsuite id"):
        make_env("bsuite/memory_len/length=x")


def test_resnet_encoder_option_with_prev_inputs_on_atari():
    """Spec §8 agent: IMPALA ResNet torso + GTrXL core + previous reward/action inputs,
    on real Atari frames; the update's recomputation equals what the actor saw."""
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    from emrl.control.rollout import Actor
    from emrl.nn.encoders import ResNetEncoder

    torch.manual_seed(0)
    envs = make_vec_env("ALE/Pong-v5", 2)
    try:
        agent = Agent(envs.single_observation_space, envs.single_action_space, core="gtrxl",
                      core_kwargs={"d_model": 16, "n_layers": 1, "n_heads": 2, "memory_length": 4},
                      encoder="resnet", prev_action_reward=True)
        assert isinstance(agent.encoder, ResNetEncoder)
        n_act = envs.single_action_space.n
        assert agent.core.input_size == agent.encoder.output_size + 1 + n_act
        actor = Actor(envs, agent, "ALE/Pong-v5", seed=0, obs_rms=None, device=torch.device("cpu"))
        batch = actor.collect(6)
        assert batch.prev_actions.shape == (6, 2, n_act)
        assert (batch.prev_actions[0] == 0).all() and (batch.prev_actions[1:].sum(-1) == 1).all()
        params, values, _ = agent(batch.obs, batch.state0, batch.reset, batch.prev_actions,
                                  batch.prev_rewards)
        torch.testing.assert_close(params, batch.params, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(values, batch.values, atol=1e-4, rtol=1e-4)
        (params.sum() + values.sum()).backward()
        assert agent.encoder.fc.weight.grad is not None  # the encoder trains through the core
    finally:
        envs.close()


def test_encoder_option_errors():
    from emrl.errors import ConfigError

    env = make_env("CartPole-v1")
    with pytest.raises(ConfigError, match="needs image observations"):
        Agent(env.observation_space, env.action_space, encoder="resnet")
    with pytest.raises(ConfigError, match="encoder must be one of"):
        Agent(env.observation_space, env.action_space, encoder="vit")


def test_env_snapshot_restores_the_exact_state_as_data_and_refuses_other_envs():
    envs = make_vec_env("CartPole-v1", 3)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(15):  # mid-episode, some envs have auto-reset already
        envs.step(rng.integers(0, 2, 3))
    blob = snapshot_envs(envs)
    assert blob is not None
    actions = [rng.integers(0, 2, 3) for _ in range(40)]
    first = [envs.step(a)[:4] for a in actions]
    restore_envs(envs, blob)
    again = [envs.step(a)[:4] for a in actions]
    for x, y in zip(first, again, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)
    envs.close()
    # Box2D worlds are not plain data: no snapshot (a resume starts new episodes)
    ll = make_vec_env("LunarLander-v3", 2)
    ll.reset(seed=0)
    assert snapshot_envs(ll) is None
    ll.close()
    with pytest.raises(EmrlError, match="holds 3 envs, this run has 2"):
        two = make_vec_env("CartPole-v1", 2)
        try:
            restore_envs(two, blob)
        finally:
            two.close()
