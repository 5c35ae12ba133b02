"""The one training loop for control agents; algorithms plug in (PPO, V-MPO).

Read top to bottom (CleanRL-like)::

    for update in range(num_updates):
        batch = actor.collect(T)                    # rollout, π_old = the acting policy
        algo.prepare(batch)                         # targets/advantages (emrl.objectives)
        for epoch in range(epochs):
            for mb in minibatches(batch):           # over samples (mlp) or envs (memory cores)
                params, values, _ = agent(mb.obs, mb.state0, mb.reset)   # recompute segment
                loss, m = algo.loss(params, values, mb)
                optimizer step (clipped grads)
            if algo.stop_early(m): break            # PPO approx-KL early stop
        log metrics / evaluate / checkpoint

An algorithm plug-in (:class:`emrl.control.algos.Algorithm`) owns only the maths
specific to it; rollout, minibatching, optimisation, logging, evaluation and
checkpoints live here once.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emrl.checkpoint import load_checkpoint, prune_checkpoints, save_checkpoint
from emrl.config import from_dict, load_yaml, to_dict
from emrl.control.agent import Agent
from emrl.control.algos import Algorithm, build_algorithm
from emrl.control.config import ControlConfig
from emrl.control.envs import RunningMeanStd, make_env, make_vec_env, obs_shape
from emrl.control.evaluate import evaluate
from emrl.control.fastopt import AdamStep, FlatParameters, clip_grad_norm, make_adam
from emrl.control.rollout import Actor, Batch
from emrl.errors import CheckpointError, EmrlError
from emrl.metrics import MetricsWriter
from emrl.nn.core import index_state
from emrl.objectives import checks
from emrl.progress import progress
from emrl.rundir import RunDir, check_resume_config
from emrl.seeding import get_rng_state, seed_everything, set_rng_state
from emrl.threads import configure_threads


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


def build_agent(cfg: ControlConfig, observation_space, action_space) -> Agent:
    return Agent(
        observation_space, action_space, core=cfg.core, core_kwargs=cfg.core_kwargs_for(),
        separate_value=cfg.separate_value,
        gaussian_state_dependent_std=cfg.gaussian_state_dependent_std, init_std=cfg.init_std,
        encoder=cfg.encoder, prev_action_reward=cfg.prev_action_reward,
    )


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


def _meta(cfg: ControlConfig) -> dict[str, Any]:
    return {"env": cfg.env, "algo": cfg.algo, "core": cfg.core}


#: config fields that may change on ``--resume`` (how often to log, save and evaluate;
#: threads). ``total_steps`` may change only without annealing (``anneal_lr`` and, for
#: PPO, ``anneal_clip`` off): annealing runs over ``total_steps``.
RESUMABLE_CHANGES = ("eval_every", "eval_episodes", "checkpoint_every", "keep_checkpoints", "log_every",
                     "tensorboard", "num_threads")


def resolve_resume_config(run_dir: Path, overrides: dict[str, Any]) -> ControlConfig:
    """The saved config of ``run_dir`` with the options typed on the command line."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"--resume: {run_dir} has no config.yaml (is it an emrl control run directory?)")
    values = load_yaml(path)
    values.update(overrides)
    return from_dict(ControlConfig, values, source=str(path))


