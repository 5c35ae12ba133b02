"""The one training loop for control agents; algorithms plug in (PPO, V-MPO).

Read top to bottom (CleanRL-like): :func:`train` is the loop, :func:`update_agent` one
update's epochs::

    for update in range(num_updates):
        batch = actor.collect(T)                    # rollout, π_old = the acting policy
        algo.prepare(batch)                         # targets/advantages (+ V-MPO's E-step)
        for epoch in range(epochs):
            for mb in minibatches(batch):           # over samples (mlp) or envs (memory cores)
                params, values, _ = agent(mb.obs, mb.state0, mb.reset)   # recompute segment
                loss, m = algo.loss(params, values, mb)
                optimizer step (clipped grads); algo.after_minibatch()
            if algo.stop_early(m): break            # PPO approx-KL early stop
        algo.finish_update(batch)                   # V-MPO: α's step on the realised KL
        log metrics / evaluate / checkpoint         # emrl.runloop's cadences and checkpoints

An algorithm plug-in (:class:`emrl.control.algos.Algorithm`) owns only the maths
specific to it; rollout, minibatching, optimisation, logging, evaluation and
checkpoints live here once, their cadences and the resume checks in :mod:`emrl.runloop`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emrl.checkpoint import load_checkpoint, save_checkpoint
from emrl.config import from_dict, to_dict
from emrl.control.agent import Agent
from emrl.control.algos import Algorithm, build_algorithm
from emrl.control.config import ControlConfig
from emrl.control.envs import RunningMeanStd, make_env, make_vec_env, obs_shape
from emrl.control.evaluate import evaluate
from emrl.control.fastopt import AdamStep, FlatParameters, clip_grad_norm, make_adam
from emrl.control.rollout import Actor, Batch, Minibatch, minibatches
from emrl.errors import CheckpointError, EmrlError
from emrl.metrics import MetricsWriter
from emrl.objectives import checks
from emrl.progress import progress
from emrl.rundir import RunDir
from emrl.runloop import (
    Cadence,
    check_resume,
    load_resume_checkpoint,
    resume_config_values,
    write_checkpoint,
)
from emrl.seeding import get_rng_state, seed_everything, set_rng_state
from emrl.threads import configure_threads

__all__ = ["train", "update_agent", "build_agent", "load_agent", "resolve_resume_config", "Minibatch",
           "minibatches", "RESUMABLE_CHANGES"]


def build_agent(cfg: ControlConfig, observation_space, action_space) -> Agent:
    return Agent(
        observation_space, action_space, core=cfg.core, core_kwargs=cfg.core_kwargs_for(),
        separate_value=cfg.separate_value,
        gaussian_state_dependent_std=cfg.gaussian_state_dependent_std, init_std=cfg.init_std,
        encoder=cfg.encoder, prev_action_reward=cfg.prev_action_reward,
    )


def _meta(cfg: ControlConfig) -> dict[str, Any]:
    return {"env": cfg.env, "algo": cfg.algo, "core": cfg.core}


#: config fields that may change on ``--resume`` (how often to log, save and evaluate;
#: threads). ``total_steps`` may change only without annealing (``anneal_lr`` and, for
#: PPO, ``anneal_clip`` off): annealing runs over ``total_steps``.
RESUMABLE_CHANGES = ("eval_every", "eval_episodes", "save_every", "keep_checkpoints", "log_every",
                     "tensorboard", "num_threads")


def resolve_resume_config(run_dir: Path, overrides: dict[str, Any]) -> ControlConfig:
    """The saved config of ``run_dir`` with the options typed on the command line."""
    values = resume_config_values(run_dir, overrides, ControlConfig)
    return from_dict(ControlConfig, values, source=str(Path(run_dir) / "config.yaml"))


def _check_resume(cfg: ControlConfig, run: RunDir) -> None:
    from emrl.config import load_yaml

    if not run.config_path.is_file():
        raise CheckpointError(f"--resume: {run.path} has no config.yaml (is it an emrl control run directory?)")
    anneals = cfg.anneal_lr or (cfg.algo == "ppo" and cfg.anneal_clip)
    check_resume(cfg, load_yaml(run.config_path), free=RESUMABLE_CHANGES, where=f"the run in {run.path}",
                 horizon="total_steps", horizon_ok=not anneals,
                 horizon_why="the annealing of the learning rate / clip range (anneal_lr, "
                             "anneal_clip run over total_steps)")


@dataclass
class Learner:
    """What an update changes: the agent, its plug-in, the optimiser and the counters."""

    cfg: ControlConfig
    agent: Agent
    algo: Algorithm
    opt: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    flat: FlatParameters | None
    gen: torch.Generator
    obs_rms: RunningMeanStd | None
    update: int = 0
    env_steps: int = 0
    wall0: float = 0.0
    opt_step: Any = field(default=None, repr=False)


def _build_learner(cfg: ControlConfig, envs, device: torch.device) -> Learner:
    agent = build_agent(cfg, envs.single_observation_space, envs.single_action_space).to(device)
    algo = build_algorithm(cfg, agent)  # V-MPO's duals have their own optimiser (Duals)
    params = list(agent.parameters())
    # the agent's parameters and gradients as views of one tensor each: Adam and the
    # gradient clipping then run on one tensor (same updates; emrl.control.fastopt)
    flat = FlatParameters(params) if FlatParameters.supported(params) else None
    opt = make_adam([{"params": [flat.param] if flat is not None else params}], cfg.learning_rate, cfg.adam_eps)
    obs_rms = RunningMeanStd(obs_shape(envs.single_observation_space)) if cfg.normalize_obs else None
    return Learner(cfg, agent, algo, opt, params, flat, torch.Generator().manual_seed(cfg.seed), obs_rms)


def _restore(lrn: Learner, state: dict[str, Any], path: Path, num_updates: int) -> None:
    """Load a checkpoint's state into ``lrn`` (everything checked before anything is written)."""
    try:
        lrn.agent.load_state_dict(state["agent"])
        lrn.algo.load_state_dict(state["algo"])
        if lrn.obs_rms is not None:
            lrn.obs_rms.load_state_dict(state["obs_rms"])
        lrn.update = int(state["update"])
        lrn.env_steps, lrn.wall0 = int(state["env_steps"]), float(state["wall_time"])
        lrn.gen.set_state(state["minibatch_rng"])
        rng_state, opt_state = state["rng"], state["optimizer"]
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this run: {e}") from e
    try:
        lrn.opt.load_state_dict(opt_state)
    except (ValueError, KeyError, TypeError) as e:  # another parameter layout (e.g. an emrl before the flat one)
        raise CheckpointError(
            f"checkpoint {path}: its optimizer state does not fit this agent's "
            f"parameters ({e}); it was written by another emrl version or agent configuration. "
            "Start a new run (or resume with the emrl version that wrote it)"
        ) from e
    if lrn.update > num_updates:
        raise CheckpointError(f"checkpoint {path} is at update {lrn.update}, beyond this run's "
                              f"{num_updates} updates (total_steps={lrn.cfg.total_steps})")
    try:
        set_rng_state(rng_state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path}: its RNG state is malformed ({e})") from e


