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
  ``memory``); your own envs as ``module:EnvId`` (a module that registers ``EnvId``) or
  ``module:EnvClass`` (a ``gymnasium.Env`` subclass); MinAtar as ``minatar:<game>`` or
  ``MinAtar/<Game>-v1`` (extra ``minatar``, :mod:`emrl.control.minatar`). Unknown ids get close-match
  suggestions.
* Discrete / MultiDiscrete observations are one-hot encoded (concatenated).
* :class:`RunningMeanStd` normalises observations (state kept in checkpoints).
* :func:`check_finite` raises an error naming the env and step on NaN/inf.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from emrl.control.minatar import check_minatar_id, is_minatar_id, make_minatar
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


CUSTOM_NAMESPACE = "emrl-custom"


def is_custom_env_id(env_id: str) -> bool:
    """Whether ``env_id`` names a module to import (``module:EnvId`` / ``module:EnvClass``)."""
    return ":" in env_id and not env_id.startswith((ATARI_PREFIX, POPGYM_PREFIX, BSUITE_PREFIX)) \
        and not is_minatar_id(env_id)


def resolve_env_id(env_id: str) -> str:
    """The registered Gymnasium id of ``env_id``.

    Besides plain ids: ``module:EnvId`` imports ``module`` (which registers ``EnvId``, as
    in ``gymnasium.make``) and ``module:EnvClass`` registers the ``gymnasium.Env``
    subclass ``EnvClass`` of ``module`` (as ``emrl-custom/module.EnvClass-v0``). A module is
    imported only when the id names it.
    """
    if not is_custom_env_id(env_id):
        return env_id
    from emrl.imports import import_user_module

    mod_name, _, name = env_id.partition(":")
    if not mod_name or not name:
        raise EmrlError(f"environment {env_id!r}: expected 'module:EnvId' or 'module:EnvClass'")
    module = import_user_module(mod_name, f"environment {env_id!r}")
    if name in gym.registry:
        return name
    obj = getattr(module, name, None)
    if isinstance(obj, type) and issubclass(obj, gym.Env):
        reg_id = f"{CUSTOM_NAMESPACE}/{mod_name}.{name}-v0"
        if reg_id not in gym.registry:
            gym.register(id=reg_id, entry_point=obj)
        return reg_id
    classes = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, gym.Env)
               and v.__module__ == module.__name__]
    matches = close_matches(name, classes + [i for i in gym.registry if i.startswith(name[:3])])
    hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
    raise EmrlError(f"environment {env_id!r}: module {mod_name!r} registers no environment {name!r} "
                    f"and has no gymnasium.Env class of that name.{hint}")


