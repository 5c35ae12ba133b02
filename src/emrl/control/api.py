"""A Stable-Baselines3-style API over the control loop (:func:`emrl.control.train.train`).

::

    from emrl.control import VMPO

    model = VMPO("CartPole-v1", seed=0)          # any ControlConfig field as a keyword
    model.learn(total_steps=20_000)
    action, state = model.predict(obs)           # one observation or a batch
    model.save("cartpole_vmpo")                  # a run directory: emrl control eval --run ...
    model = VMPO.load("cartpole_vmpo")

``learn`` writes a run directory like ``emrl control train`` does (``output_dir``, or a
fresh temporary directory), so metrics, checkpoints and trackers (``report_to``) behave
the same; calling ``learn`` again continues that run for ``total_steps`` more steps
(resuming from its last checkpoint, so the learning-rate schedule is stretched to the new
total).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emrl.config import from_dict
from emrl.control.config import ControlConfig
from emrl.errors import EmrlError


class _Algorithm:
    algo = "ppo"

    def __init__(self, env: Any = "CartPole-v1", *, output_dir: str | Path | None = None,
                 overwrite: bool = False, **config: Any) -> None:
        if not isinstance(env, str):
            spec = getattr(env, "spec", None)
            if spec is None or not getattr(spec, "id", None):
                raise EmrlError(f"env must be a Gymnasium environment id or an environment made with "
                                f"gymnasium.make (it has a spec id), got {type(env).__name__}")
            env = spec.id
        if "algo" in config:
            raise EmrlError(f"{type(self).__name__} fixes algo={self.algo!r}; use the other class instead")
        # learn() may be called again to keep training, so no schedule may run over a total
        # that is not known in advance: the learning rate and clip range stay constant unless
        # asked for (then a later learn() that extends the run is refused, as on the CLI)
        config = {"anneal_lr": False, "anneal_clip": False, **config}
        self.config: ControlConfig = from_dict(ControlConfig, {**config, "algo": self.algo, "env": env},
                                               source=f"{type(self).__name__}(...)")
        self.config.validate()
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.overwrite = overwrite
        self.run_dir: Path | None = None
        self.num_steps = 0
        self.agent: Any = None
        self.obs_rms: Any = None
        self.last_metrics: dict[str, Any] = {}
        self._action_space: Any = None

    # ------------------------------------------------------------------ training
    def learn(self, total_steps: int) -> _Algorithm:
        """Train for ``total_steps`` environment steps (summed over the parallel envs);
        returns ``self``. The final evaluation is in :attr:`last_metrics`."""
        from emrl.control.train import train

        if int(total_steps) < 1:
            raise EmrlError(f"total_steps must be >= 1, got {total_steps}")
        resume = self.run_dir is not None
        if self.run_dir is None:
            from emrl.rundir import holds_run

            if self.output_dir is not None and holds_run(self.output_dir) and not self.overwrite:
                raise EmrlError(f"output_dir {self.output_dir} already holds a run: pass overwrite=True to "
                                f"replace it, or {type(self).__name__}.load({str(self.output_dir)!r}) to "
                                "use (and keep training) the agent in it")
            self.run_dir = self.output_dir or Path(tempfile.mkdtemp(prefix=f"emrl-{self.algo}-"))
        elif self.run_dir.joinpath("final").exists() and not any(self.run_dir.glob("checkpoint-*")):
            raise EmrlError(f"{self.run_dir} holds a final agent but no checkpoint to continue training from")
        self.num_steps += int(total_steps)
        cfg = dataclasses.replace(self.config, total_steps=self.num_steps)
        self.last_metrics = train(cfg, self.run_dir, resume=resume, overwrite=self.overwrite and not resume)
        self.num_steps = int(self.last_metrics["samples"])
        self._load(self.run_dir)
        return self

    def _load(self, run_dir: Path) -> None:
        from emrl.control.envs import make_env
        from emrl.control.train import load_agent

        self.agent, self.config, self.obs_rms = load_agent(run_dir)
        env = make_env(self.config.env)
        self._action_space = env.action_space
        env.close()

    # ------------------------------------------------------------------ acting
    @torch.inference_mode()
    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[Any, Any]:
        """The action for ``observation`` (one, or a batch ``[B, *obs_shape]``) and the
        memory-core state to pass back on the next call (``None`` for MLP agents).

        ``episode_start`` (bool per batch entry) clears the memory of entries whose episode
        just began; with ``state=None`` every entry starts fresh. ``deterministic`` takes
        the mode of the policy (as evaluation does), otherwise a sample.
        """
        agent = self._need_agent()
        if getattr(agent, "prev_action_reward", False):
            raise EmrlError("this agent also takes the previous action and reward as inputs "
                            "(prev_action_reward=True), which predict() does not track; evaluate it "
                            "with emrl control eval --run DIR")
        obs = np.asarray(observation)
        shape = tuple(agent.obs_shape)
        single = obs.shape == shape
        if single:
            obs = obs[None]
        if obs.shape[1:] != shape:
            raise EmrlError(f"predict: observation shape {np.asarray(observation).shape} does not fit "
                            f"this agent's {shape} (one observation) or [B, *{shape}] (a batch)")
        B = obs.shape[0]
        if self.obs_rms is not None:
            obs = self.obs_rms.normalize(obs)
        x = torch.as_tensor(obs)
        if x.dtype == torch.float64:
            x = x.float()
        if state is None:
            state = agent.initial_state(B)
            reset = torch.ones(1, B, dtype=torch.bool)
        elif episode_start is not None:
            reset = torch.as_tensor(np.asarray(episode_start, dtype=bool).reshape(1, B))
        else:
            reset = torch.zeros(1, B, dtype=torch.bool)
        params, _, new_state = agent(x.unsqueeze(0), state, reset, need_value=False)
        head = agent.policy_head
        a = (head.mode(params[0]) if deterministic else head.sample(params[0])).cpu().numpy()
        if agent.discrete:
            a = a.astype(np.int64)
        else:
            a = np.clip(a, self._action_space.low, self._action_space.high)
        if single:
            a = a[0]
            if agent.discrete:
                a = int(a)
        return a, (new_state if agent.stateful else None)

    def evaluate(self, episodes: int = 10, *, seed: int = 12345, deterministic: bool = True) -> dict[str, Any]:
        """Run ``episodes`` evaluation episodes (:func:`emrl.control.evaluate.evaluate`)."""
        from emrl.control.evaluate import evaluate

        agent = self._need_agent()
        return evaluate(agent, self.config.env, episodes=episodes, seed=seed,
                        deterministic=deterministic, obs_rms=self.obs_rms)

    def _need_agent(self):
        if self.agent is None:
            raise EmrlError(f"{type(self).__name__} has no trained agent yet: call learn(total_steps) "
                            "or load(path) first")
        return self.agent

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write ``config.yaml``, ``metrics.jsonl``, ``final/`` and the latest checkpoint to
        ``path``: a run directory that ``emrl control eval --run`` and :meth:`load` read, and
        that :meth:`learn` can continue after :meth:`load`."""
        from emrl.checkpoint import latest_checkpoint

        self._need_agent()
        assert self.run_dir is not None
        path = Path(path)
        if path.resolve() == self.run_dir.resolve():
            return path
        path.mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "metrics.jsonl"):
            if (self.run_dir / name).exists():
                shutil.copy2(self.run_dir / name, path / name)
        if (path / "final").exists():
            shutil.rmtree(path / "final")
        shutil.copytree(self.run_dir / "final", path / "final")
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is not None:
            for old in path.glob("checkpoint-*"):
                shutil.rmtree(old)
            shutil.copytree(ckpt, path / ckpt.name)
        return path

    @classmethod
    def load(cls, path: str | Path) -> _Algorithm:
        """The trained agent saved in ``path`` (by :meth:`save` or ``emrl control train``)."""
        from emrl.config import load_config

        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise EmrlError(f"{path} is not a control run directory (no config.yaml)")
        cfg = load_config(ControlConfig, path / "config.yaml")
        if cfg.algo != cls.algo:
            raise EmrlError(f"{path} holds a {cfg.algo} agent; load it with emrl.control.{cfg.algo.upper()}")
        self = cls(cfg.env, **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                               if f.name not in ("algo", "env")})
        self.run_dir = path
        self.num_steps = cfg.total_steps
        self._load(path)
        return self


class PPO(_Algorithm):
    """PPO (spec §4) on a Gymnasium environment: ``PPO(env_id, **ControlConfig fields)``."""

    algo = "ppo"


class VMPO(_Algorithm):
    """V-MPO (spec §5) on a Gymnasium environment: ``VMPO(env_id, **ControlConfig fields)``;
    ``core="gtrxl"`` (or ``trxl``, ``trxl-i``, ``lstm``) for memory tasks (spec §8)."""

    algo = "vmpo"


__all__ = ["PPO", "VMPO"]