def _make_actor(lrn: Learner, envs, device, state: dict[str, Any] | None, path: Path | None) -> Actor:
    """The actor; on resume with the checkpoint's environment snapshot when it has one."""
    cfg = lrn.cfg
    actor = Actor(envs, lrn.agent, cfg.env, seed=cfg.seed + 7919 * lrn.update, obs_rms=lrn.obs_rms,
                  device=device, reward_scale=cfg.reward_scale)
    if state is None:
        return actor
    snapshot = state.get("actor")
    if snapshot is None or not isinstance(snapshot.get("envs"), list):  # none, or old (pickled) format
        print(f"note: {cfg.env} could not be snapshotted with the checkpoint (only envs whose "
              "state is plain data, such as classic control, with sync vectorization are): "
              "the resumed run starts new episodes, so it is not bit-identical to an "
              "uninterrupted one", file=sys.stderr)
        return actor
    # exact resume: the envs, observations, core state and episode statistics as they
    # were (the fresh actor's reset also fed the normaliser: reload it)
    try:
        actor.load_state_dict(snapshot)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: its environment snapshot does not fit this run ({e})") from e
    if lrn.obs_rms is not None:
        lrn.obs_rms.load_state_dict(state["obs_rms"])
    return actor


def _zero_grads(lrn: Learner) -> None:
    if lrn.flat is not None:
        lrn.flat.zero_grad()
    else:
        for p in lrn.params:  # = opt.zero_grad(set_to_none=True), minus its hooks
            p.grad = None


