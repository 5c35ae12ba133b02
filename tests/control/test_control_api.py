"""The Stable-Baselines3-style control API (``emrl.control.VMPO`` / ``PPO``) on real envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from emrl.control import PPO, VMPO
from emrl.control.envs import make_env
from emrl.errors import ConfigError, EmrlError
from emrl.metrics import read_metrics

QUIET = dict(eval_every=0, eval_episodes=3, save_every=0)
GTRXL = {"d_model": 16, "n_layers": 1, "n_heads": 2, "memory_length": 8}


def test_vmpo_learns_cartpole_predicts_saves_and_loads(tmp_path):
    model = VMPO("CartPole-v1", output_dir=tmp_path / "run", seed=0, **QUIET)
    assert model.learn(4096) is model
    assert model.last_metrics["samples"] == 4096
    # far above a random policy's ~20 after 16 updates (measured: 71 with seed 0)
    assert model.last_metrics["eval/return"] > 40

    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=1)
    action, state = model.predict(obs)
    assert isinstance(action, int) and action in (0, 1) and state is None
    batch, _ = model.predict(np.stack([obs, obs, obs]))
    assert batch.shape == (3,) and (batch == action).all()
    ret, done = 0.0, False
    while not done:
        obs, r, term, trunc, _ = env.step(model.predict(obs)[0])
        ret += r
        done = term or trunc
    assert ret == pytest.approx(model.evaluate(1, seed=1)["mean_return"])

    saved = model.save(tmp_path / "saved")
    again = VMPO.load(saved)
    assert again.predict(obs)[0] == model.predict(obs)[0]
    with pytest.raises(EmrlError, match="holds a vmpo agent"):
        PPO.load(saved)

    model.learn(1024)  # continues the same run
    assert model.num_steps == 5120
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")][-1] == 20
    again.learn(256)  # a loaded agent keeps training from the saved checkpoint
    assert again.num_steps == 4352
    with pytest.raises(EmrlError, match="overwrite=True"):
        VMPO("CartPole-v1", output_dir=tmp_path / "run").learn(256)


def test_memory_agent_predict_carries_its_state(tmp_path):
    model = PPO("bsuite/memory_len/0", output_dir=tmp_path / "run", core="gtrxl", core_kwargs=GTRXL,
                num_envs=2, unroll_length=8,
                epochs=1, **QUIET)
    model.learn(64)
    env = make_env("bsuite/memory_len/0")
    obs, _ = env.reset(seed=0)
    a0, state = model.predict(obs)
    assert isinstance(state, tuple) and len(state) > 0
    a1, state1 = model.predict(obs, state, episode_start=[False])
    a2, _ = model.predict(obs, state, episode_start=[True])
    assert a0 in range(env.action_space.n) and a1 in range(env.action_space.n)
    assert a2 == a0  # a cleared memory acts as a fresh episode does
    env.close()


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(EmrlError, match="call learn"):
        VMPO("CartPole-v1").predict(np.zeros(4))
    with pytest.raises(ConfigError, match="Did you mean: eps_eta"):
        VMPO("CartPole-v1", eps_etta=0.1)
    with pytest.raises(EmrlError, match="fixes algo"):
        VMPO("CartPole-v1", algo="ppo")
    model = PPO(gym.make("CartPole-v1"), output_dir=tmp_path / "run", **QUIET).learn(256)
    with pytest.raises(EmrlError, match="does not fit"):
        model.predict(np.zeros(5))


def test_dict_fields_parse_from_the_command_line():
    """`--core-kwargs '{"d_model": 16}'` (the memory tutorial's command) is a mapping."""
    import argparse

    from emrl.config import add_config_args, build_config
    from emrl.control.config import ControlConfig

    parser = argparse.ArgumentParser()
    add_config_args(parser, ControlConfig)
    cfg = build_config(ControlConfig, parser.parse_args(["--core-kwargs", '{"d_model": 16, "n_layers": 1}']))
    assert cfg.core_kwargs == {"d_model": 16, "n_layers": 1}
    for bad in ("{bad", "[1, 2]"):
        with pytest.raises(SystemExit):  # argparse's usage error naming the expected mapping
            parser.parse_args(["--core-kwargs", bad])
