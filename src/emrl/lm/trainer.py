"""The one LM training loop: SFT, V-MPO, AWR, DAR and PPO as plug-ins (DESIGN.md).

One update (CleanRL-style, visible in :meth:`LMTrainer.train`)::

    batch   = algo.collect(ctx, step)        # demonstrations, or k samples per prompt from
                                             # π_old in eval mode + rewards + π_old/π_ref log-probs
    metrics = algo.estep(ctx, batch)         # E-step target: weights / advantages over the
                                             # GLOBAL batch (all processes)
    metrics |= mstep.run(batch, algo, ε_α)   # M-step: weighted MLE (EM algorithms) or the PPO
                                             # ratio loss, + α trust region on KL(π_old‖π_θ)

The plug-ins (:mod:`emrl.lm.algorithms`) see only a :class:`~emrl.lm.context.LoopContext`.
The pieces: forward passes and the policy module in :mod:`emrl.lm.forward` (chunked:
:mod:`emrl.lm.chunked`), cross-process helpers in :mod:`emrl.lm.distributed`, data and
sampling in :mod:`emrl.lm.rollout`, the M-step and trust-region settling in
:mod:`emrl.lm.mstep`, checkpoints and resume in :mod:`emrl.lm.persist`.

Built on accelerate (CPU, one GPU or many processes). Dropout (spec §9): rollouts and
π_old/π_ref forwards run in eval mode; the M-step runs with dropout on or off
(``mstep_dropout``) for every algorithm, PPO included; ``ppo/ratio_std`` is measured at
the first minibatch of every update, before any parameter change, so what dropout alone
does to PPO's ratio is visible in ``metrics.jsonl``.

Run directory (DESIGN.md "Contracts"): ``config.yaml``, ``metrics.jsonl`` (shared metric
names), atomic ``checkpoint-<step>/``, ``final/`` (loadable by plain transformers) and
``eval.json``. ``resume=True`` continues from the latest checkpoint; on a CPU with fixed
seeds the resumed run reproduces the uninterrupted run's metrics.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from emrl.errors import ConfigError, EmrlError
from emrl.lm import persist
from emrl.lm.algorithms import Algorithm, make_algorithm
from emrl.lm.context import LoopContext
from emrl.lm.distributed import Distributed
from emrl.lm.forward import ForwardOut, PolicyModule
from emrl.lm.mstep import MStep
from emrl.lm.rollout import Batch, Rollouts
from emrl.lm.sharding import full_params, is_sharded
from emrl.lm.train_config import CommonTrainConfig, RLConfig, SFTConfig
from emrl.metrics import MetricsWriter
from emrl.objectives.duals import Duals
from emrl.progress import progress
from emrl.rundir import RunDir
from emrl.runloop import Cadence
from emrl.seeding import seed_everything
from emrl.threads import configure_threads

RESUMABLE_CHANGES = persist.RESUMABLE_CHANGES


def _lr_lambda(cfg: CommonTrainConfig, progress: Callable[[int], float] | None = None) -> Callable[[int], float]:
    """The schedule factor after warm-up; ``progress(step)`` in [0, 1] (default: step/max_steps)."""
    total, warm, floor = max(1, cfg.max_steps), cfg.warmup_steps, cfg.min_lr_ratio

    def f(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if cfg.lr_scheduler == "constant":
            return 1.0
        frac = progress(step) if progress is not None else min(1.0, (step - warm) / max(1, total - warm))
        if cfg.lr_scheduler == "linear":
            return 1.0 - (1.0 - floor) * frac
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return f


class LMTrainer:
    """Train a causal LM with one of the plug-ins; see the module docstring.

    Args:
        cfg: :class:`SFTConfig` (``algo`` is then ``"sft"``) or :class:`RLConfig`.
        output_dir: the run directory (``None``: no files at all, for tests/benchmarks).
        resume / overwrite: continue the run in ``output_dir`` from its latest checkpoint /
            replace it.
        algorithm: a plug-in instance to use instead of the one named by the config.
        reward_funcs: reward callables or specs replacing ``cfg.reward_funcs`` (TRL
            signature ``fn(prompts, completions, **columns) -> list[float]``). The run's
            ``config.yaml`` and task info record them by name (``module:function``; one
            defined in a script is recorded with a note that evaluating needs
            ``--reward-funcs``).
        accelerator: an ``accelerate.Accelerator`` (one is created if ``None``).
        model / tokenizer / task: already-built objects to use instead of loading them.
        trust_checkpoint: on resume, also load a checkpoint of the old pickle format
            (``state.pt``), which can run code (:mod:`emrl.checkpoint`).
        trust_task_code: import the reward functions named by the task saved with
            ``cfg.model`` (``emrl_task.json``); off: refused unless given in ``cfg``.
    """

    def __init__(
        self,
        cfg: SFTConfig | RLConfig,
        output_dir: str | Path | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
        algorithm: Algorithm | None = None,
        reward_funcs: Sequence[Any] | None = None,
        accelerator: Any = None,
        model: Any = None,
        tokenizer: Any = None,
        task: Any = None,
        trust_checkpoint: bool = False,
        trust_task_code: bool = False,
    ) -> None:
        from emrl.lm.scale import configure_model, make_accelerator

        cfg.validate()
        self.cfg = cfg
        self.algo_name = cfg.algo if isinstance(cfg, RLConfig) else "sft"
        configure_threads(cfg.num_threads)
        self.accelerator = accelerator or make_accelerator(cfg)
        acc = self.accelerator
        self.dist = Distributed(acc)
        self.rank, self.world = self.dist.rank, self.dist.world
        self.device = acc.device
        if cfg.batch_size % self.world:
            raise ConfigError(f"batch_size ({cfg.batch_size}) must be divisible by the number of "
                              f"processes ({self.world})")
        self.rundir: RunDir | None = None
        if output_dir is not None:
            # checks only: the old run (--overwrite) is removed once everything below is
            # built and validated, so a bad flag never costs a run
            if acc.is_main_process:
                self.rundir = RunDir(output_dir, resume=resume, overwrite=overwrite, defer=True)
            acc.wait_for_everyone()
            if not acc.is_main_process:
                self.rundir = RunDir.__new__(RunDir)
                self.rundir.path, self.rundir.resume = Path(output_dir), resume
        self.resume = resume
        self.trust_checkpoint = trust_checkpoint
        self.trust_task_code = trust_task_code
        seed_everything(cfg.seed + self.rank)

        # model, tokenizer, task -------------------------------------------------
        from emrl.lm.models import load_model_and_tokenizer, set_dropout

        if model is None:
            model, tokenizer = load_model_and_tokenizer(cfg.model, dropout=cfg.dropout, seed=cfg.seed)
        elif cfg.dropout is not None:
            set_dropout(model, cfg.dropout)
        self.tokenizer = tokenizer
        self.task = task if task is not None else self._load_task(reward_funcs)
        if reward_funcs and hasattr(cfg, "reward_funcs"):  # record what was used, by name
            from dataclasses import replace

            from emrl.lm.rewards import reward_source

            self.cfg = cfg = replace(cfg, reward_funcs=[reward_source(f)["spec"] for f in reward_funcs])
        if acc.is_main_process:
            for note in getattr(self.task, "notes", ()):
                print(f"note: {note}", file=sys.stderr, flush=True)
        if not self.task.train:
            raise EmrlError(f"task {self.task.name!r} has no training rows")
        from emrl.lm import lora

        if cfg.lora_r > 0:
            model = lora.apply_lora(model, cfg)
        configure_model(model, cfg, self.algo_name, self.device)
        self.lm = model.to(self.device)

        # the plug-in and its context; the policy module (+ value head) and optimisers -----
        self.algo = algorithm or make_algorithm(self.algo_name, cfg)
        self.duals = self._make_duals()
        self.ctx = LoopContext(cfg, self.lm, self.dist, self.device, self.duals)
        self.algo.setup(self.ctx)
        self.policy = PolicyModule(self.lm, self.algo.value_head())
        self.optimizer = torch.optim.AdamW(
            [p for p in self.policy.parameters() if p.requires_grad], lr=cfg.learning_rate,
            betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay)
        self.schedule = _lr_lambda(cfg, self._progress)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: self.schedule(step) * self._lr_scale())
        self.policy, self.optimizer = acc.prepare(self.policy, self.optimizer)
        self.rollouts = Rollouts(cfg, self.task, tokenizer, self.lm, self.policy, device=self.device,
                                 rank=self.rank, world=self.world, clock=lambda: self.step)
        self.ctx.attach(self.policy, self.rollouts, self.algo.value_head() is not None)
        self.mstep = MStep(cfg, self.ctx, self.optimizer, acc)

        # counters --------------------------------------------------------------------
        self.step = 0
        self.samples = 0
        self.elapsed = 0.0
        self.train_time = 0.0  # seconds of updates, evaluations excluded (max_minutes)
        self.last_eval: dict[str, Any] | None = None
        self.last_record: dict[str, Any] = {}  # the final step's metrics, kept in the final checkpoint
        self.resumed_record: dict[str, Any] = {}
        if resume:
            persist.load_latest(self)
        self.metrics: MetricsWriter | None = None
        if self.rundir is not None and acc.is_main_process:
            self.rundir.prepare()
            self.rundir.write_config(cfg)
            # resuming from the final checkpoint: its final record (logged after that
            # checkpoint) is dropped and logged again, never twice
            keep_to = self.step if self.step < cfg.max_steps else self.step - 1
            self.metrics = MetricsWriter(
                self.rundir.metrics_path, tensorboard=cfg.tensorboard, start_time=self.elapsed,
                report_to=cfg.report_to, config=cfg,
                truncate_after_step=keep_to if resume else None)
        if self.rundir is not None:
            acc.wait_for_everyone()

    def _make_duals(self) -> Duals | None:
        """The run's one dual holder: η when the plug-in learns a temperature (V-MPO), α
        when it uses the trust region; ``None`` when it needs neither (SFT, PPO)."""
        cfg, algo = self.cfg, self.algo
        eta = float(cfg.eta_init) if algo.learns_temperature else None
        alpha = float(cfg.alpha_init) if algo.uses_trust_region and getattr(cfg, "trust_region", False) else None
        if eta is None and alpha is None:
            return None
        return Duals(eta_init=eta, alpha_init=alpha, lr=cfg.dual_lr, schedule=cfg.dual_schedule,
                     eta_param=getattr(cfg, "eta_param", "softplus"), device=self.device)

    def _lr_scale(self) -> float:
        """The M-step's step-size adaptation (``kl_adapt_lr``; 1 before the M-step exists)."""
        mstep = getattr(self, "mstep", None)
        return 1.0 if mstep is None else mstep.lr_scale

    def _progress(self, step: int) -> float:
        """Fraction of the run done after warm-up: by updates, or by training time when
        ``max_minutes`` would end the run first (so a time budget anneals too)."""
        cfg = self.cfg
        warm = cfg.warmup_steps
        frac = min(1.0, max(0, step - warm) / max(1, cfg.max_steps - warm))
        if cfg.max_minutes is not None:
            frac = max(frac, min(1.0, getattr(self, "train_time", 0.0) / (60.0 * cfg.max_minutes)))
        return frac

    def eps_alpha_now(self) -> float:
        """ε_α of this update: annealed with the learning-rate schedule when
        ``anneal_eps_alpha`` (the KL budget is the step size, so it is what anneals)."""
        cfg = self.cfg
        eps = getattr(cfg, "eps_alpha", 0.0)
        return eps * self.schedule(self.step) if getattr(cfg, "anneal_eps_alpha", False) else eps

    def _load_task(self, reward_funcs: Sequence[Any] | None):
        from emrl.lm.tasks import load_task, load_task_from_info, load_task_info

        cfg = self.cfg
        funcs = list(reward_funcs) if reward_funcs else list(getattr(cfg, "reward_funcs", []) or [])
        weights = list(getattr(cfg, "reward_weights", []) or []) or None
        if funcs and weights is None:
            weights = [1.0] * len(funcs)
        if cfg.task is None and cfg.model != "tiny":
            info = load_task_info(cfg.model)
            if info is not None:
                over: dict[str, Any] = {"num_train": cfg.num_train, "template": cfg.template,
                                        "tokenizer": self.tokenizer}
                if funcs:
                    over.update(reward_funcs=funcs, reward_weights=weights)
                return load_task_from_info(info, trust_code=self.trust_task_code,
                                           where=f"model {cfg.model}", **over)
        return load_task(cfg.task, seed=cfg.seed, num_train=cfg.num_train, num_eval=cfg.num_eval,
                         template=cfg.template, reward_funcs=funcs or None, reward_weights=weights,
                         tokenizer=self.tokenizer)

    # ------------------------------------------------------------------------ the loop
    def train(self, *, callback: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run updates until ``max_steps``; write checkpoints, metrics and ``final/``.

        Returns the last logged metrics (with the final evaluation's ``eval/*``).
        """
        cfg, algo, ctx = self.cfg, self.algo, self.ctx
        t_start = time.time() - self.elapsed
        # under a time budget the number of updates is not known in advance
        bar = progress(total=cfg.max_steps if cfg.max_minutes is None else None, desc=f"emrl {self.algo_name}",
                       unit="update", initial=self.step, **({} if self.dist.is_main else {"disable": True}))
        budget_s = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
        last: dict[str, Any] = {}
        empty_run = 0
        # what the loop does every N updates (emrl.runloop, shared with the control loop)
        log_due, eval_due, save_due = (Cadence(n, self.step) for n in (cfg.log_every, cfg.eval_every, cfg.save_every))
        try:
            if self.step == 0 and cfg.eval_at_start and cfg.max_steps > 0:
                start = self._eval_metrics()  # the start model: every curve begins at step 0
                if start:
                    last = self._log({"step": 0, "samples": 0, **start})
            while self.step < cfg.max_steps and (budget_s is None or self.train_time < budget_s):
                t0 = time.time()
                batch = algo.collect(ctx, self.step)
                est = algo.estep(ctx, batch)
                t1 = time.time()
                mst = self.mstep.run(batch, algo, self.eps_alpha_now())
                t2 = time.time()
                self.train_time += t2 - t0
                empty_run = empty_run + 1 if est.get("estep/empty") else 0
                if empty_run in (1, 20) and self.dist.is_main:
                    self._say_empty(est, empty_run)
                with warnings.catch_warnings():  # a no-op update takes no optimizer step
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    self.scheduler.step()
                self.step += 1
                self.samples += self.dist.global_count(len(batch)) if algo.name != "sft" else cfg.batch_size
                last = rec = self._record(est, mst, t0, t1, t2)
                if eval_due(self.step) and self.step < cfg.max_steps:
                    rec.update(self._eval_metrics())
                self.elapsed = time.time() - t_start
                if log_due(self.step) and self.step < cfg.max_steps:
                    self._log(rec)
                if callback is not None:
                    callback(self.step, rec)
                bar.set_postfix(self._postfix(rec), refresh=False)
                bar.update(1)
                if save_due(self.step) and self.step < cfg.max_steps:
                    self.save_checkpoint()
            return self._finish(last, t_start)
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
                self.metrics = None

    def _record(self, est: dict[str, Any], mst: dict[str, Any], t0: float, t1: float, t2: float) -> dict[str, Any]:
        """The metrics of the update just done (shared names, DESIGN.md)."""
        tokens = mst.pop("_tokens")
        return {"step": self.step, "samples": self.samples, **est, **mst,
                "lr": self.scheduler.get_last_lr()[0],
                "time/rollout_s": t1 - t0, "time/update_s": t2 - t1, "time/train_s": self.train_time,
                "throughput/tokens_per_s": tokens * self.world / max(t2 - t1, 1e-9),
                "throughput/steps_per_s": 1.0 / max(t2 - t0, 1e-9)}

    def _log(self, rec: dict[str, Any]) -> dict[str, Any]:
        if self.metrics is not None:
            self.metrics.log(rec)
        return rec

    def _postfix(self, rec: dict[str, Any]) -> dict[str, str]:
        post = {name: f"{rec[k]:.3g}" for k, name in (
            ("reward/mean", "train_reward"), ("loss/policy", "loss"), ("eval/accuracy", "heldout_greedy_acc"))
            if k in rec}
        if "heldout_greedy_acc" not in post and (self.last_eval or {}).get("accuracy") is not None:
            post["heldout_greedy_acc"] = f"{self.last_eval['accuracy']:.3g}"
        if self.cfg.max_minutes is not None:
            post["train_min"] = f"{self.train_time / 60:.1f}/{self.cfg.max_minutes:g}"
        return post

    def _finish(self, last: dict[str, Any], t_start: float) -> dict[str, Any]:
        """The end of a run: a time-budget note, the final checkpoint, evaluation, ``final/``."""
        cfg = self.cfg
        if cfg.max_minutes is not None and self.step < cfg.max_steps and self.dist.is_main:
            note = f"--max-minutes {cfg.max_minutes:g}: stopped after {self.step} updates " \
                   f"({self.train_time:.1f} s of training; max_steps={cfg.max_steps})"
            if self.step <= 1:
                note += "; the budget is shorter than one update"
            tqdm.write(note, file=sys.stderr)
        if not last and self.resumed_record.get("step") == self.step:
            last = dict(self.resumed_record)  # resumed from the final checkpoint
        if cfg.max_steps > 0 or not last:
            last = {**last, "step": self.step, "samples": self.samples}
        self.elapsed = time.time() - t_start
        if self.rundir is not None:
            # the final checkpoint comes before the final evaluation: if evaluating
            # fails, --resume finishes the run from here without redoing any update
            self.last_record = {k: v for k, v in last.items() if not k.startswith("eval/")}
            self.save_checkpoint()
        last.update(self._eval_metrics())
        self._log(last)
        if self.rundir is not None:
            self.save_final()
        return last

    def _say_empty(self, est: dict[str, Any], run: int) -> None:
        """Say plainly why an update was a no-op (no sample beat its baseline)."""
        r = est.get("reward/mean", float("nan"))
        if run == 1:
            msg = (f"update {self.step}: no sample beat its baseline (mean reward {r:.3g}, "
                   "every group's rewards equal), so the E-step has no target and this update "
                   "changes nothing")
        else:
            msg = (f"{run} updates in a row without a sample that beat its baseline (mean reward "
                   f"{r:.3g}): if no sample earns reward, RL from this reward cannot start; SFT the "
                   "model first, raise --num-samples or --temperature, or check the reward function")
        tqdm.write(msg, file=sys.stderr)

    # ------------------------------------------------------------------------ evaluation
    def evaluate(self, num_prompts: int | None = None) -> dict[str, Any]:
        """Held-out greedy (and sampled) accuracy on the task's eval rows (main process).

        Uses its own RNG stream (seeded from the run seed) so evaluating never changes the
        training run's random numbers, and repeated evaluations see the same sampling noise.
        """
        from emrl.lm.evaluate import evaluate

        cfg = self.cfg
        lm = self.lm
        was = lm.training
        lm.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 12345)
            res = evaluate(lm, self.tokenizer, self.task, num_prompts=num_prompts or cfg.eval_num_prompts,
                           greedy=True, num_samples=cfg.eval_samples, temperature=cfg.eval_temperature,
                           max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size)
        lm.train(was)
        return res

    def _eval_metrics(self) -> dict[str, Any]:
        if is_sharded(self.policy) and not getattr(self, "_gathered", False):
            with full_params(self.policy):  # every process gathers; the main one evaluates
                self._gathered = True
                try:
                    return self._eval_metrics()
                finally:
                    self._gathered = False
        if not self.dist.is_main or self.cfg.eval_num_prompts <= 0 or not self.task.eval:
            self.dist.barrier()
            return {}
        res = self.evaluate()
        self.dist.barrier()
        self.last_eval = res
        out = {"eval/accuracy": res.get("accuracy")}
        if "sampled_accuracy" in res and res["sampled_accuracy"] is not None:
            out["eval/sampled_accuracy"] = res["sampled_accuracy"]
        if "reward/mean" in res:
            out["eval/reward"] = res["reward/mean"]
        return out

    # ------------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return persist.state_dict(self)

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint-<step>`` atomically (main process); never non-finite weights."""
        return persist.write_checkpoint(self)

    def save_final(self) -> Path | None:
        """``final/``: ``save_pretrained`` model + tokenizer + task info, atomically."""
        return persist.write_final(self)

    # --------------------------------------------- the components, under their old names
    @property
    def unwrapped(self) -> nn.Module:
        """The bare causal LM (for generation and saving)."""
        return self.lm

    @property
    def loss_scale(self) -> float:
        return self.ctx.loss_scale

    @property
    def alpha_param(self) -> Tensor:
        return self.duals.params["alpha"]

    @property
    def generation_engine(self) -> Any:
        return self.rollouts.generation_engine

    @generation_engine.setter
    def generation_engine(self, engine: Any) -> None:
        self.rollouts.generation_engine = engine

    def __getattr__(self, name: str) -> Any:
        # the plug-ins' interface (LoopContext: forward, encode, gather, reference, ...)
        # stays reachable on the trainer, as before the split
        ctx = self.__dict__.get("ctx")
        if ctx is not None and not name.startswith("__") and hasattr(LoopContext, name):
            return getattr(ctx, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _mstep(self, batch: Batch) -> dict[str, float]:
        return self.mstep.run(batch, self.algo, self.eps_alpha_now())

    def _kl_old(self, mb: Batch, out: ForwardOut) -> Tensor:
        return self.mstep.kl_old(mb, out)


__all__ = ["LMTrainer", "ForwardOut", "PolicyModule", "SFTConfig", "RLConfig"]