def update_agent(lrn: Learner, batch: Batch, progress_frac: float) -> dict[str, Any]:
    """One update on ``batch``: ``epochs`` passes over its minibatches; returns the
    metrics of the last minibatch (and of the plug-in's ``prepare`` / ``finish_update``)."""
    cfg, agent, algo = lrn.cfg, lrn.agent, lrn.algo
    agent.train()
    metrics = dict(algo.prepare(batch))
    epoch_metrics: dict[str, Any] = {}
    # one minibatch of a stateless agent = the whole batch, the same every epoch (no
    # random draw): built once per update
    whole = (list(minibatches(batch, 1, False, lrn.gen))
             if cfg.num_minibatches == 1 and not agent.stateful else None)
    for epoch in range(cfg.epochs):
        mbs = whole if whole is not None else minibatches(batch, cfg.num_minibatches, agent.stateful, lrn.gen)
        for i, mb in enumerate(mbs):
            # the objectives' non-finite scans run on the first minibatch of the update
            # (the batch and a fresh forward pass); later steps reuse that data, so they
            # skip the scans (shape/argument checks always run)
            with checks(enabled=epoch == 0 and i == 0):
                params, values, _ = agent(mb.obs, mb.state0, mb.reset, *mb.prev())
                # metrics are read only after the last minibatch of the last epoch
                # (logging) or of every epoch when the algorithm may stop early
                last = i == cfg.num_minibatches - 1 and (epoch == cfg.epochs - 1 or algo.may_stop_early)
                loss, m = algo.loss(params, values, mb, progress=progress_frac, diagnostics=last)
            _zero_grads(lrn)
            loss.backward()
            gn = clip_grad_norm(lrn.params, cfg.max_grad_norm,
                                flat_grad=lrn.flat.grad if lrn.flat is not None else None)
            lrn.opt_step()  # = opt.step() (bit-identical), minus its Python layers
            algo.after_minibatch()
            if last:
                m["mstep/grad_norm"] = gn
                epoch_metrics = m
        if algo.stop_early(epoch_metrics):
            break
    metrics.update(epoch_metrics)
    metrics.update(algo.finish_update(batch))
    return metrics


def _record(update: int, env_steps: int, batch: Batch, lr: float, t_roll: float, t_upd: float,
            steps_per_s: float, metrics: dict[str, Any], rets: list[float], lens: list[int]) -> dict[str, Any]:
    rec = {"step": update, "samples": env_steps,
           "reward/mean": float(batch.rewards.mean()), "reward/std": float(batch.rewards.std()),
           "lr": lr, "time/rollout_s": t_roll, "time/update_s": t_upd, "throughput/steps_per_s": steps_per_s,
           **{k: _num(v) for k, v in metrics.items()}}
    if rets:
        rec["train/episode_return"] = float(np.mean(rets))
        rec["train/episode_length"] = float(np.mean(lens))
    return rec


class _Reporter:
    """The loop's logging and evaluation chores: a metrics record every ``log_every``
    updates (and the last), an evaluation every ``eval_every`` env steps (before the last
    update: the final evaluation follows the final checkpoint), the progress bar."""

    def __init__(self, cfg: ControlConfig, writer: MetricsWriter, device, num_updates: int, update0: int,
                 env_steps: int) -> None:
        self.cfg, self.writer, self.device, self.num_updates = cfg, writer, device, num_updates
        batch_steps = cfg.num_envs * cfg.unroll_length
        self.bar = progress(total=num_updates * batch_steps, desc=f"{cfg.algo} {cfg.env}", unit="step",
                            initial=update0 * batch_steps)
        self.logs, self.evals = Cadence(cfg.log_every, update0), Cadence(cfg.eval_every, env_steps)
        self.last_eval: float | None = None
        self.recent_returns: list[float] = []
        self.speed_t0, self.speed_steps = time.perf_counter(), 0
        self.postfix: dict[str, str] = {}

    def after_update(self, lrn: Learner, batch: Batch, lr: float, times: tuple[float, float],
                     metrics: dict[str, Any], episodes: tuple[list[float], list[int]]) -> None:
        cfg, n = self.cfg, lrn.update
        rets, lens = episodes
        batch_steps = cfg.num_envs * cfg.unroll_length
        self.speed_steps += batch_steps
        self.recent_returns = (self.recent_returns + rets)[-20:]
        self.bar.update(batch_steps)
        rec: dict[str, Any] = {}
        if self.logs(n) or n == self.num_updates:
            rate = self.speed_steps / max(time.perf_counter() - self.speed_t0, 1e-9)
            rec = _record(n, lrn.env_steps, batch, lr, *times, rate, metrics, rets, lens)
            self.speed_t0, self.speed_steps = time.perf_counter(), 0
        if n < self.num_updates and self.evals(lrn.env_steps):
            self.last_eval = _evaluate(cfg, lrn.agent, lrn.obs_rms, self.device, n - 1)
            rec = {**rec, "step": n, "samples": lrn.env_steps, "eval/return": self.last_eval}
        if rec:
            self.writer.log(rec)
        self.postfix = {"train_return(sampled, last 20 ep)":
                        f"{np.mean(self.recent_returns):.1f}" if self.recent_returns else "-"}
        if self.last_eval is not None:
            self.postfix[eval_label(cfg)] = f"{self.last_eval:.1f}"
        self.bar.set_postfix(self.postfix, refresh=False)

    def close(self, res: dict[str, Any]) -> None:
        self.postfix[eval_label(self.cfg)] = f"{res['mean_return']:.1f}"  # the bar ends on the final number
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.close()


