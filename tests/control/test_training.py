"""Short real CartPole runs: both algorithms improve the return; CLI train/eval."""

from __future__ import annotations

import json

import pytest
import torch

from emrl.cli import main as cli_main
from emrl.control.config import ControlConfig
from emrl.control.envs import make_env
from emrl.control.evaluate import evaluate
from emrl.control.train import build_agent, load_agent, train
from emrl.errors import EmrlError
from emrl.metrics import read_metrics
from emrl.seeding import seed_everything


def _untrained_return(cfg: ControlConfig) -> float:
    seed_everything(cfg.seed)
    env = make_env(cfg.env)
    agent = build_agent(cfg, env.observation_space, env.action_space)
    env.close()
    return evaluate(agent, cfg.env, episodes=5, seed=1)["mean_return"]


@pytest.mark.parametrize("algo", ["ppo", "vmpo"])
def test_short_cartpole_run_improves_return(tmp_path, algo):
    # V-MPO with a fixed learning rate, as in the V-MPO paper (spec §8), learns faster in short runs
    cfg = ControlConfig(algo=algo, env="CartPole-v1", total_steps=16_384, seed=0 if algo == "vmpo" else 1,
                        anneal_lr=algo == "ppo",
                        eval_every=0, eval_episodes=5, save_every=0)
    before = _untrained_return(cfg)
    final = train(cfg, tmp_path / algo)
    assert final["samples"] == 16_384
    # an untrained CartPole agent falls within ~10-60 steps; learning gets far beyond
    assert before < 100
    assert final["eval/return"] > 150, (before, final)
    rows = read_metrics(tmp_path / algo / "metrics.jsonl")
    assert all("throughput/steps_per_s" in r for r in rows if "reward/mean" in r)
    if algo == "ppo":
        assert any("ppo/clip_fraction" in r for r in rows)
    else:
        assert any("estep/eta" in r and "mstep/alpha" in r for r in rows)
    assert (tmp_path / algo / "final" / "manifest.json").exists()


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli_main(["control", "train", "--algo", "vmpo", "--env", "CartPole-v1",
                   "--total-steps", "512", "--eval-episodes", "2", "--output-dir", str(out),
                   "--seed", "3"])
    assert rc == 0
    final_line = capsys.readouterr().out.splitlines()[-1]
    assert final_line.startswith("final eval return: ")
    # the final line says what it measured, and `control eval` with no options repeats it
    assert "over 2 episodes, deterministic policy" in final_line and "env seeds" in final_line
    rc = cli_main(["control", "eval", "--run", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("mean return: ")
    assert printed[len("mean return: "):] == final_line[len("final eval return: "):].split(", after")[0]
    rc = cli_main(["control", "eval", "--run", str(out), "--episodes", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.startswith("mean return: ")
    res = json.loads((out / "eval.json").read_text())
    assert res["episodes"] == 3 and len(res["returns"]) == 3 and res["deterministic"] is True
    assert float(printed.split()[2]) == pytest.approx(res["mean_return"], abs=0.01)
    # sampled actions: its own seeded stream, so the same call gives the same returns
    outs = []
    for _ in range(2):
        assert cli_main(["control", "eval", "--run", str(out), "--episodes", "3", "--stochastic"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and "sampled policy" in outs[0]
    agent, cfg, _ = load_agent(out)
    assert cfg.algo == "vmpo" and cfg.total_steps == 512
    assert isinstance(agent.policy_head.linear.weight, torch.Tensor)
    # --video: the first evaluation episode as an MP4 with one frame per step (+ the reset)
    rc = cli_main(["control", "eval", "--run", str(out), "--episodes", "2", "--video"])
    assert rc == 0
    res = json.loads((out / "eval.json").read_text())
    videos = sorted((out / "videos").glob("*.mp4"))
    assert len(videos) == 1
    import imageio

    reader = imageio.get_reader(str(videos[0]))
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == res["lengths"][0] + 1
    assert frames[0].ndim == 3 and frames[0].shape[-1] == 3 and frames[0].std() > 0


def test_video_of_an_env_without_frames_is_a_clear_error(tmp_path):
    pytest.importorskip("bsuite")
    env_id = "bsuite/memory_len/0"
    cfg = ControlConfig(env=env_id)
    env = make_env(env_id)
    agent = build_agent(cfg, env.observation_space, env.action_space)
    env.close()
    with pytest.raises(EmrlError, match=r"'bsuite/memory_len/0' cannot render frames.*rgb_array"):
        evaluate(agent, env_id, episodes=1, video_dir=tmp_path / "videos")


def test_cli_refuses_existing_run_without_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["control", "train", "--env", "CartPole-v1", "--total-steps", "256",
            "--eval-episodes", "1", "--output-dir", str(out)]
    assert cli_main(args) == 0
    capsys.readouterr()
    assert cli_main(args) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_tensorboard_when_asked(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = ControlConfig(total_steps=512, eval_episodes=1, tensorboard=True, save_every=0)
    train(cfg, tmp_path / "run")
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_video_needs_moviepy_or_records(tmp_path):
    cfg = ControlConfig(total_steps=256, eval_episodes=1, save_every=0)
    train(cfg, tmp_path / "run")
    agent, cfg, _ = load_agent(tmp_path / "run")
    try:
        import moviepy  # noqa: F401
    except ImportError:
        with pytest.raises(EmrlError, match="needs moviepy"):
            evaluate(agent, cfg.env, episodes=1, video_dir=tmp_path / "videos")
        return
    evaluate(agent, cfg.env, episodes=1, video_dir=tmp_path / "videos")
    assert list((tmp_path / "videos").glob("*.mp4"))