def _check_resume(cfg: ControlConfig, run: RunDir) -> None:
    path = run.config_path
    if not path.is_file():
        raise CheckpointError(f"--resume: {run.path} has no config.yaml (is it an emrl control run directory?)")
    saved = load_yaml(path)
    anneals = cfg.anneal_lr or (cfg.algo == "ppo" and cfg.anneal_clip)
    check_resume_config(saved, to_dict(cfg), free=RESUMABLE_CHANGES, where=f"the run in {run.path}",
                        horizon="total_steps", horizon_ok=not anneals,
                        horizon_why="the annealing of the learning rate / clip range (anneal_lr, "
                                    "anneal_clip run over total_steps)")


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
    ckpt_path = run.latest_checkpoint() if resume else None
    ckpt_state: dict[str, Any] | None = None
    if resume:
        if ckpt_path is None:
            raise CheckpointError(f"--resume: no checkpoint in {run.path} (the run stopped before its "
                                  "first checkpoint): start it again with --overwrite")
        ckpt_state, meta = load_checkpoint(ckpt_path, trust_pickle=trust_checkpoint)
        for k, v in _meta(cfg).items():
            if meta.get(k) != v:
                raise CheckpointError(
                    f"checkpoint {ckpt_path} was trained with {k}={meta.get(k)!r}, but this run "
                    f"has {k}={v!r}; resume with the same {k} or start a new run"
                )
        _check_resume(cfg, run)
    seed_everything(cfg.seed)
    envs = make_vec_env(cfg.env, cfg.num_envs, vectorization=cfg.vectorization)
    try:
        agent = build_agent(cfg, envs.single_observation_space, envs.single_action_space).to(device)
        algo: Algorithm = build_algorithm(cfg, agent)
        params_list = list(agent.parameters())
        # the agent's parameters and gradients as views of one tensor each: Adam and the
        # gradient clipping then run on one tensor (same updates; emrl.control.fastopt)
        flat = FlatParameters(params_list) if FlatParameters.supported(params_list) else None
        groups = [{"params": [flat.param] if flat is not None else params_list}]
        dual_params = algo.dual_parameters()
        if dual_params:  # η, α: own group, not annealed, not clipped
            groups.append({"params": dual_params, "lr": cfg.dual_lr or cfg.lr})
        opt = make_adam(groups, cfg.lr, cfg.adam_eps)
        obs_rms = RunningMeanStd(obs_shape(envs.single_observation_space)) if cfg.normalize_obs else None
        batch_steps = cfg.num_envs * cfg.unroll_length
        num_updates = num_updates_of(cfg)
        update0, wall0, env_steps = 0, 0.0, 0
        gen = torch.Generator().manual_seed(cfg.seed)
        if ckpt_state is not None:
            try:
                agent.load_state_dict(ckpt_state["agent"])
                algo.load_state_dict(ckpt_state["algo"])
                if obs_rms is not None:
                    obs_rms.load_state_dict(ckpt_state["obs_rms"])
                update0 = int(ckpt_state["update"])
                env_steps, wall0 = int(ckpt_state["env_steps"]), float(ckpt_state["wall_time"])
                gen.set_state(ckpt_state["minibatch_rng"])
                rng_state = ckpt_state["rng"]
                opt_state = ckpt_state["optimizer"]
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise CheckpointError(f"checkpoint {ckpt_path} does not fit this run: {e}") from e
            try:
                opt.load_state_dict(opt_state)
            except (ValueError, KeyError, TypeError) as e:  # another parameter layout (e.g. an emrl before the flat one)
                raise CheckpointError(
                    f"checkpoint {ckpt_path}: its optimizer state does not fit this agent's "
                    f"parameters ({e}); it was written by another emrl version or agent configuration. "
                    "Start a new run (or resume with the emrl version that wrote it)"
                ) from e
            if update0 > num_updates:
                raise CheckpointError(f"checkpoint {ckpt_path} is at update {update0}, beyond this run's "
                                      f"{num_updates} updates (total_steps={cfg.total_steps})")
            try:
                set_rng_state(rng_state)
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise CheckpointError(f"checkpoint {ckpt_path}: its RNG state is malformed ({e})") from e
        actor_state = ckpt_state.get("actor") if ckpt_state is not None else None
        if actor_state is not None and not isinstance(actor_state.get("envs"), list):
            actor_state = None  # an old-format (pickled) env snapshot: not restored
        # everything is validated: only now is the old run removed (--overwrite) and
        # anything written
        run.prepare()
        opt_step = AdamStep(opt)
        actor = Actor(envs, agent, cfg.env, seed=cfg.seed + 7919 * update0, obs_rms=obs_rms, device=device,
                      reward_scale=cfg.reward_scale)
        if ckpt_state is not None:
            if actor_state is not None:
                # exact resume: the envs, observations, core state and episode statistics
                # as they were (the fresh actor's reset also fed the normaliser: reload it)
                try:
                    actor.load_state_dict(actor_state)
                except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
                    raise CheckpointError(f"checkpoint {ckpt_path}: its environment snapshot does not "
                                          f"fit this run ({e})") from e
                if obs_rms is not None:
                    obs_rms.load_state_dict(ckpt_state["obs_rms"])
            else:
                print(f"note: {cfg.env} could not be snapshotted with the checkpoint (only envs whose "
                      "state is plain data, such as classic control, with sync vectorization are): "
                      "the resumed run starts new episodes, so it is not bit-identical to an "
                      "uninterrupted one", file=sys.stderr)
        run.write_config(cfg)
        # resuming from the final checkpoint: the final record (logged after it) is
        # dropped and logged again, never twice
        final_rec = (lambda r: not (r.get("step") == num_updates and "eval/return" in r)) \
            if update0 == num_updates else None
        writer = MetricsWriter(
            run.metrics_path, tensorboard=cfg.tensorboard, start_time=wall0,
            report_to=cfg.report_to, config=cfg,
            truncate_after_step=update0 if resume else None, keep=final_rec,
        )
        bar = progress(total=num_updates * batch_steps, desc=f"{cfg.algo} {cfg.env}", unit="step",
                       initial=update0 * batch_steps)
        next_eval = _next_multiple(env_steps, cfg.eval_every)
        next_ckpt = _next_multiple(env_steps, cfg.checkpoint_every)
        last_eval: float | None = None
        recent_returns: list[float] = []
        speed_t0, speed_steps = time.perf_counter(), 0
        rec: dict[str, Any] = {}
        postfix: dict[str, str] = {}
        for update in range(update0, num_updates):
            frac = 1.0 - update / num_updates  # 1 -> 0
            lr = cfg.lr * frac if cfg.anneal_lr else cfg.lr
            opt.param_groups[0]["lr"] = lr
            # ---- rollout with π_old = the current policy
            t0 = time.perf_counter()
            agent.eval()
            batch = actor.collect(cfg.unroll_length)
            env_steps += batch_steps
            t_roll = time.perf_counter() - t0
            # ---- update
            t1 = time.perf_counter()
            agent.train()
            prep_metrics = algo.prepare(batch)
            epoch_metrics: dict[str, Any] = {}
            # one minibatch of a stateless agent = the whole batch, the same every epoch
            # (no random draw): built once per update
            whole = (list(minibatches(batch, 1, False, gen))
                     if cfg.num_minibatches == 1 and not agent.stateful else None)
            for epoch in range(cfg.epochs):
                mbs = whole if whole is not None else minibatches(
                    batch, cfg.num_minibatches, agent.stateful, gen)
                for i, mb in enumerate(mbs):
                    # the objectives' non-finite scans run on the first minibatch of the
                    # update (the batch and a fresh forward pass); later steps reuse that
                    # data, so they skip the scans (shape/argument checks always run)
                    with checks(enabled=epoch == 0 and i == 0):
                        params, values, _ = agent(mb.obs, mb.state0, mb.reset, *mb.prev())
                        # metrics are read only after the last minibatch of the last epoch
                        # (logging) or of every epoch when the algorithm may stop early
                        last = i == cfg.num_minibatches - 1 and (
                            epoch == cfg.epochs - 1 or algo.may_stop_early)
                        loss, m = algo.loss(params, values, mb, progress=frac, diagnostics=last)
                    if flat is not None:
                        flat.zero_grad()
                    else:
                        for p in params_list:  # = opt.zero_grad(set_to_none=True), minus its hooks
                            p.grad = None
                    if dual_params:
                        for p in dual_params:
                            p.grad = None
                    loss.backward()
                    gn = clip_grad_norm(params_list, cfg.max_grad_norm,
                                        flat_grad=flat.grad if flat is not None else None)
                    opt_step()  # = opt.step() (bit-identical), minus its Python layers
                    algo.project_duals()
                    if last:
                        m["grad_norm"] = gn
                        epoch_metrics = m
                if algo.stop_early(epoch_metrics):
                    break
            t_upd = time.perf_counter() - t1
            speed_steps += batch_steps
            rets, lens = actor.stats.pop()
            recent_returns = (recent_returns + rets)[-20:]
            bar.update(batch_steps)
            if (update + 1) % cfg.log_every == 0 or update + 1 == num_updates:
                elapsed = time.perf_counter() - speed_t0
                rec = {
                    "step": update + 1, "samples": env_steps,
                    "reward/mean": float(batch.rewards.mean()), "reward/std": float(batch.rewards.std()),
                    "lr": lr, "time/rollout_s": t_roll, "time/update_s": t_upd,
                    "throughput/steps_per_s": speed_steps / max(elapsed, 1e-9),
                    **{k: _num(v) for k, v in prep_metrics.items()},
                    **{k: _num(v) for k, v in epoch_metrics.items()},
                }
                if rets:
                    rec["train/episode_return"] = float(np.mean(rets))
                    rec["train/episode_length"] = float(np.mean(lens))
                speed_t0, speed_steps = time.perf_counter(), 0
            if cfg.eval_every and env_steps >= next_eval and update + 1 < num_updates:
                last_eval = _evaluate(cfg, agent, obs_rms, device, update)
                rec = {**rec, "step": update + 1, "samples": env_steps, "eval/return": last_eval}
                next_eval = _next_multiple(env_steps, cfg.eval_every)
            if rec:
                writer.log(rec)
                rec = {}
            postfix = {"train_return(sampled, last 20 ep)":
                       f"{np.mean(recent_returns):.1f}" if recent_returns else "-"}
            if last_eval is not None:
                postfix[eval_label(cfg)] = f"{last_eval:.1f}"
            bar.set_postfix(postfix, refresh=False)
            if cfg.checkpoint_every and env_steps >= next_ckpt and update + 1 < num_updates:
                _save(run, cfg, agent, opt, algo, obs_rms, update + 1, env_steps,
                      writer.elapsed, gen, actor)
                next_ckpt = _next_multiple(env_steps, cfg.checkpoint_every)
        # the final checkpoint comes before the final evaluation: if evaluating fails,
        # --resume finishes the run from here without redoing any update
        if update0 < num_updates or run.latest_checkpoint() is None:
            _save(run, cfg, agent, opt, algo, obs_rms, num_updates, env_steps,
                  writer.elapsed, gen, actor)
        res = _evaluate(cfg, agent, obs_rms, device, num_updates, full=True)
        postfix[eval_label(cfg)] = f"{res['mean_return']:.1f}"  # the bar ends on the final line's number
        bar.set_postfix(postfix, refresh=False)
        bar.close()
        final = {"step": num_updates, "samples": env_steps, "eval/return": res["mean_return"],
                 "eval/return_std": res["std_return"], "eval/episodes": res["episodes"],
                 "eval/first_seed": res["seeds"][0], "eval/deterministic": float(res["deterministic"])}
        writer.log(final)
        writer.close()
        _save_final(run, cfg, agent, obs_rms)
        return {**final, "eval/summary": describe_eval(res)}
    finally:
        envs.close()


def _next_multiple(x: int, every: int) -> int:
    if not every:
        return 1 << 62
    return (x // every + 1) * every


def _num(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean()) if v.numel() else None
    return v


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


def _save(run, cfg, agent, opt, algo, obs_rms, update, env_steps, wall, gen, actor) -> None:
    state = {
        "agent": agent.state_dict(), "optimizer": opt.state_dict(), "algo": algo.state_dict(),
        "update": update, "env_steps": env_steps, "wall_time": wall, "rng": get_rng_state(),
        "minibatch_rng": gen.get_state(), "actor": actor.state_dict(),
    }
    if obs_rms is not None:
        state["obs_rms"] = obs_rms.state_dict()
    save_checkpoint(run.checkpoint_dir(update), state, meta={**_meta(cfg), "update": update,
                                                               "env_steps": env_steps})
    prune_checkpoints(run.path, cfg.keep_checkpoints)


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
