"""Checkpoints and --resume; every bad input gets a clear error."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from emrl.checkpoint import load_checkpoint
from emrl.cli import main as cli_main
from emrl.control.config import ControlConfig
from emrl.control.envs import check_finite, make_env, make_vec_env
from emrl.control.evaluate import evaluate
from emrl.control.train import build_agent, train
from emrl.errors import CheckpointError, ConfigError, EmrlError
from emrl.metrics import read_metrics


def _cfg(**kw) -> ControlConfig:
    base = dict(env="CartPole-v1", total_steps=2048, num_envs=4, unroll_length=64,
                epochs=2, eval_every=0, eval_episodes=2, save_every=1024,
                keep_checkpoints=5)
    base.update(kw)
    return ControlConfig(**base)


def test_resume_continues_from_the_latest_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(_cfg(), out)  # 8 updates of 256 steps; checkpoints after update 4 and 8
    ck4_state, meta4 = load_checkpoint(out / "checkpoint-4")
    assert meta4["env"] == "CartPole-v1" and meta4["env_steps"] == 1024
    # simulate a run killed after checkpoint-4
    shutil.rmtree(out / "checkpoint-8")
    shutil.rmtree(out / "final")
    final = train(_cfg(), out, resume=True)
    assert final["samples"] == 2048
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "reward/mean" in r]
    assert steps == list(range(1, 9))  # no update lost or logged twice
    ck8_state, _ = load_checkpoint(out / "checkpoint-8")
    # training resumed from checkpoint-4's weights, and changed them
    w4 = ck4_state["agent"]["policy_head.linear.weight"]
    w8 = ck8_state["agent"]["policy_head.linear.weight"]
    assert not torch.equal(w4, w8)
    assert ck8_state["optimizer"]["state"][0]["step"] == 2 * ck4_state["optimizer"]["state"][0]["step"]


def _assert_same(x, y, where="algo"):
    if isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    elif isinstance(x, dict):
        assert set(x) == set(y), where
        for k in x:
            _assert_same(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _assert_same(u, v, f"{where}[{i}]")
    else:
        assert x == y, where


@pytest.mark.parametrize(("algo", "core"), [("ppo", "mlp"), ("vmpo", "mlp"), ("ppo", "lstm")])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, algo, core):
    """Sync CartPole envs are snapshotted with the checkpoint: a run killed after
    checkpoint-4 and resumed ends with exactly the weights, optimiser state and logged
    rewards of the run that was never interrupted (observation normalisation on; the
    LSTM's carried state too)."""
    cfg = _cfg(algo=algo, normalize_obs=True, core=core, lstm_hidden_size=16)
    train(cfg, tmp_path / "whole")
    out = tmp_path / "resumed"
    train(cfg, out)
    shutil.rmtree(out / "checkpoint-8")
    shutil.rmtree(out / "final")
    train(cfg, out, resume=True)
    a, _ = load_checkpoint(tmp_path / "whole" / "checkpoint-8")
    b, _ = load_checkpoint(out / "checkpoint-8")
    for k, v in a["agent"].items():
        assert torch.equal(v, b["agent"][k]), k
    _assert_same(a["algo"], b["algo"])  # V-MPO: the duals and their optimiser state
    assert a["obs_rms"]["count"] == b["obs_rms"]["count"]
    assert torch.equal(torch.as_tensor(a["obs_rms"]["mean"]), torch.as_tensor(b["obs_rms"]["mean"]))

    def rows(d):
        return [(r["step"], r["reward/mean"], r.get("train/episode_return"))
                for r in read_metrics(d / "metrics.jsonl") if "reward/mean" in r]

    assert rows(out) == rows(tmp_path / "whole") and len(rows(out)) == 8


def test_resume_without_an_env_snapshot_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    train(_cfg(), out)
    shutil.rmtree(out / "checkpoint-8")
    shutil.rmtree(out / "final")
    from emrl.checkpoint import save_checkpoint

    state, meta = load_checkpoint(out / "checkpoint-4")
    assert state["actor"] is not None  # CartPole pickles
    state["actor"] = None  # as written for an env that cannot be pickled
    save_checkpoint(out / "checkpoint-4", state, meta=meta)
    capsys.readouterr()
    final = train(_cfg(), out, resume=True)
    assert final["samples"] == 2048
    assert "not bit-identical" in capsys.readouterr().err


def test_resume_with_an_optimizer_state_of_another_layout_is_a_clear_error(tmp_path):
    """A checkpoint whose optimizer holds one state per parameter tensor (the layout
    before FlatParameters) cannot be resumed into the flat optimizer: CheckpointError."""
    from emrl.checkpoint import save_checkpoint

    out = tmp_path / "run"
    train(_cfg(), out)
    state, meta = load_checkpoint(out / "checkpoint-4")
    env = make_env("CartPole-v1")
    agent = build_agent(_cfg(), env.observation_space, env.action_space)
    env.close()
    per_tensor = torch.optim.Adam(agent.parameters(), lr=1e-3)
    state["optimizer"] = per_tensor.state_dict()
    save_checkpoint(out / "checkpoint-4", state, meta=meta)
    shutil.rmtree(out / "checkpoint-8")
    shutil.rmtree(out / "final")
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        train(_cfg(), out, resume=True)


def test_resume_rejects_a_checkpoint_from_another_env(tmp_path):
    out = tmp_path / "run"
    train(_cfg(total_steps=1024), out)
    with pytest.raises(CheckpointError, match="env='CartPole-v1'.*Acrobot-v1"):
        train(_cfg(total_steps=1024, env="Acrobot-v1"), out, resume=True)


def test_cli_resume_with_other_env_is_an_error(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--total-steps", "512", "--eval-episodes", "1", "--output-dir", str(out)]
    assert cli_main(["control", "train", "--env", "CartPole-v1", *common]) == 0
    capsys.readouterr()
    assert cli_main(["control", "train", "--env", "Acrobot-v1", "--resume", *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Acrobot-v1" in err


def test_unknown_env_id_suggests_close_ids(capsys):
    with pytest.raises(EmrlError, match="unknown environment id 'CartPol-v1'.*CartPole-v1"):
        make_env("CartPol-v1")
    assert cli_main(["control", "train", "--env", "LunarLandr-v3", "--output-dir", "/nonexistent/x"]) == 2
    assert "LunarLander-v3" in capsys.readouterr().err


def test_unsupported_action_space_is_a_clear_error():
    with pytest.raises(EmrlError, match="MultiBinary.*expected Discrete"):
        make_vec_env("EmrlTest/MultiBinary-v0", 2)


@pytest.mark.parametrize("env_id,what", [("EmrlTest/NaNObs-v0", "observation"),
                                         ("EmrlTest/InfReward-v0", "reward")])
def test_non_finite_env_output_names_env_and_step(tmp_path, env_id, what):
    cfg = _cfg(env=env_id, num_envs=1, unroll_length=8, total_steps=64, save_every=0)
    with pytest.raises(EmrlError, match=f"{env_id}.*non-finite {what} at env step 3"):
        train(cfg, tmp_path / "run")
    env = make_env(env_id)
    agent = build_agent(cfg, env.observation_space, env.action_space)
    with pytest.raises(EmrlError, match=f"non-finite {what} at env step 3"):
        evaluate(agent, env_id, episodes=1)


def test_check_finite_accepts_finite():
    check_finite("X", 0, np.zeros(3, np.float32), 1.0)


def test_bad_config_values():
    with pytest.raises(ConfigError, match="top_fraction"):
        _cfg(top_fraction=0.0).validate()
    with pytest.raises(ConfigError, match="divisible by num_minibatches"):
        _cfg(core="lstm", num_envs=4, num_minibatches=3).validate()
    with pytest.raises(EmrlError, match="unknown core 'gtrx'"):
        build_agent(_cfg(core="gtrx"), make_env("CartPole-v1").observation_space,
                    make_env("CartPole-v1").action_space)


def test_eval_of_a_non_run_directory_is_an_error(tmp_path, capsys):
    assert cli_main(["control", "eval", "--run", str(tmp_path)]) == 2
    assert "not a control run directory" in capsys.readouterr().err
