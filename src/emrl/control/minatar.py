"""MinAtar games as Gymnasium environments (extra ``minatar``).

MinAtar (Young & Tian 2019, "MinAtar: An Atari-Inspired Testbed for Thorough and
Reproducible Reinforcement Learning Experiments") re-implements five Atari games —
Asterix, Breakout, Freeway, Seaquest, SpaceInvaders — on a 10×10 grid whose objects are
binary channels. It is the CPU-sized stand-in for the Atari runs that motivate spec §8.

Ids (both spellings name the same environment):

* ``minatar:<game>`` — ``game`` is ``asterix``, ``breakout``, ``freeway``, ``seaquest``
  or ``space_invaders`` (also ``spaceinvaders`` / ``SpaceInvaders``; any case), with the
  game's minimal action set;
* ``MinAtar/<Game>-v1`` (minimal action set) and ``MinAtar/<Game>-v0`` (all 6 actions):
  the ids the ``minatar`` package registers for Gymnasium, like ``ALE/Pong-v5``.

What the agent sees: observations are ``float32`` ``[C, 10, 10]`` in {0, 1} (MinAtar's
``[10, 10, C]`` state, channels first; C = 4 Breakout, 6 SpaceInvaders, 4 Asterix,
7 Freeway, 10 Seaquest). With the default encoder they are flattened into the core
(an MLP, LSTM or transformer core on ``C·100`` inputs); ``--encoder resnet`` puts spec
§8's IMPALA ResNet torso in front of the core instead. Dynamics are MinAtar's defaults:
sticky actions with probability 0.1 and difficulty ramping. Episodes end as MinAtar
ends them and are truncated after ``max_episode_steps`` (10 000) steps, so that an
evaluation of a good Breakout policy (bricks refill) ends.

Seeding: ``reset(seed=s)`` reseeds MinAtar's random state from ``s`` (the same seed gives
the same episode for the same actions); ``reset()`` continues the stream.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from emrl.errors import EmrlError, close_matches

SHORT_PREFIX = "minatar:"
GYM_PREFIX = "MinAtar/"
#: MinAtar module name -> the name in ``MinAtar/<Name>-vN`` ids
GAMES = {"asterix": "Asterix", "breakout": "Breakout", "freeway": "Freeway",
         "seaquest": "Seaquest", "space_invaders": "SpaceInvaders"}
MAX_EPISODE_STEPS = 10_000


def is_minatar_id(env_id: str) -> bool:
    return env_id.startswith((SHORT_PREFIX, GYM_PREFIX))


def _ids() -> list[str]:
    return [f"{SHORT_PREFIX}{g}" for g in GAMES] + [
        f"{GYM_PREFIX}{n}-v{v}" for n in GAMES.values() for v in (0, 1)]


def parse_minatar_id(env_id: str) -> tuple[str, bool]:
    """``(game module name, minimal action set?)`` of a MinAtar id (clear error otherwise)."""
    game = None
    minimal = True
    if env_id.startswith(SHORT_PREFIX):
        name = env_id[len(SHORT_PREFIX):].lower()
        game = {g.replace("_", ""): g for g in GAMES}.get(name.replace("_", ""))
    elif env_id.startswith(GYM_PREFIX):
        name, _, version = env_id[len(GYM_PREFIX):].rpartition("-v")
        by_title = {t: g for g, t in GAMES.items()}
        if version in ("0", "1"):
            game, minimal = by_title.get(name), version == "1"
    if game is None:
        matches = close_matches(env_id, _ids())
        hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
        raise EmrlError(f"unknown MinAtar environment {env_id!r}; expected minatar:<game> or "
                        f"MinAtar/<Game>-v0|v1 with game one of {sorted(GAMES)}.{hint}")
    return game, minimal


def _require_minatar(env_id: str):
    try:
        from minatar.environment import Environment
    except ImportError as e:
        raise EmrlError(f"environment {env_id!r} needs the minatar package: "
                        "pip install 'emrl[minatar]'") from e
    return Environment


# colours of the channels for render_mode="rgb_array" (background black)
_PALETTE = np.array([[0, 0, 0], [230, 90, 60], [250, 200, 60], [80, 200, 120], [70, 150, 240],
                     [200, 100, 220], [240, 240, 240], [160, 120, 80], [120, 220, 220],
                     [255, 140, 170], [150, 150, 150]], np.uint8)


class MinAtarEnv(gym.Env):
    """One MinAtar game as a ``gymnasium.Env`` (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, game: str, *, minimal_action_set: bool = True, sticky_action_prob: float = 0.1,
                 difficulty_ramping: bool = True, max_episode_steps: int | None = MAX_EPISODE_STEPS,
                 render_mode: str | None = None) -> None:
        if game not in GAMES:
            raise EmrlError(f"unknown MinAtar game {game!r}; expected one of {sorted(GAMES)}")
        if render_mode not in (None, "rgb_array"):
            raise EmrlError(f"MinAtar render_mode must be None or 'rgb_array', got {render_mode!r}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise EmrlError(f"max_episode_steps must be >= 1 (or None), got {max_episode_steps}")
        Environment = _require_minatar(f"minatar:{game}")
        self.game_name = game
        self._game = Environment(game, sticky_action_prob=sticky_action_prob,
                                 difficulty_ramping=difficulty_ramping)
        self._actions = (list(self._game.minimal_action_set()) if minimal_action_set
                         else list(range(self._game.num_actions())))
        h, w, c = self._game.state_shape()
        self.observation_space = gym.spaces.Box(0.0, 1.0, (c, h, w), np.float32)
        self.action_space = gym.spaces.Discrete(len(self._actions))
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self._t = 0

    def _obs(self) -> np.ndarray:
        return np.ascontiguousarray(self._game.state().transpose(2, 0, 1), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:  # MinAtar draws from its own RandomState: seed it from ours
            self._game.seed(int(self.np_random.integers(2**31 - 1)))
        self._game.reset()
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        reward, done = self._game.act(self._actions[int(action)])
        self._t += 1
        truncated = not done and self.max_episode_steps is not None and self._t >= self.max_episode_steps
        return self._obs(), float(reward), bool(done), bool(truncated), {}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        state = self._game.state()
        idx = np.amax(state * (np.arange(state.shape[-1]) + 1), axis=2)
        img = _PALETTE[np.minimum(idx, len(_PALETTE) - 1)]
        return np.repeat(np.repeat(img, 16, 0), 16, 1)  # 160×160 RGB


def make_minatar(env_id: str, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """The environment named by a ``minatar:<game>`` / ``MinAtar/<Game>-vN`` id."""
    game, minimal = parse_minatar_id(env_id)
    return MinAtarEnv(game, minimal_action_set=minimal, render_mode=render_mode, **kwargs)


def check_minatar_id(env_id: str) -> None:
    """Validate the id and that the ``minatar`` package is installed."""
    parse_minatar_id(env_id)
    _require_minatar(env_id)
