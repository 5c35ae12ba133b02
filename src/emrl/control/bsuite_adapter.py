"""bsuite ``memory_len`` (MemoryChain) as a Gymnasium environment (extra ``memory``).

Ids: ``bsuite/memory_len/length=<L>`` (a MemoryChain with memory length ``L``, one
bit) or ``bsuite/memory_len/<sweep-index>`` (bsuite's own sweep, e.g. ``/9`` is length
10 and ``/15`` length 30). The dm_env observation (float32 [1, 3]: time-to-go, query
flag, context bit) is flattened to a ``Box((3,))``; actions are ``Discrete(2)``; the
episode *terminates* (dm_env ``LAST`` with discount 0) after ``L + 1`` steps with
reward ±1 for recalling the bit.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from emrl.errors import EmrlError

PREFIX = "bsuite/memory_len/"


def parse_bsuite_id(env_id: str) -> int:
    """The memory length of a ``bsuite/memory_len/...`` id (clear error otherwise)."""
    if not env_id.startswith(PREFIX):
        raise EmrlError(
            f"unsupported bsuite id {env_id!r}; expected bsuite/memory_len/length=<L> or "
            "bsuite/memory_len/<sweep index 0-22>"
        )
    tail = env_id[len(PREFIX):]
    try:
        from bsuite.experiments.memory_len import sweep
    except ImportError as e:
        raise EmrlError(f"environment {env_id!r} needs bsuite: pip install 'emrl[memory]'") from e
    try:
        if tail.startswith("length="):
            length = int(tail[len("length="):])
        else:
            length = int(sweep.SETTINGS[int(tail)]["memory_length"])
    except (ValueError, IndexError) as e:
        raise EmrlError(
            f"bad bsuite id {env_id!r}: expected length=<positive int> or a sweep index "
            f"0-{len(sweep.SETTINGS) - 1}"
        ) from e
    if length < 1:
        raise EmrlError(f"bad bsuite id {env_id!r}: memory length must be >= 1")
    return length


class BsuiteMemoryLen(gym.Env):
    """Gymnasium wrapper of bsuite's MemoryChain (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, memory_length: int, render_mode: str | None = None) -> None:
        from bsuite.environments.memory_chain import MemoryChain

        self.memory_length = int(memory_length)
        self._make = lambda seed: MemoryChain(memory_length=self.memory_length, num_bits=1, seed=seed)
        self._env = self._make(0)
        shape = self._env.observation_spec().shape
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (int(np.prod(shape)),), np.float32)
        self.action_space = gym.spaces.Discrete(int(self._env.action_spec().num_values))
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env = self._make(int(seed))
        ts = self._env.reset()
        return np.asarray(ts.observation, np.float32).reshape(-1), {}

    def step(self, action):
        ts = self._env.step(int(action))
        obs = np.asarray(ts.observation, np.float32).reshape(-1)
        terminated = bool(ts.last())
        return obs, float(ts.reward or 0.0), terminated, False, {}


def make_bsuite(env_id: str) -> gym.Env:
    return BsuiteMemoryLen(parse_bsuite_id(env_id))
