"""Environments for the control agents: any Gymnasium id, vectorised, with checks.

* :func:`make_vec_env` builds a synchronous or asynchronous vector of ``num_envs``
  copies with ``SAME_STEP`` autoreset: when an episode ends at step ``t`` the returned
  observation already starts the next episode (the final one is in
  ``info["final_obs"]``), so ``done[t]`` marks ``reset[t + 1]`` for the core.
* Action spaces: ``Discrete`` and ``Box``; anything else (e.g. ``MultiBinary``) is a
  clear :class:`~emrl.errors.EmrlError`.
* Ids: plain Gymnasium ids; ``ALE/<Game>-v5`` (extra ``atari``: ale-py, with the
  standard preprocessing — no-op starts, frame skip 4 with max-pooling, grey-scale,
  84×84, 4 stacked frames, sticky actions p=0.25 as ALE v5); ``popgym-<Name>-v0``
  (extra ``memory``); ``bsuite/memory_len/<id>`` through a dm_env adapter (extra
  ``memory``). Unknown ids get close-match suggestions.
* Discrete / MultiDiscrete observations are one-hot encoded (concatenated).
* :class:`RunningMeanStd` normalises observations (state kept in checkpoints).
* :func:`check_finite` raises an error naming the env and step on NaN/inf.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from emrl.errors import EmrlError, close_matches

ATARI_PREFIX = "ALE/"
POPGYM_PREFIX = "popgym-"
BSUITE_PREFIX = "bsuite/"


# ---------------------------------------------------------------------------- ids
def _ensure_registered(env_id: str) -> None:
    """Import the optional package that registers ``env_id`` (clear error if missing)."""
    if env_id.startswith(ATARI_PREFIX):
        try:
            import ale_py
        except ImportError as e:
            raise EmrlError(
                f"environment {env_id!r} needs ale-py: pip install 'emrl[atari]'"
            ) from e
        gym.register_envs(ale_py)
    elif env_id.startswith(POPGYM_PREFIX):
        try:
            import popgym  # noqa: F401  (registers popgym-* ids)
        except ImportError as e:
            raise EmrlError(
                f"environment {env_id!r} needs popgym: pip install 'emrl[memory]'"
            ) from e


def check_env_id(env_id: str) -> None:
    """Raise :class:`EmrlError` with close ids when ``env_id`` is not registered."""
    if env_id.startswith(BSUITE_PREFIX):
        from emrl.control.bsuite_adapter import parse_bsuite_id

        parse_bsuite_id(env_id)
        return
    _ensure_registered(env_id)
    if env_id in gym.registry:
        return
    ids = list(gym.registry.keys())
    matches = close_matches(env_id, ids)
    hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
    raise EmrlError(f"unknown environment id {env_id!r}.{hint}")


# ------------------------------------------------------------------------ spaces
def check_action_space(space: gym.Space, env_id: str) -> None:
    """Only ``Discrete`` and 1-D ``Box`` action spaces are supported."""
    if isinstance(space, gym.spaces.Discrete):
        return
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return
    raise EmrlError(
        f"environment {env_id!r} has action space {space}, which emrl control agents do not "
        "support; expected Discrete(n) or a one-dimensional Box"
    )


def check_observation_space(space: gym.Space, env_id: str) -> None:
    if isinstance(space, gym.spaces.Box):
        return
    raise EmrlError(
        f"environment {env_id!r} has observation space {space}; expected a Box, Discrete "
        "or one-dimensional MultiDiscrete space"
    )


def obs_shape(space: gym.Space) -> tuple[int, ...]:
    """Shape of an observation as the agent sees it (Discrete becomes one-hot)."""
    if isinstance(space, gym.spaces.Discrete):
        return (int(space.n),)
    return tuple(space.shape)


def is_image_space(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and space.dtype == np.uint8


# ----------------------------------------------------------------------- making
def _make_single(env_id: str, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    if env_id.startswith(BSUITE_PREFIX):
        from emrl.control.bsuite_adapter import make_bsuite

        return make_bsuite(env_id)
    if env_id.startswith(ATARI_PREFIX):
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        env = gym.make(env_id, frameskip=1, repeat_action_probability=0.25, **kwargs)
        env = gym.wrappers.AtariPreprocessing(
            env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True,
            terminal_on_life_loss=False, scale_obs=False,
        )
        return gym.wrappers.FrameStackObservation(env, 4)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    env = gym.make(env_id, **kwargs)
    return _one_hot_discrete_obs(env)


def _one_hot_discrete_obs(env: gym.Env) -> gym.Env:
    """Discrete / MultiDiscrete observations become concatenated one-hot float vectors."""
    space = env.observation_space
    if isinstance(space, gym.spaces.Discrete):
        nvec = np.array([int(space.n)])
    elif isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim == 1:
        nvec = np.asarray(space.nvec, np.int64)
    else:
        return env
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
    total = int(nvec.sum())

    def one_hot(o, offsets=offsets, total=total):
        out = np.zeros(total, np.float32)
        out[offsets + np.asarray(o, np.int64).reshape(-1)] = 1.0
        return out

    return gym.wrappers.TransformObservation(env, one_hot, gym.spaces.Box(0.0, 1.0, (total,), np.float32))


def make_env(env_id: str, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """One checked environment (id, action and observation spaces validated)."""
    check_env_id(env_id)
    env = _make_single(env_id, render_mode=render_mode, **kwargs)
    check_action_space(env.action_space, env_id)
    check_observation_space(env.observation_space, env_id)
    return env


def make_vec_env(
    env_id: str, num_envs: int, *, vectorization: str = "sync", **kwargs: Any
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env_id`` as a Sync/Async vector env with SAME_STEP autoreset."""
    if num_envs < 1:
        raise EmrlError(f"num_envs must be >= 1, got {num_envs}")
    probe = make_env(env_id, **kwargs)  # validates id and spaces in this process
    probe.close()
    fns: list[Callable[[], gym.Env]] = [
        functools.partial(_make_single, env_id, **kwargs) for _ in range(num_envs)
    ]
    mode = gym.vector.AutoresetMode.SAME_STEP
    if vectorization == "sync":
        if LeanSyncVectorEnv.supports(probe.observation_space, probe.action_space):
            return LeanSyncVectorEnv(fns)
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    if vectorization == "async":
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode)
    raise EmrlError(f"unknown vectorization {vectorization!r}; expected 'sync' or 'async'")


