"""Rollout collection: the actor steps the vector env and fills a :class:`Batch`.

Storage is time-major ``[T, N, ...]`` (T = unroll length, N = envs). For each training
segment the batch keeps the core state at its first step (``state0``), so the update
recomputes the segment in one ``agent(obs, state0, reset)`` call and sees what the actor
saw (see :mod:`emrl.nn.core`). Agents with the spec §8 extra inputs
(``prev_action_reward``) also get the stored ``prev_actions`` / ``prev_rewards``.

Flags per step ``t`` (conventions of :mod:`emrl.objectives.returns`):
``reset[t]``: step t starts an episode; ``terminated[t]`` / ``dones[t]``: the episode
ends after step t (dones also for truncation); ``next_values[t] = V(s_{t+1})`` where
``s_{t+1}`` is the final pre-reset observation after a truncation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from emrl.control.agent import Agent
from emrl.control.envs import RunningMeanStd, check_finite, restore_envs, snapshot_envs
from emrl.nn.core import State, index_state

_EMPTY = np.zeros(0, np.float32)


@dataclass
class Batch:
    obs: torch.Tensor           # [T, N, *obs_shape]
    actions: torch.Tensor       # [T, N] (discrete) or [T, N, D]
    logp: torch.Tensor          # [T, N] log π_old(a|s)
    params: torch.Tensor        # [T, N, P] π_old's distribution parameters
    values: torch.Tensor        # [T, N] V_old(s_t)
    next_values: torch.Tensor   # [T, N] V_old(s_{t+1})
    rewards: torch.Tensor       # [T, N]
    terminated: torch.Tensor    # [T, N] bool
    dones: torch.Tensor         # [T, N] bool
    reset: torch.Tensor         # [T, N] bool
    state0: State               # core state before step 0, tensors [N, ...]
    # spec §8 extra inputs (agents with prev_action_reward, else None): the encoded
    # previous action [T, N, A] and previous reward [T, N] the actor fed the core at t
    # (zero at episode starts)
    prev_actions: torch.Tensor | None = None
    prev_rewards: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # algorithm targets [T, N]


@dataclass
class Minibatch:
    obs: torch.Tensor
    actions: torch.Tensor
    logp: torch.Tensor
    params: torch.Tensor
    values: torch.Tensor
    reset: torch.Tensor
    state0: tuple
    extra: dict[str, torch.Tensor]
    prev_actions: torch.Tensor | None = None  # spec §8 extra inputs (see rollout.Batch)
    prev_rewards: torch.Tensor | None = None

    def prev(self) -> tuple[torch.Tensor, ...]:
        """``(prev_actions, prev_rewards)`` for the agent's forward, or ``()``."""
        if self.prev_actions is None or self.prev_rewards is None:
            return ()
        return (self.prev_actions, self.prev_rewards)


def minibatches(batch: Batch, num_minibatches: int, stateful: bool, gen: torch.Generator):
    """Yield :class:`Minibatch` es: random sample subsets as [1, M] for stateless agents,
    random env subsets as whole [T, M] segments (with their stored state) otherwise."""
    T, N = batch.rewards.shape
    fields: tuple[str, ...] = ("obs", "actions", "logp", "params", "values", "reset")
    if batch.prev_actions is not None:
        fields += ("prev_actions", "prev_rewards")
    if not stateful:
        flat = {f: getattr(batch, f).reshape(1, T * N, *getattr(batch, f).shape[2:]) for f in fields}
        extra = {k: v.reshape(1, T * N, *v.shape[2:]) for k, v in batch.extra.items()}
        if num_minibatches == 1:  # the whole batch: order does not matter
            flat["reset"] = torch.zeros_like(flat["reset"])
            yield Minibatch(**flat, state0=(), extra=extra)
            return
        perm = torch.randperm(T * N, generator=gen)
        size = T * N // num_minibatches
        for i in range(num_minibatches):
            idx = perm[i * size:(i + 1) * size]
            d = {f: flat[f][:, idx] for f in fields}
            d["reset"] = torch.zeros_like(d["reset"])
            yield Minibatch(**d, state0=(), extra={k: v[:, idx] for k, v in extra.items()})
        return
    perm = torch.randperm(N, generator=gen)
    size = N // num_minibatches
    for i in range(num_minibatches):
        idx = perm[i * size:(i + 1) * size]
        d = {f: getattr(batch, f)[:, idx] for f in fields}
        yield Minibatch(**d, state0=index_state(batch.state0, idx),
                        extra={k: v[:, idx] for k, v in batch.extra.items()})


def whole_batch(batch: Batch) -> Minibatch:
    """The whole batch as one :class:`Minibatch` ([T, N], envs in order, with the stored
    state): what the update's forward pass over every sample sees."""
    return Minibatch(obs=batch.obs, actions=batch.actions, logp=batch.logp, params=batch.params,
                     values=batch.values, reset=batch.reset, state0=batch.state0, extra=dict(batch.extra),
                     prev_actions=batch.prev_actions, prev_rewards=batch.prev_rewards)


