"""Small real Gymnasium environments registered for the bad-input tests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class MultiBinaryEnv(gym.Env):
    """A real (tiny) env whose action space is MultiBinary, which agents reject."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.MultiBinary(4)

    def __init__(self, render_mode=None) -> None:
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}


class NonFiniteEnv(gym.Env):
    """Returns a NaN observation (``what="obs"``) or an inf reward at its 3rd step."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, what: str = "obs", render_mode=None) -> None:
        self.render_mode = render_mode
        self.what = what
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.zeros(2, np.float32)
        r = 1.0
        if self.t == 3:
            if self.what == "obs":
                obs[0] = np.nan
            else:
                r = float("inf")
        return obs, r, False, self.t >= 50, {}


for _id, _entry, _kw in (
    ("EmrlTest/MultiBinary-v0", MultiBinaryEnv, {}),
    ("EmrlTest/NaNObs-v0", NonFiniteEnv, {"what": "obs"}),
    ("EmrlTest/InfReward-v0", NonFiniteEnv, {"what": "reward"}),
):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry, kwargs=_kw)