class LeanSyncVectorEnv(gym.vector.VectorEnv):
    """One-process vector env with ``SAME_STEP`` autoreset and little per-step overhead.

    It returns what ``gym.vector.SyncVectorEnv(fns, autoreset_mode=SAME_STEP)`` returns
    (observations, float64 rewards, termination / truncation flags, and infos with
    ``final_obs`` / ``final_info`` and their masks, merged as Gymnasium merges them) and
    calls the sub-envs identically (same seeds, same ``reset()`` on episode ends), so a
    run gives the same numbers with either. What it leaves out is Gymnasium's generic
    machinery around each step: batching through single-dispatch helpers, and
    NumPy-scalar actions (``Discrete`` actions are passed as Python ints, which the
    envs' own action checks accept at a fraction of the cost). Used for ``Box``
    observations with ``Discrete`` or ``Box`` actions; anything else gets Gymnasium's
    ``SyncVectorEnv``.
    """

    def __init__(self, env_fns: list[Callable[[], gym.Env]]) -> None:
        self.envs = [fn() for fn in env_fns]
        self.num_envs = len(self.envs)
        first = self.envs[0]
        self.metadata = {**first.metadata, "autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        self.render_mode = first.render_mode
        self.spec = first.spec
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = gym.vector.utils.batch_space(first.observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(first.action_space, self.num_envs)
        self._discrete = isinstance(first.action_space, gym.spaces.Discrete)
        self._obs = np.zeros((self.num_envs, *first.observation_space.shape),
                             dtype=first.observation_space.dtype)

    @staticmethod
    def supports(observation_space: gym.Space, action_space: gym.Space) -> bool:
        return type(observation_space) is gym.spaces.Box and isinstance(
            action_space, (gym.spaces.Discrete, gym.spaces.Box))

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise EmrlError(f"reset: {len(seeds)} seeds for {self.num_envs} envs")
        infos: dict[str, Any] = {}
        for i, (env, s) in enumerate(zip(self.envs, seeds, strict=True)):
            self._obs[i], info = env.reset(seed=s, options=options)
            infos = self._add_info(infos, info, i)
        return self._obs.copy(), infos

    def step(self, actions):
        n = self.num_envs
        acts = actions.tolist() if self._discrete else list(actions)
        rewards = np.zeros(n, np.float64)
        terminated = np.zeros(n, np.bool_)
        truncated = np.zeros(n, np.bool_)
        infos: dict[str, Any] = {}
        for i, env in enumerate(self.envs):
            obs, rewards[i], terminated[i], truncated[i], info = env.step(acts[i])
            if terminated[i] or truncated[i]:
                infos = self._add_info(infos, {"final_obs": obs, "final_info": info}, i)
                obs, info = env.reset()
            self._obs[i] = obs
            if info:
                infos = self._add_info(infos, info, i)
        return self._obs.copy(), rewards, terminated, truncated, infos

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()


# ------------------------------------------------------------------ checks/stats
def check_finite(env_id: str, step: int, obs: np.ndarray, reward: np.ndarray | float) -> None:
    """Raise :class:`EmrlError` naming ``env_id`` and ``step`` if obs/reward hold NaN or inf."""
    if obs.dtype.kind == "f" and not np.isfinite(obs).all():
        raise EmrlError(
            f"environment {env_id!r} returned a non-finite observation at env step {step}"
        )
    r = np.asarray(reward)
    if not np.isfinite(r).all():
        raise EmrlError(f"environment {env_id!r} returned a non-finite reward at env step {step}")


class RunningMeanStd:
    """Running mean / variance over a batch axis (Chan et al. parallel update).

    ``normalize(x)`` = clip((x - mean) / sqrt(var + eps), ±clip). ``state_dict`` and
    ``load_state_dict`` for checkpoints.
    """

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8) -> None:
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4
        self.clip = clip
        self.eps = eps

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        b_mean, b_var, b_count = x.mean(0), x.var(0), x.shape[0]
        delta = b_mean - self.mean
        tot = self.count + b_count
        self.mean = self.mean + delta * b_count / tot
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / tot
        self.var = m2 / tot
        self.count = tot

    def normalize(self, x: np.ndarray) -> np.ndarray:
        y = (x - self.mean) / np.sqrt(self.var + self.eps)
        return np.clip(y, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.mean = np.asarray(d["mean"], np.float64)
        self.var = np.asarray(d["var"], np.float64)
        self.count = float(d["count"])


# ----------------------------------------------------------------------- snapshots
def snapshot_envs(envs: gym.vector.VectorEnv) -> bytes | None:
    """The complete state of a one-process vector env's copies (physics, episode clocks,
    random generators) as bytes, for an exact resume; ``None`` where that is not
    possible: an ``AsyncVectorEnv`` (its envs live in other processes) or an env that
    cannot be pickled (e.g. Box2D worlds, ALE emulators)."""
    if not isinstance(envs, (gym.vector.SyncVectorEnv, LeanSyncVectorEnv)):
        return None
    if not all(_pickles_its_state(e) for e in envs.envs):
        return None
    try:
        return pickle.dumps(envs.envs)
    except Exception:  # noqa: BLE001 - any env may refuse to pickle in its own way
        return None


def _pickles_its_state(env: Any) -> bool:
    """Whether pickling ``env`` (and every wrapper around it) keeps its state: false for
    classes with their own pickling, such as Gymnasium's ``EzPickle`` envs (Box2D, Atari),
    which pickle their constructor arguments and come back as fresh, un-reset envs."""
    seen = 0
    while env is not None and seen < 64:
        cls = type(env)
        if any(getattr(cls, name) is not getattr(object, name)
               for name in ("__getstate__", "__reduce__", "__reduce_ex__")):
            return False
        env = getattr(env, "env", None) if isinstance(env, gym.Wrapper) else None
        seen += 1
    return True


def restore_envs(envs: gym.vector.VectorEnv, blob: bytes) -> None:
    """Put the copies saved by :func:`snapshot_envs` back into ``envs`` (closing the
    copies it had). Only load snapshots of your own runs: they are pickles."""
    if not isinstance(envs, (gym.vector.SyncVectorEnv, LeanSyncVectorEnv)):
        raise EmrlError("an environment snapshot can only be restored into a sync vector env")
    restored = pickle.loads(blob)  # noqa: S301 - the run's own checkpoint (sha256-checked)
    if len(restored) != envs.num_envs:
        raise EmrlError(f"environment snapshot holds {len(restored)} envs, this run has {envs.num_envs}")
    for e in envs.envs:
        e.close()
    envs.envs = restored