def train(
    cfg: ControlConfig, output_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    """Train an agent as configured; write the run directory; return final metrics.

    Everything (config, the checkpoint and settings to resume, environment, agent,
    optimiser state) is built and validated before anything is written; an old run is
    only removed (``overwrite``) after that. ``trust_checkpoint``: also resume from a
    checkpoint of the old pickle format (can run code; :mod:`emrl.checkpoint`).
    """
    cfg.validate()
    configure_threads(cfg.num_threads)
    device = torch.device(cfg.device)
    run = RunDir(output_dir, resume=resume, overwrite=overwrite, defer=True)  # checks only
    ckpt_path, ckpt = None, None
    if resume:
        ckpt_path, ckpt, _ = load_resume_checkpoint(run, _meta(cfg), trust_pickle=trust_checkpoint)
        _check_resume(cfg, run)
    seed_everything(cfg.seed)
    envs = make_vec_env(cfg.env, cfg.num_envs, vectorization=cfg.vectorization)
    try:
        lrn = _build_learner(cfg, envs, device)
        batch_steps, num_updates = cfg.num_envs * cfg.unroll_length, num_updates_of(cfg)
        if ckpt is not None:
            _restore(lrn, ckpt, ckpt_path, num_updates)
        update0 = lrn.update
        # everything is validated: only now is the old run removed (--overwrite) and anything written
        run.prepare()
        lrn.opt_step = AdamStep(lrn.opt)
        actor = _make_actor(lrn, envs, device, ckpt, ckpt_path)
        run.write_config(cfg)
        # resuming from the final checkpoint: the final record (logged after it) is
        # dropped and logged again, never twice
        final_rec = (lambda r: not (r.get("step") == num_updates and "eval/return" in r)) \
            if update0 == num_updates else None
        writer = MetricsWriter(run.metrics_path, tensorboard=cfg.tensorboard, start_time=lrn.wall0,
                               report_to=cfg.report_to, config=cfg,
                               truncate_after_step=update0 if resume else None, keep=final_rec)
        rep = _Reporter(cfg, writer, device, num_updates, update0, lrn.env_steps)
        saves = Cadence(cfg.save_every, lrn.env_steps)
        for update in range(update0, num_updates):
            frac = 1.0 - update / num_updates  # 1 -> 0
            lr = cfg.learning_rate * frac if cfg.anneal_lr else cfg.learning_rate
            lrn.opt.param_groups[0]["lr"] = lr
            # ---- rollout with π_old = the current policy
            t0 = time.perf_counter()
            lrn.agent.eval()
            batch = actor.collect(cfg.unroll_length)
            lrn.env_steps += batch_steps
            t_roll = time.perf_counter() - t0
            # ---- update
            t1 = time.perf_counter()
            metrics = update_agent(lrn, batch, frac)
            t_upd = time.perf_counter() - t1
            lrn.update = update + 1
            # ---- log / evaluate / checkpoint
            rep.after_update(lrn, batch, lr, (t_roll, t_upd), metrics, actor.stats.pop())
            if update + 1 < num_updates and saves(lrn.env_steps):
                _save(run, lrn, actor, writer.elapsed)
        # the final checkpoint comes before the final evaluation: if evaluating fails,
        # --resume finishes the run from here without redoing any update
        if update0 < num_updates or run.latest_checkpoint() is None:
            _save(run, lrn, actor, writer.elapsed)
        res = _evaluate(cfg, lrn.agent, lrn.obs_rms, device, num_updates, full=True)
        rep.close(res)
        final = {"step": num_updates, "samples": lrn.env_steps, "eval/return": res["mean_return"],
                 "eval/return_std": res["std_return"], "eval/episodes": res["episodes"],
                 "eval/first_seed": res["seeds"][0], "eval/deterministic": float(res["deterministic"])}
        writer.log(final)
        writer.close()
        _save_final(run, cfg, lrn.agent, lrn.obs_rms)
        return {**final, "eval/summary": describe_eval(res)}
    finally:
        envs.close()


def _num(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean()) if v.numel() else None
    return v


def _save(run: RunDir, lrn: Learner, actor: Actor, wall: float) -> None:
    state = {
        "agent": lrn.agent.state_dict(), "optimizer": lrn.opt.state_dict(), "algo": lrn.algo.state_dict(),
        "update": lrn.update, "env_steps": lrn.env_steps, "wall_time": wall, "rng": get_rng_state(),
        "minibatch_rng": lrn.gen.get_state(), "actor": actor.state_dict(),
    }
    if lrn.obs_rms is not None:
        state["obs_rms"] = lrn.obs_rms.state_dict()
    write_checkpoint(run, lrn.update, state, meta={**_meta(lrn.cfg), "update": lrn.update,
                                                    "env_steps": lrn.env_steps}, keep=lrn.cfg.keep_checkpoints)


def eval_seed(cfg: ControlConfig, update: int) -> int:
    """Env seed of the first episode of the evaluation after ``update`` updates."""
    return cfg.seed + 100_003 + update


def num_updates_of(cfg: ControlConfig) -> int:
    return max(1, cfg.total_steps // (cfg.num_envs * cfg.unroll_length))


def final_eval_seed(cfg: ControlConfig) -> int:
    """Env seed of the first episode of a run's final evaluation (``emrl control eval``'s
    default, so that it reproduces the number ``emrl control train`` ends with)."""
    return eval_seed(cfg, num_updates_of(cfg))


def eval_label(cfg: ControlConfig) -> str:
    policy = "deterministic" if cfg.eval_deterministic else "sampled"
    return f"eval_return({policy}, {cfg.eval_episodes} ep)"


def describe_eval(res: dict[str, Any]) -> str:
    """``"± 12.30 over 10 episodes, deterministic policy (the mode action), env seeds 5-14"``."""
    policy = "deterministic policy (the mode action)" if res["deterministic"] else "sampled policy (actions drawn)"
    a, b = res["seeds"]
    seeds = f"env seed {a}" if a == b else f"env seeds {a}-{b}"
    return f"± {res['std_return']:.2f} over {res['episodes']} episodes, {policy}, {seeds}"


def _evaluate(cfg: ControlConfig, agent: Agent, obs_rms, device, salt: int, full: bool = False):
    agent.eval()
    res = evaluate(agent, cfg.env, episodes=cfg.eval_episodes, seed=eval_seed(cfg, salt),
                   deterministic=cfg.eval_deterministic, obs_rms=obs_rms, device=device)
    return res if full else res["mean_return"]


def _save_final(run, cfg, agent, obs_rms) -> None:
    state: dict[str, Any] = {"agent": agent.state_dict(), "config": to_dict(cfg)}
    if obs_rms is not None:
        state["obs_rms"] = obs_rms.state_dict()
    save_checkpoint(run.final_dir, state, meta=_meta(cfg))


def load_agent(run_dir: str | Path, device: str = "cpu", *, trust_checkpoint: bool = False,
               trust_env_code: bool = False) -> tuple[Agent, ControlConfig, RunningMeanStd | None]:
    """Load the final (or latest checkpointed) agent of a run directory (data only:
    nothing is unpickled unless ``trust_checkpoint`` allows an old-format checkpoint; an
    environment id naming a module is imported only with ``trust_env_code``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise CheckpointError(f"{run_dir} is not a control run directory (no config.yaml)")
    from emrl.config import load_config
    from emrl.control.envs import is_custom_env_id

    cfg = load_config(ControlConfig, run_dir / "config.yaml")
    if is_custom_env_id(cfg.env) and not trust_env_code:
        raise EmrlError(
            f"the run in {run_dir} names environment {cfg.env!r}, which would import module "
            f"{cfg.env.partition(':')[0]!r}; emrl does not run code named by a run directory "
            "unless asked: pass --trust-env-code if you trust that module")
    path = run_dir / "final"
    if not path.exists():
        from emrl.checkpoint import latest_checkpoint

        path = latest_checkpoint(run_dir)
        if path is None:
            raise CheckpointError(f"{run_dir} holds neither final/ nor a checkpoint")
    state, meta = load_checkpoint(path, trust_pickle=trust_checkpoint)
    if meta.get("env") != cfg.env:
        raise CheckpointError(f"{path} was trained on {meta.get('env')!r}, config says {cfg.env!r}")
    env = make_env(cfg.env)
    agent = build_agent(cfg, env.observation_space, env.action_space)
    env.close()
    try:
        agent.load_state_dict(state["agent"])
        obs_rms = None
        if "obs_rms" in state:
            obs_rms = RunningMeanStd(agent.obs_shape)
            obs_rms.load_state_dict(state["obs_rms"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not fit the agent of {run_dir / 'config.yaml'}: {e}") from e
    agent.to(device).eval()
    return agent, cfg, obs_rms
