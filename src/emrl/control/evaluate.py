"""Evaluation episodes with a trained agent (mode or sampled actions), optional video."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from emrl.control.agent import Agent
from emrl.control.envs import RunningMeanStd, check_finite, make_env
from emrl.errors import EmrlError


@torch.inference_mode()
def evaluate(
    agent: Agent, env_id: str, *, episodes: int = 10, seed: int = 0, deterministic: bool = True,
    obs_rms: RunningMeanStd | None = None, device: torch.device | str = "cpu",
    video_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run ``episodes`` full episodes one after another on a fresh env; return
    ``{"mean_return", "std_return", "returns", "lengths", "episodes", "deterministic",
    "seeds"}`` (undiscounted, raw rewards). Episode ``i`` resets the env with seed
    ``seed + i`` (``seeds`` = first and last); sampled actions (``deterministic=False``)
    draw from a torch generator seeded with ``seed``, so the same call gives the same
    returns and the caller's random streams are untouched.

    ``video_dir``: record the first episode as MP4 there (needs the env to render
    ``rgb_array`` and the optional ``moviepy`` package).
    """
    if episodes < 1:
        raise EmrlError(f"episodes must be >= 1, got {episodes}")
    device = torch.device(device)
    if video_dir is not None:
        try:
            import moviepy  # noqa: F401
        except ImportError as e:
            raise EmrlError("recording a video needs moviepy: pip install 'emrl[video]' "
                            "(or pip install moviepy)") from e
        # pygame-rendered envs draw off-screen; no display is needed
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = make_env(env_id, render_mode="rgb_array" if video_dir else None)
    if video_dir is not None:
        if env.render_mode != "rgb_array":
            modes = env.metadata.get("render_modes", [])
            env.close()
            raise EmrlError(f"environment {env_id!r} cannot render frames for a video "
                            f"(render modes: {list(modes)}; 'rgb_array' is needed)")
        env = gym.wrappers.RecordVideo(env, str(video_dir), episode_trigger=lambda i: i == 0,
                                       disable_logger=True)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    head = agent.policy_head
    returns, lengths = [], []
    steps = 0
    with torch.random.fork_rng(devices=[]):  # sampled actions: own seeded stream
        torch.manual_seed(seed)
        try:
            for ep in range(episodes):
                obs, _ = env.reset(seed=seed + ep)
                state = agent.initial_state(1, device)
                reset = torch.ones(1, 1, dtype=torch.bool, device=device)
                prev: tuple[torch.Tensor, ...] = ()
                if getattr(agent, "prev_action_reward", False):  # spec §8 inputs: zero at the start
                    prev = (torch.zeros(1, 1, agent.action_enc_size, device=device),
                            torch.zeros(1, 1, device=device))
                total, n, done = 0.0, 0, False
                while not done:
                    check_finite(env_id, steps, np.asarray(obs), 0.0)
                    o = np.asarray(obs)[None]
                    if obs_rms is not None:
                        o = obs_rms.normalize(o)
                    x = torch.as_tensor(o, device=device)
                    if x.dtype == torch.float64:
                        x = x.float()
                    params, _, state = agent(x.unsqueeze(0), state, reset, *prev)
                    reset = torch.zeros_like(reset)
                    a = head.mode(params[0, 0]) if deterministic else head.sample(params[0, 0])
                    a_np = a.cpu().numpy()
                    if discrete:
                        a_np = int(a_np)
                    else:
                        a_np = np.clip(a_np, env.action_space.low, env.action_space.high)
                    obs, r, term, trunc, _ = env.step(a_np)
                    if prev:
                        prev = (agent.encode_action(torch.as_tensor(a_np, device=device)).reshape(1, 1, -1),
                                torch.full((1, 1), float(r), device=device))
                    steps += 1
                    check_finite(env_id, steps, np.asarray(obs), r)
                    total += float(r)
                    n += 1
                    done = term or trunc
                returns.append(total)
                lengths.append(n)
        finally:
            env.close()
    return {
        "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
        "returns": returns, "lengths": lengths, "episodes": episodes,
        "deterministic": deterministic, "seeds": [seed, seed + episodes - 1],
    }