def check_env_id(env_id: str) -> None:
    """Raise :class:`EmrlError` with close ids when ``env_id`` is not registered."""
    if env_id.startswith(BSUITE_PREFIX):
        from emrl.control.bsuite_adapter import parse_bsuite_id

        parse_bsuite_id(env_id)
        return
    if is_minatar_id(env_id):
        return check_minatar_id(env_id)
    env_id = resolve_env_id(env_id)
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
    if is_minatar_id(env_id):
        return make_minatar(env_id, render_mode=render_mode, **kwargs)
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
    env = gym.make(resolve_env_id(env_id), **kwargs)
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
#: environment packages whose state is entirely in plain attributes (arrays, numbers) and
#: the ``np_random`` generator: these can be snapshotted as data.
_SNAPSHOT_MODULES = ("gymnasium.envs.classic_control.", "gymnasium.envs.toy_text.")
#: wrappers whose state is plain attributes (episode clocks, checker flags).
_SNAPSHOT_WRAPPERS = ("TimeLimit", "OrderEnforcing", "PassiveEnvChecker", "TransformObservation")
#: attributes rebuilt identically by making the env again (never snapshotted).
_REBUILT = ("env", "spec", "metadata", "_metadata", "_cached_spec", "func", "_np_random", "np_random",
            "render_mode")
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def _is_data(v: Any, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if v is None or isinstance(v, (bool, int, float, str, np.generic)):
        return not isinstance(v, np.generic) or v.dtype.kind in "biuf"
    if isinstance(v, np.ndarray):
        return v.dtype.kind in "biuf"
    if isinstance(v, (list, tuple)):
        return all(_is_data(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, (str, int)) and _is_data(x, depth + 1) for k, x in v.items())
    return False


def _layers(env: Any) -> list[Any]:
    out = []
    while isinstance(env, gym.Wrapper) and len(out) < 64:
        out.append(env)
        env = env.env
    out.append(env)
    return out


def _snapshot_one(env: gym.Env) -> list[dict[str, Any]] | None:
    layers = _layers(env)
    base = layers[-1]
    if not type(base).__module__.startswith(_SNAPSHOT_MODULES):
        return None
    out = []
    for layer in layers:
        name = type(layer).__name__
        if layer is not base and name not in _SNAPSHOT_WRAPPERS:
            return None
        attrs: dict[str, Any] = {}
        for k, v in vars(layer).items():
            if k in _REBUILT or isinstance(v, (gym.Space, gym.envs.registration.EnvSpec)):
                continue
            if not _is_data(v):
                return None  # e.g. a live renderer: the state is not plain data
            attrs[k] = v.copy() if isinstance(v, np.ndarray) else copy.deepcopy(v)
        rng = None
        if layer is base and getattr(layer, "_np_random", None) is not None:
            bg = layer._np_random.bit_generator
            if type(bg).__name__ not in _BIT_GENERATORS:
                return None
            rng = copy.deepcopy(bg.state)
        out.append({"class": name, "attrs": attrs, "np_random": rng})
    return out


def snapshot_envs(envs: gym.vector.VectorEnv) -> list[list[dict[str, Any]]] | None:
    """The state of a one-process vector env's copies (physics state arrays, episode
    clocks, ``np_random`` generator states) as plain data, for an exact resume.

    Only environments whose state is plain data are snapshotted: Gymnasium's classic
    control and toy-text environments, under the standard wrappers (``TimeLimit``,
    ``OrderEnforcing``, the env checker). ``None`` for anything else — an
    ``AsyncVectorEnv`` (its envs live in other processes), Box2D worlds, ALE emulators,
    other packages' envs — and a resume then starts new episodes. Nothing is pickled.
    """
    if not isinstance(envs, (gym.vector.SyncVectorEnv, LeanSyncVectorEnv)):
        return None
    snaps = []
    for e in envs.envs:
        snap = _snapshot_one(e)
        if snap is None:
            return None
        snaps.append(snap)
    return snaps


def _generator(state: Any) -> np.random.Generator:
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise EmrlError(f"environment snapshot: unknown random generator {name!r}")
    bg = getattr(np.random, name)()
    bg.state = state
    return np.random.Generator(bg)


def restore_envs(envs: gym.vector.VectorEnv, snaps: Any) -> None:
    """Put the state saved by :func:`snapshot_envs` back into the (freshly made) copies
    of ``envs``; the layers must match (same env and wrappers)."""
    if not isinstance(envs, (gym.vector.SyncVectorEnv, LeanSyncVectorEnv)):
        raise EmrlError("an environment snapshot can only be restored into a sync vector env")
    if not isinstance(snaps, list):
        raise EmrlError(f"environment snapshot must be a list of envs, got {type(snaps).__name__}")
    if len(snaps) != envs.num_envs:
        raise EmrlError(f"environment snapshot holds {len(snaps)} envs, this run has {envs.num_envs}")
    plans = []
    for i, (env, snap) in enumerate(zip(envs.envs, snaps, strict=True)):
        layers = _layers(env)
        names = [type(x).__name__ for x in layers]
        try:
            saved = [d["class"] for d in snap]
        except (TypeError, KeyError) as e:
            raise EmrlError(f"environment snapshot of env {i} is malformed") from e
        if names != saved:
            raise EmrlError(f"environment snapshot of env {i} has layers {saved}, this env has {names}")
        for layer, d in zip(layers, snap, strict=True):
            attrs = d.get("attrs")
            if not isinstance(attrs, dict) or not _is_data(attrs) or any(
                    not isinstance(k, str) or k in _REBUILT or k.startswith("__") for k in attrs):
                raise EmrlError(f"environment snapshot of env {i} has malformed attributes")
            rng = _generator(d["np_random"]) if d.get("np_random") is not None else None
            plans.append((layer, attrs, rng))
    for layer, attrs, rng in plans:
        for k, v in attrs.items():
            setattr(layer, k, v.copy() if isinstance(v, np.ndarray) else copy.deepcopy(v))
        if rng is not None:
            layer._np_random = rng
