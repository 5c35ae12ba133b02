"""MinAtar through the control trainer: the adapter against the real minatar package,
and short real PPO / V-MPO runs (mlp, gtrxl, ResNet encoder) with checkpoint / resume."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("minatar")

from minatar.environment import Environment  # noqa: E402

from emrl.cli import main as cli_main  # noqa: E402
from emrl.control.agent import Agent  # noqa: E402
from emrl.control.envs import make_env, make_vec_env  # noqa: E402
from emrl.control.minatar import MinAtarEnv, parse_minatar_id  # noqa: E402
from emrl.errors import EmrlError  # noqa: E402
from emrl.metrics import read_metrics  # noqa: E402


@pytest.mark.parametrize("env_id, game, channels, n_actions", [
    ("minatar:breakout", "breakout", 4, 3),
    ("minatar:space_invaders", "space_invaders", 6, 4),
    ("minatar:SpaceInvaders", "space_invaders", 6, 4),
    ("MinAtar/Breakout-v1", "breakout", 4, 3),
    ("MinAtar/SpaceInvaders-v0", "space_invaders", 6, 6),
])
def test_ids_spaces_and_channels_first_observations(env_id, game, channels, n_actions):
    env = make_env(env_id)
    assert env.observation_space.shape == (channels, 10, 10)
    assert env.observation_space.dtype == np.float32
    assert env.action_space.n == n_actions
    obs, _ = env.reset(seed=3)
    # the observation is MinAtar's own [10, 10, C] state, channels first
    np.testing.assert_array_equal(obs, env.unwrapped._game.state().transpose(2, 0, 1))
    assert set(np.unique(obs)) <= {0.0, 1.0} and obs.sum() > 0
    assert parse_minatar_id(env_id)[0] == game


def test_minimal_action_set_maps_to_minatar_actions():
    env = MinAtarEnv("breakout")
    assert env._actions == list(Environment("breakout").minimal_action_set())
    assert len(MinAtarEnv("breakout", minimal_action_set=False)._actions) == 6


def _play(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        out.append(obs * (1 + r))
        if term or trunc:
            out.append(env.reset()[0])
    return np.stack(out)


def test_same_seed_same_episode_other_seed_differs():
    actions = np.random.default_rng(0).integers(0, 4, 300)
    a = _play(make_env("minatar:space_invaders"), 7, actions)
    b = _play(make_env("minatar:space_invaders"), 7, actions)
    c = _play(make_env("minatar:space_invaders"), 8, actions)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_episodes_end_and_are_truncated_at_the_step_limit():
    env = MinAtarEnv("breakout", max_episode_steps=5, sticky_action_prob=0.0)
    env.reset(seed=0)
    flags = [env.step(1)[2:4] for _ in range(5)]
    assert flags[-1] == (False, True) and all(f == (False, False) for f in flags[:-1])
    env = MinAtarEnv("breakout")  # no-op actions: Breakout's ball is lost within ~100 steps
    env.reset(seed=0)
    steps = 0
    for steps in range(1, 1000):  # noqa: B007 (the loop count is the episode length)
        _, _, term, trunc, _ = env.step(0)
        if term:
            break
    assert term and not trunc and steps < 1000


def test_vector_env_autoresets_minatar():
    envs = make_vec_env("minatar:breakout", 3)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (3, 4, 10, 10)
    ends = 0
    for _ in range(400):
        obs, r, term, trunc, info = envs.step(np.zeros(3, np.int64))
        ends += int(term.sum())
        if term.any():
            i = int(np.nonzero(term)[0][0])
            assert info["final_obs"][i].shape == (4, 10, 10)
    assert ends >= 3


def test_rgb_render():
    env = make_env("minatar:breakout", render_mode="rgb_array")
    env.reset(seed=0)
    img = env.render()
    assert img.shape == (160, 160, 3) and img.dtype == np.uint8 and img.max() > 0


@pytest.mark.parametrize("bad", ["minatar:pong", "MinAtar/Breakout-v5", "minatar:", "MinAtar/Pong-v1"])
def test_unknown_minatar_ids_are_clear_errors(bad):
    with pytest.raises(EmrlError, match="unknown MinAtar environment") as e:
        make_env(bad)
    assert "breakout" in str(e.value)


def test_resnet_encoder_runs_on_the_binary_grid():
    """encoder=resnet puts spec §8's IMPALA torso in front of the core for the float
    [C, 10, 10] grid; the default encoder flattens it."""
    env = make_env("minatar:breakout")
    for encoder, has_conv in (("resnet", True), ("nature", False)):
        agent = Agent(env.observation_space, env.action_space, core="gtrxl", encoder=encoder,
                      core_kwargs={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_head": 16,
                                   "d_mlp": 32, "memory_length": 4})
        assert (agent.encoder is not None) == has_conv
        obs = torch.as_tensor(np.stack([env.reset(seed=s)[0] for s in range(2)]))[None]
        params, value, _ = agent(obs, agent.initial_state(2), torch.ones(1, 2, dtype=torch.bool))
        assert params.shape == (1, 2, 3) and value.shape == (1, 2) and torch.isfinite(params).all()


_GTRXL = '{"d_model": 32, "n_layers": 1, "n_heads": 2, "d_head": 16, "d_mlp": 64, "memory_length": 8}'


@pytest.mark.parametrize("algo, core, env_id, extra", [
    ("ppo", "mlp", "minatar:breakout", []),
    ("vmpo", "mlp", "minatar:space_invaders", []),
    ("ppo", "gtrxl", "minatar:space_invaders", ["--core-kwargs", _GTRXL]),
    ("vmpo", "gtrxl", "minatar:breakout", ["--core-kwargs", _GTRXL, "--encoder", "resnet",
                                           "--prev-action-reward"]),
])
def test_short_cli_runs_train_update_and_resume(tmp_path, capsys, algo, core, env_id, extra):
    out = tmp_path / "run"
    common = ["control", "train", "--algo", algo, "--env", env_id, "--core", core, "--num-envs", "4",
              "--unroll-length", "16", "--epochs", "2", "--eval-every", "0", "--eval-episodes", "1",
              "--checkpoint-every", "128", "--seed", "1", "--output-dir", str(out), *extra]
    assert cli_main([*common, "--total-steps", "256"]) == 0  # 4 updates of 64 steps
    rows = read_metrics(out / "metrics.jsonl")
    key = "ppo/clip_fraction" if algo == "ppo" else "mstep/kl"
    assert [r for r in rows if key in r] and all(np.isfinite(r[key]) for r in rows if key in r)
    # a run killed after checkpoint-2 resumes from it (with new episodes: MinAtar's state
    # is not snapshotted) and ends where asked, no update lost or logged twice
    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(out / "final")
    assert cli_main([*common, "--total-steps", "256", "--resume"]) == 0
    assert "after 256 env steps" in capsys.readouterr().out
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "reward/mean" in r]
    assert steps == [1, 2, 3, 4]
    assert (out / "checkpoint-4").exists() and (out / "final").exists()