class EpisodeStats:
    """Undiscounted returns and lengths of finished training episodes (raw rewards)."""

    def __init__(self, num_envs: int) -> None:
        self.ret = np.zeros(num_envs)
        self.len = np.zeros(num_envs, np.int64)
        self.returns: list[float] = []
        self.lengths: list[int] = []

    def step(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.ret += rewards
        self.len += 1
        for i in np.nonzero(dones)[0]:
            self.returns.append(float(self.ret[i]))
            self.lengths.append(int(self.len[i]))
            self.ret[i] = 0.0
            self.len[i] = 0

    def pop(self) -> tuple[list[float], list[int]]:
        r, n = self.returns, self.lengths
        self.returns, self.lengths = [], []
        return r, n

    def state_dict(self) -> dict[str, Any]:
        return {"ret": self.ret.copy(), "len": self.len.copy(), "returns": list(self.returns),
                "lengths": list(self.lengths)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.ret, self.len = sd["ret"].copy(), sd["len"].copy()
        self.returns, self.lengths = list(sd["returns"]), list(sd["lengths"])


class Actor:
    """Carries env observations, core state and reset flags between rollouts."""

    def __init__(
        self, envs: gym.vector.VectorEnv, agent: Agent, env_id: str, *, seed: int,
        obs_rms: RunningMeanStd | None, device: torch.device, reward_scale: float = 1.0,
    ) -> None:
        self.reward_scale = float(reward_scale)
        self.envs = envs
        self.agent = agent
        self.env_id = env_id
        self.device = device
        self.obs_rms = obs_rms
        self.n = envs.num_envs
        self.discrete = isinstance(envs.single_action_space, gym.spaces.Discrete)
        if not self.discrete:
            self.low = envs.single_action_space.low
            self.high = envs.single_action_space.high
        raw, _ = envs.reset(seed=seed)
        self.env_steps = 0
        self.obs = self._prep(raw, update=True)
        self.state = agent.initial_state(self.n, device)
        self.reset = torch.ones(self.n, dtype=torch.bool, device=device)
        # spec §8: previous action (encoded) and reward per env, zero at episode starts
        self.prev_inputs = bool(getattr(agent, "prev_action_reward", False))
        if self.prev_inputs:
            self.prev_action = torch.zeros(self.n, agent.action_enc_size, device=device)
            self.prev_reward = torch.zeros(self.n, device=device)
        self.stats = EpisodeStats(self.n)

    def state_dict(self) -> dict[str, Any] | None:
        """Everything the next :meth:`collect` depends on besides the agent, the
        observation normaliser and the global RNGs: the envs' own state (see
        :func:`emrl.control.envs.snapshot_envs`), the current observations, core state,
        reset flags, previous action/reward inputs and unfinished episode statistics.
        ``None`` when the envs cannot be snapshotted (a resume then starts new episodes)."""
        snaps = snapshot_envs(self.envs)
        if snaps is None:
            return None
        sd: dict[str, Any] = {"envs": snaps, "obs": self.obs, "state": self.state, "reset": self.reset,
                              "env_steps": self.env_steps, "stats": self.stats.state_dict()}
        if self.prev_inputs:
            sd["prev_action"], sd["prev_reward"] = self.prev_action, self.prev_reward
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken."""
        restore_envs(self.envs, sd["envs"])
        dev = self.device
        self.obs = sd["obs"].to(dev)
        self.state = tuple(x.to(dev) for x in sd["state"])
        self.reset = sd["reset"].to(dev)
        self.env_steps = int(sd["env_steps"])
        self.stats.load_state_dict(sd["stats"])
        if self.prev_inputs:
            self.prev_action, self.prev_reward = sd["prev_action"].to(dev), sd["prev_reward"].to(dev)

    def _prep(self, raw: np.ndarray, update: bool) -> torch.Tensor:
        check_finite(self.env_id, self.env_steps, np.asarray(raw), 0.0)
        if self.obs_rms is not None:
            if update:
                self.obs_rms.update(raw)
            raw = self.obs_rms.normalize(raw)
        t = torch.from_numpy(np.asarray(raw))
        if t.dtype == torch.float64:
            t = t.float()
        return t.to(self.device)

    @torch.no_grad()
    def collect(self, T: int) -> Batch:
        """Step the envs ``T`` times with the current policy; return the [T, N] batch.

        A stateless agent (``agent.stateful`` False) samples with the policy alone at
        each step and computes the values V(s_0..s_T) and log π(a_t|s_t) of the whole
        rollout in one batched call at the end: the same functions of the same
        inputs, with far fewer small tensor operations per env step. Memory agents
        compute everything step by step (their state evolves).
        """
        agent, n, dev = self.agent, self.n, self.device
        stateless = not agent.stateful
        obs_buf = torch.empty((T + 1, n, *self.obs.shape[1:]), dtype=self.obs.dtype, device=dev)
        reset_buf = torch.empty((T + 1, n), dtype=torch.bool, device=dev)
        pa_buf = pr_buf = None
        if self.prev_inputs:
            pa_buf = torch.empty((T + 1, n, self.prev_action.shape[-1]), device=dev)
            pr_buf = torch.empty((T + 1, n), device=dev)
        act_l: list[torch.Tensor] = []
        val_l: list[torch.Tensor] = []
        params_l: list[torch.Tensor] = []
        rewards = np.empty((T, n), np.float32)
        terminated = np.empty((T, n), bool)
        dones = np.empty((T, n), bool)
        truncated_only = np.zeros((T, n), bool)
        trunc_values = torch.zeros(T, n, device=dev)
        state0 = self.state
        head = agent.policy_head
        for t in range(T):
            obs_buf[t] = self.obs
            reset_buf[t] = self.reset
            prev: tuple[torch.Tensor, ...] = ()
            if pa_buf is not None and pr_buf is not None:
                pa_buf[t] = self.prev_action
                pr_buf[t] = self.prev_reward
                prev = (pa_buf[t:t + 1], pr_buf[t:t + 1])
            params, value, self.state = agent(obs_buf[t:t + 1], self.state, reset_buf[t:t + 1],
                                              *prev, need_value=not stateless)
            params = params[0]
            if value is not None:
                val_l.append(value[0])
            action = head.sample(params)
            params_l.append(params)
            act_l.append(action)
            a_np = action.numpy() if dev.type == "cpu" else action.cpu().numpy()
            if not self.discrete:
                a_np = np.clip(a_np, self.low, self.high)
            raw, r, term, trunc, info = self.envs.step(a_np)
            self.env_steps += n
            check_finite(self.env_id, self.env_steps, _EMPTY, r)  # the observation: in _prep
            done = np.logical_or(term, trunc)
            self.stats.step(np.asarray(r, np.float64), done)
            rewards[t] = r
            terminated[t] = term
            dones[t] = done
            if self.prev_inputs:  # a_t, r_t: the inputs at t+1 (before the reset zeroing)
                a_t = agent.encode_action(torch.as_tensor(a_np, device=dev))
                r_t = torch.as_tensor(np.asarray(r, np.float32), device=dev)
            tr = np.logical_and(trunc, np.logical_not(term))
            if tr.any():
                idx = np.nonzero(tr)[0]
                final = np.stack([info["final_obs"][i] for i in idx])
                check_finite(self.env_id, self.env_steps, final, 0.0)
                fo = self._prep(final, update=False).unsqueeze(0)
                it = torch.as_tensor(idx, device=dev)
                prev_f = (a_t[it][None], r_t[it][None]) if self.prev_inputs else ()
                _, v_final, _ = agent(fo, index_state(self.state, it),
                                      torch.zeros(1, len(idx), dtype=torch.bool, device=dev), *prev_f)
                trunc_values[t, it] = v_final[0]
                truncated_only[t, idx] = True
            self.obs = self._prep(raw, update=True)
            self.reset = torch.from_numpy(done.copy()).to(dev)
            if self.prev_inputs:
                keep = (~self.reset).to(a_t.dtype)
                self.prev_action = a_t * keep.unsqueeze(-1)
                self.prev_reward = r_t * keep
        obs_buf[T] = self.obs
        reset_buf[T] = self.reset
        prev_all: tuple[torch.Tensor, ...] = ()
        if pa_buf is not None and pr_buf is not None:
            pa_buf[T] = self.prev_action
            pr_buf[T] = self.prev_reward
            prev_all = (pa_buf, pr_buf)
        if stateless:  # V(s_0), ..., V(s_T) in one call (no state, so resets do not matter)
            _, v_all, _ = agent(obs_buf, (), torch.zeros_like(reset_buf), *prev_all)
            values, v_last = v_all[:T], v_all[T:]
        else:
            _, v_last, _ = agent(obs_buf[T:], self.state, reset_buf[T:],
                                 *(x[T:] for x in prev_all))
            values = torch.stack(val_l)
        v_next = torch.cat([values[1:], v_last], 0)
        tr_only = torch.from_numpy(truncated_only).to(dev)
        next_values = torch.where(tr_only, trunc_values, v_next)
        rew = torch.from_numpy(rewards).to(dev)
        if self.reward_scale != 1.0:
            rew = rew * self.reward_scale
        params_all = torch.stack(params_l)
        actions = torch.stack(act_l)
        return Batch(
            obs=obs_buf[:T], actions=actions, logp=head.log_prob(params_all, actions),
            params=params_all, values=values, next_values=next_values, rewards=rew,
            terminated=torch.from_numpy(terminated).to(dev), dones=torch.from_numpy(dones).to(dev),
            reset=reset_buf[:T], state0=state0,
            prev_actions=None if pa_buf is None else pa_buf[:T],
            prev_rewards=None if pr_buf is None else pr_buf[:T],
        )
