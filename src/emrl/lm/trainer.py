"""The one LM training loop: SFT, V-MPO, AWR, DAR and PPO as plug-ins (DESIGN.md).

One update (CleanRL-style, visible in :meth:`LMTrainer.train`)::

    batch   = algo.collect(trainer, step)    # demonstrations, or k samples per prompt from
                                             # π_old in eval mode + rewards + π_old/π_ref log-probs
    metrics = algo.estep(trainer, batch)     # E-step target: weights / advantages over the
                                             # GLOBAL batch (all processes)
    for epoch in range(epochs):              # M-step: weighted MLE (EM algorithms) or the PPO
        for mb in minibatches(batch):        # ratio loss, + α trust region on KL(π_old‖π_θ)
            loss = algo.loss(trainer, mb, forward(mb)) (+ trust region)
            skip if non-finite; else backward, clip, step

Built on accelerate (CPU, one GPU or many processes). Dropout (spec §9): rollouts and
π_old/π_ref forwards run in eval mode; the M-step runs with dropout on or off
(``mstep_dropout``) for every algorithm, PPO included; ``ppo/ratio_std`` is measured at
the first minibatch of every update, before any parameter change, so what dropout alone
does to PPO's ratio is visible in ``metrics.jsonl``.

Run directory (DESIGN.md "Contracts"): ``config.yaml``, ``metrics.jsonl`` (shared metric
names), atomic ``checkpoint-<step>/`` (model, optimiser, scheduler, duals, RNG, data
order, counters; :mod:`emrl.checkpoint`), ``final/`` (``save_pretrained`` + tokenizer +
task info; loadable by plain transformers) and ``eval.json``. ``resume=True`` continues
from the latest checkpoint; on a CPU with fixed seeds the resumed run reproduces the
uninterrupted run's metrics.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from emrl import objectives as O
from emrl.checkpoint import atomic_dir, load_checkpoint, prune_checkpoints, save_checkpoint
from emrl.config import apply_aliases, to_dict
from emrl.errors import CheckpointError, ConfigError, EmrlError
from emrl.lm.algorithms import Algorithm, Batch, make_algorithm
from emrl.lm.lora import is_lora, load_policy_state_dict, policy_state_dict
from emrl.lm.lora import save_pretrained as lora_save
from emrl.lm.sharding import (
    full_lm_state,
    full_params,
    is_sharded,
    load_model_and_optimizer_state,
    model_and_optimizer_state,
)
from emrl.lm.train_config import CommonTrainConfig, RLConfig, SFTConfig
from emrl.metrics import MetricsWriter
from emrl.progress import progress
from emrl.rundir import RunDir, check_resume_config
from emrl.seeding import get_rng_state, seed_everything, set_rng_state
from emrl.threads import configure_threads

#: config fields that may change between a run and its ``--resume`` (they do not change
#: what is trained, only how often things are logged or saved, and how evaluations, which
#: use their own random stream, are run). ``max_steps``
#: may also change, but only with ``lr_scheduler=constant``: the linear and cosine
#: schedules decay over ``max_steps``, so a new value would reshape the schedule.
RESUMABLE_CHANGES = ("save_every", "keep_checkpoints", "log_every", "num_threads",
                     "tensorboard", "eval_every", "eval_num_prompts", "eval_samples",
                     "eval_temperature", "eval_batch_size", "max_minutes", "eval_at_start", "report_to")


@dataclass
class ForwardOut:
    """One teacher-forced pass of the policy over a batch.

    ``logp[n, S]``: ``log π(token j | tokens < j)`` at completion positions, 0 elsewhere.
    ``logits[n, S-1, V]``: the logits predicting tokens ``1..S-1`` (aligned with
    ``logp[:, 1:]``), when asked for. ``values[n, S]``: value-head output for the state
    before token ``j`` (aligned like ``logp``), when the algorithm has a value head.
    """

    logp: Tensor
    logits: Tensor | None = None
    values: Tensor | None = None


class ValueHead(nn.Module):
    """A linear value head V(s) on the policy's last hidden state (zero-initialised)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:  # [n, S, H] -> [n, S]
        return self.linear(hidden).squeeze(-1)


class PolicyModule(nn.Module):
    """The causal LM plus an optional value head, as one module (so DDP syncs both)."""

    def __init__(self, lm: nn.Module, value_head: nn.Module | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.value_head = value_head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, need_values: bool = False,
                hidden_only: bool = False):
        if hidden_only:  # last hidden states instead of logits (emrl.lm.chunked)
            from emrl.lm.chunked import decoder_hidden

            hidden = decoder_hidden(self.lm, input_ids, attention_mask)
            vh = self.value_head
            return hidden, (vh(hidden) if need_values and vh is not None else None)
        out = _lm_call(self.lm, input_ids, attention_mask, hidden=need_values)
        values = None
        if need_values and self.value_head is not None:
            values = self.value_head(out.hidden_states[-1])
        return out.logits, values


def _lm_call(lm: nn.Module, input_ids: Tensor, attention_mask: Tensor, hidden: bool = False):
    from emrl.lm.forward import position_ids_from_mask

    # positions count real tokens only, as in generation with left padding
    return lm(input_ids=input_ids, attention_mask=attention_mask,
              position_ids=position_ids_from_mask(attention_mask),
              output_hidden_states=hidden, use_cache=False)


def _shifted_logp(logits: Tensor, input_ids: Tensor, completion_mask: Tensor) -> Tensor:
    """``logp[n, S]`` from full logits ``[n, S, V]`` (0 off-completion)."""
    lp = O.token_logprobs(logits[:, :-1], input_ids[:, 1:])
    lp = torch.where(completion_mask[:, 1:], lp, torch.zeros_like(lp))
    return torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)


def _first_index(mask: Tensor) -> Tensor:
    """Index of the first True position of each row of ``mask[n, S]``."""
    S = mask.shape[1]
    pos = torch.arange(S, device=mask.device).expand_as(mask)
    return torch.where(mask, pos, torch.full_like(pos, S)).min(1).values.clamp(max=S - 1)


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


def _finite_params(module: nn.Module) -> bool:
    from emrl.lm.sharding import all_finite

    return all_finite(module)


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
        self.rank, self.world = acc.process_index, acc.num_processes
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

        # algorithm plug-in, reference/duals/value head ---------------------------
        self.algo = algorithm or make_algorithm(self.algo_name, cfg)
        self._ref: nn.Module | None = None
        self.algo.setup(self)
        self.policy = PolicyModule(self.lm, self.algo.value_head())
        self.optimizer = torch.optim.AdamW(
            [p for p in self.policy.parameters() if p.requires_grad], lr=cfg.learning_rate,
            betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay)
        self.schedule = _lr_lambda(cfg, self._progress)
        self.lr_scale = 1.0  # the M-step's step-size adaptation (kl_adapt_lr), persisted
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: self.schedule(step) * self.lr_scale)
        self.policy, self.optimizer = acc.prepare(self.policy, self.optimizer)
        a0 = O.inverse_temperature_param(float(cfg.alpha_init), "softplus")
        self.alpha_param = nn.Parameter(torch.as_tensor(a0, dtype=torch.float32, device=self.device).clone())
        self.alpha_opt = torch.optim.Adam([self.alpha_param], lr=cfg.alpha_lr)

        # counters and data order --------------------------------------------------
        self.step = 0
        self.samples = 0
        self.elapsed = 0.0
        self.train_time = 0.0  # seconds of updates, evaluations excluded (max_minutes)
        self.nonfinite_in_a_row = 0
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.perm = torch.randperm(len(self.task.train), generator=self.data_gen)
        self.cursor = 0
        self.last_eval: dict[str, Any] | None = None
        self.last_record: dict[str, Any] = {}  # the final step's metrics, kept in the final checkpoint
        self.resumed_record: dict[str, Any] = {}
        if resume:
            self._load_latest()
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
        if not getattr(cfg, "anneal_eps_alpha", False):
            return cfg.eps_alpha
        return cfg.eps_alpha * self.schedule(self.step)

    # ------------------------------------------------------------------ building blocks
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

    @property
    def unwrapped(self) -> nn.Module:
        """The bare causal LM (for generation and saving)."""
        return self.lm

    def load_frozen(self, path: str, *, what: str) -> nn.Module:
        """A frozen model from ``path`` (teacher), in eval mode."""
        from emrl.lm.models import load_model_and_tokenizer

        if not path:
            raise ConfigError(f"no {what} model given")
        m, _ = load_model_and_tokenizer(path, seed=self.cfg.seed)
        m = m.to(self.device).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    def reference(self) -> nn.Module:
        """The frozen reference policy π_ref: a copy of the policy before any update."""
        from emrl.lm.lora import AdaptersDisabled, is_lora

        if self._ref is None and is_lora(self.lm):  # the base weights, adapters off: no copy
            self._ref = AdaptersDisabled(self.lm)
        if self._ref is None:
            self._ref = copy.deepcopy(self.lm).eval()
            for p in self._ref.parameters():
                p.requires_grad_(False)
        return self._ref

    def make_value_head(self) -> nn.Module:
        hidden = int(self.lm.config.hidden_size)
        with torch.random.fork_rng(devices=[]):
            return ValueHead(hidden).to(self.device)

    # data -------------------------------------------------------------------------
    def next_rows(self, step: int) -> list[dict]:
        """This process's share of the next global batch of training rows (epoch shuffles)."""
        B = self.cfg.batch_size
        idx: list[int] = []
        while len(idx) < B:
            if self.cursor >= len(self.perm):
                self.perm = torch.randperm(len(self.task.train), generator=self.data_gen)
                self.cursor = 0
            take = min(B - len(idx), len(self.perm) - self.cursor)
            idx += self.perm[self.cursor:self.cursor + take].tolist()
            self.cursor += take
        per = B // self.world
        return [self.task.train[i] for i in idx[self.rank * per:(self.rank + 1) * per]]

    def demonstration(self, row: dict) -> str:
        comp = row.get("completion")
        if comp is None:
            if row.get("answer") is None:
                raise EmrlError(f"task {self.task.name!r} has no 'completion' (or 'answer') column: "
                                "SFT needs demonstrations")
            comp = str(row["answer"])
        return str(comp)

    def encode(self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[dict]) -> Batch:
        """Teacher-forcing tensors for ``prompt + completion + EOS`` (left-padded).

        Returns a :class:`Batch` with ``input_ids``, ``attention_mask``, ``completion_mask``
        (``[n, S]``; True on completion tokens and EOS).
        """
        from emrl.lm.forward import encode_prompt_completion
        from emrl.lm.models import context_length

        enc = encode_prompt_completion(self.tokenizer, list(prompts), list(completions),
                                       max_length=context_length(self.lm))
        return Batch({"input_ids": enc["input_ids"].to(self.device),
                      "attention_mask": enc["attention_mask"].to(self.device),
                      "completion_mask": enc["completion_mask"].to(self.device)},
                     {"prompts": list(prompts), "texts": list(completions), "rows": list(rows)})

    def score(self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[dict]) -> Tensor:
        """Validated rewards ``[n]`` (the task's verifier or the configured reward functions)."""
        return torch.as_tensor(self.task.reward(list(prompts), list(completions), list(rows)),
                               dtype=torch.float32)

    def sample_and_score(self, rows: Sequence[dict], k: int, *, temperature: float = 1.0,
                         top_p: float = 1.0):
        """``k`` samples per row's prompt from the current policy in eval mode, and rewards."""
        from emrl.lm.generation import generate

        lm = self.unwrapped
        was = lm.training
        lm.eval()
        if self.cfg.generation_backend == "vllm":  # emrl.lm.vllm_backend: weights pushed, then sampled
            from emrl.lm.vllm_backend import rollout as engine_rollout

            ro = engine_rollout(self, [r["prompt"] for r in rows], k, temperature=temperature, top_p=top_p)
        else:
            # generation's own log-probs are π_old's (eval mode, temperature 1) and save a
            # teacher-forced pass, but transformers keeps a [b, V] tensor per step for them:
            # kept only while that stays small (else π_old is recomputed, chunked if asked)
            vocab = int(lm.get_output_embeddings().weight.shape[0])
            keep = len(rows) * k * self.cfg.max_new_tokens * vocab * 4 <= 2**28 and \
                self.cfg.logp_chunk_size is None
            with full_params(self.policy):  # a sharded policy is gathered for generation
                ro = generate(lm, self.tokenizer, [r["prompt"] for r in rows], num_samples=k,
                              max_new_tokens=self.cfg.max_new_tokens, temperature=temperature,
                              top_p=top_p, logprobs=keep)
        lm.train(was)
        rows_rep = [r for r in rows for _ in range(k)]
        return ro, self.score(ro.prompts, ro.texts, rows_rep)

    def rollout_batch(self, ro: Any, rewards: Tensor, rows: Sequence[dict], k: int) -> Batch:
        rows_rep = [r for r in rows for _ in range(k)]
        # π_old's per-token log-probs come with the samples: generation ran the policy in
        # eval mode at temperature 1 (``policy_logprobs``), so no second pass is needed
        t = {"input_ids": ro.input_ids.to(self.device), "attention_mask": ro.attention_mask.to(self.device),
             "completion_mask": ro.completion_mask.to(self.device).bool(), "rewards": rewards.to(self.device)}
        if getattr(ro, "policy_logprobs", None) is not None:
            t["old_logp"] = ro.policy_logprobs.to(self.device)
        return Batch(t, {"prompts": list(ro.prompts), "texts": list(ro.texts), "rows": rows_rep})

    # forward passes -------------------------------------------------------------------
    def forward(self, batch: Batch, *, train: bool, need_logits: bool = False,
                need_values: bool = False, grad: bool = True) -> ForwardOut:
        """Teacher-forced pass of the policy (dropout on iff ``train``); see :class:`ForwardOut`."""
        if self.cfg.logp_chunk_size:  # vocabulary-bounded memory: emrl.lm.chunked
            from emrl.lm import chunked

            return chunked.forward(self, batch, train=train, need_logits=need_logits,
                                   need_values=need_values, grad=grad)
        self.policy.train(train)
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx:
            logits, values = self.policy(batch["input_ids"], batch["attention_mask"], need_values)
        cm = batch["completion_mask"]
        logp = _shifted_logp(logits, batch["input_ids"], cm)
        vals = None
        if values is not None:
            vals = torch.cat([torch.zeros_like(values[:, :1]), values[:, :-1]], dim=1)
        return ForwardOut(logp=logp, logits=logits[:, :-1] if need_logits else None, values=vals)

    def forward_frozen(self, model: nn.Module, batch: Batch) -> Tensor:
        """Logits ``[n, S-1, V]`` of a frozen model (teacher), aligned like ForwardOut.logits."""
        with torch.no_grad():
            return _lm_call(model, batch["input_ids"], batch["attention_mask"]).logits[:, :-1]

    def forward_frozen_logp(self, model: nn.Module, batch: Batch) -> Tensor:
        """``logp[n, S]`` of a frozen model (reference) at completion positions."""
        with torch.no_grad():
            logits = _lm_call(model, batch["input_ids"], batch["attention_mask"]).logits
            return _shifted_logp(logits, batch["input_ids"], batch["completion_mask"])

    def prompt_values(self, batch: Batch, values: Tensor | None = None) -> Tensor:
        """V(x): the value before the first completion token, ``[n]``."""
        v = batch["old_values"] if values is None else values
        first = _first_index(batch["completion_mask"])
        return v[torch.arange(v.shape[0], device=v.device), first]

    def kl_to_reference(self, mb: Batch, out: ForwardOut) -> Tensor:
        """Sampled per-token KL(π_θ ‖ π_ref) on the batch's tokens (k3 estimator), mean."""
        m = mb["completion_mask"]
        k3 = O.kl_k3(out.logp, mb["ref_logp"])
        return (k3 * m).sum() / m.sum().clamp(min=1)

    # distributed helpers (global E-step) ------------------------------------------------
    def gather(self, x: Tensor) -> Tensor:
        """Concatenate ``x`` over processes in rank order (identity on one process)."""
        return self.accelerator.gather(x.contiguous()) if self.world > 1 else x

    def gather_padded(self, x: Tensor) -> Tensor:
        """:meth:`gather` after right-padding dim 1 to the longest over processes."""
        if self.world == 1:
            return x
        xp = self.accelerator.pad_across_processes(x, dim=1, pad_index=0, pad_first=False)
        return self.accelerator.gather(xp.contiguous())

    def local_slice(self, x: Tensor, n_local: int) -> Tensor:
        """This process's rows of a gathered tensor (equal shares per process)."""
        return x[self.rank * n_local:(self.rank + 1) * n_local]

    def global_count(self, n_local: int) -> int:
        return n_local * self.world

    def global_masked_mean(self, x: Tensor, mask: Tensor) -> float:
        s = torch.stack([(x * mask).sum().float(), mask.sum().float()])
        if self.world > 1:
            s = self.accelerator.reduce(s, reduction="sum")
        return float(s[0] / s[1].clamp(min=1))

    # ------------------------------------------------------------------------ M-step
    def _kl_old(self, mb: Batch, out: ForwardOut) -> Tensor:
        """Mean per-token KL(π_old ‖ π_θ) over the minibatch's completion tokens (spec §5)."""
        m = mb["completion_mask"]
        if getattr(out, "kl_old", None) is not None:  # computed in chunks (emrl.lm.chunked)
            return out.kl_old
        if self.cfg.kl_estimator == "exact" and "old_logits" in mb:
            kl = O.categorical_kl(mb["old_logits"], out.logits, mask=m[:, 1:], chunk_size=self.cfg.kl_chunk_size)
            return kl.sum() / m[:, 1:].sum().clamp(min=1)
        k3 = O.kl_k3(mb["old_logp"], out.logp)
        return (k3 * m).sum() / m.sum().clamp(min=1)

    def _quiet_mstep(self) -> bool:
        """M-step forwards carry no dropout noise (no dropout in the model, or it is off)."""
        from emrl.lm.models import get_dropout

        return not self.cfg.mstep_dropout or get_dropout(self.lm) == 0.0

    def old_logits_from_mstep(self, n_local: int) -> bool:
        """Whether the first M-step forward can serve as π_old's logits for the exact KL.

        True when that forward sees the whole local batch at θ_old with no dropout noise
        (no dropout in the model, or ``mstep_dropout`` off) and no value head: it then
        equals a separate eval-mode pass over the rollouts, which is skipped.
        """
        cfg = self.cfg
        whole = cfg.minibatch_size is None or cfg.minibatch_size >= n_local
        return whole and self._quiet_mstep() and self.algo.value_head() is None and cfg.logp_chunk_size is None

    def _mstep(self, batch: Batch) -> dict[str, float]:
        """The M-step of one update (see the module docstring).

        EM algorithms with the trust region (spec §5 eq. 1): gradient steps on
        ``L_π + sg[α]·KL(π_old‖π_θ)`` over up to ``epochs`` passes, ended early once the
        measured KL reaches ``ε_α`` (``kl_early_stop``: the KL budget, not the learning
        rate, sets the step); then the realised KL over the whole batch is measured, an
        update that overshot ``kl_backtrack × ε_α`` is scaled back towards θ_old (halving),
        and the dual α takes one step on ``α(ε_α − sg[KL_realised])`` (``dual_schedule=update``)
        or one per gradient step (``step``, spec eq. 1 literally).
        """
        cfg, algo, acc = self.cfg, self.algo, self.accelerator
        n = len(batch)
        idx = torch.arange(n)
        trust = algo.uses_trust_region and cfg.trust_region and "old_logp" in batch
        if getattr(algo, "target_empty", False):
            # nothing to fit (e.g. no sample beat its baseline): a no-op update, not an
            # Adam step on a zero gradient (momentum would still move the weights)
            return {"mstep/skipped": 1.0, "mstep/sequences": 0.0, "mstep/grad_steps": 0.0,
                    "mstep/kl": 0.0, "_tokens": 0.0}
        # Samples with zero E-step weight add nothing to the weighted NLL; they are still
        # needed where the M-step looks at every state of π_old: the trust region's
        # E_s KL(π_old‖π_θ) over all states (``trust_region_states="all"``, spec §5), a value
        # baseline, and DDP (equal work per process). With ``"selected"`` the trust region is
        # taken over the states of the selected samples, where the M-step moves the policy.
        kl_all = trust and cfg.trust_region_states == "all"
        if algo.skip_zero_weight and not kl_all and self.world == 1 and getattr(cfg, "baseline", "") != "value":
            w = batch["weights"]
            keep = (w.reshape(n, -1) > 0).any(1)
            idx = idx[keep.cpu()]
        mb_size = cfg.minibatch_size or max(1, len(idx))
        n_mb = max(1, math.ceil(len(idx) / mb_size))
        # sum-reduced losses over normalised weights: rescale a minibatch to a full-batch
        # estimate, and undo DDP's averaging over processes
        self.loss_scale = float(n_mb * self.world)
        exact = trust and cfg.kl_estimator == "exact"
        old_from_first = exact and "old_logits" not in batch and cfg.logp_chunk_size is None \
            and self.old_logits_from_mstep(n)  # see old_logits_from_mstep
        need_logits = algo.needs_logits or exact
        need_values = self.algo.value_head() is not None
        per_step_dual = trust and cfg.dual_schedule == "step"
        eps = self.eps_alpha_now()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        theta0 = [p.detach().clone() for p in params] if trust and cfg.kl_backtrack else None
        # a full-batch pass without dropout noise measures the realised KL itself
        whole_quiet = n_mb == 1 and self.world == 1 and self._quiet_mstep()
        if len(idx) < n:  # the M-step (and its KL) sees the selected samples only
            batch = batch.select(idx)
            idx = torch.arange(len(idx))
            n = len(idx)
        kl_final: float | None = None
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        first = True
        tokens = 0
        skipped = 0
        steps = 0
        stop = False
        kl_stop = False
        for _epoch in range(cfg.epochs):
            order = idx[torch.randperm(len(idx))] if n_mb > 1 else idx
            for j in range(n_mb):
                mb = batch.select(order[j * mb_size:(j + 1) * mb_size])
                out = self.forward(mb, train=cfg.mstep_dropout, need_logits=need_logits,
                                   need_values=need_values)
                if old_from_first and first:
                    # θ = θ_old, no dropout noise, the whole batch: these are π_old's logits
                    batch["old_logits"] = mb["old_logits"] = out.logits.detach()
                elif old_from_first:
                    mb["old_logits"] = batch["old_logits"]
                m: dict[str, float] = {}
                if first and "old_logp" in mb:
                    # what the PPO ratio sees before any parameter change: with dropout on
                    # in the M-step this is the dropout noise alone (spec §9)
                    _, info = O.ppo_clip_loss(out.logp.detach(), mb["old_logp"],
                                              torch.zeros(len(mb), device=out.logp.device), mb["completion_mask"],
                                              getattr(cfg, "clip_eps", 0.2))
                    m["ppo/ratio_std"] = float(info.ratio_std)
                    m["ppo/ratio_mean_first"] = float(info.ratio_mean)
                first = False
                kl = self._kl_old(mb, out) if trust else None
                if trust and cfg.kl_early_stop and steps > 0 and float(kl.detach()) >= eps:
                    kl_stop = stop = True  # the budget is spent: this θ is the M-step's result
                    if whole_quiet:  # this pass saw the whole batch at the final θ, no noise
                        kl_final = float(kl.detach())
                    break
                if trust and cfg.kl_adapt_lr and steps > 0 and float(kl.detach()) < eps / 4:
                    self._scale_lr(2.0)  # far from the budget: larger steps
                loss, m_algo = algo.loss(self, mb, out)
                m.update(m_algo)
                if per_step_dual:  # spec eq. (1) as written: α(ε − sg[KL]) + sg[α]·KL
                    la, ainfo = O.alpha_trust_region(kl, self.alpha_param, eps)
                    loss = loss + la
                    m["loss/alpha"] = float(ainfo.loss_alpha)
                elif trust:  # the policy's half of eq. (1); α steps once per update
                    loss = loss + self._alpha() * kl
                elif "old_logp" in mb:
                    with torch.no_grad():
                        m["mstep/kl"] = float(self._kl_old(mb, out))
                ok = bool(torch.isfinite(loss.detach()))
                if ok:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.alpha_opt.zero_grad(set_to_none=True)
                    acc.backward(loss)
                    if per_step_dual and self.world > 1 and self.alpha_param.grad is not None:
                        self.alpha_param.grad = acc.reduce(self.alpha_param.grad, reduction="mean")
                    if cfg.max_grad_norm > 0:
                        gn = acc.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                    else:
                        gn = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in self.policy.parameters()
                                            if p.grad is not None))
                    ok = bool(torch.isfinite(torch.as_tensor(gn)))
                    m["mstep/grad_norm"] = float(gn)
                if not ok:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.alpha_opt.zero_grad(set_to_none=True)
                    skipped += 1
                    self.nonfinite_in_a_row += 1
                    if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                        raise EmrlError(
                            f"{self.nonfinite_in_a_row} M-step gradient steps in a row had a non-finite "
                            f"loss or gradient (max_nonfinite_steps={cfg.max_nonfinite_steps}); stopping. "
                            "The last checkpoint was written before this and holds finite weights; try a "
                            "lower learning_rate")
                    continue
                self.nonfinite_in_a_row = 0
                self.optimizer.step()
                if per_step_dual:
                    self.alpha_opt.step()
                steps += 1
                tokens += int(mb["attention_mask"].sum())
                for k, v in m.items():
                    if math.isfinite(v):
                        sums[k] = sums.get(k, 0.0) + v
                        counts[k] = counts.get(k, 0) + 1
                if algo.stop_epochs(self, m):
                    stop = True
                    break
            if stop:
                break
        out_m = {k: sums[k] / counts[k] for k in sums}
        if trust:
            out_m.update(self._settle_trust_region(batch, params, theta0, kl_final))
            if kl_stop:
                out_m["mstep/kl_early_stop"] = 1.0
        out_m["mstep/grad_steps"] = float(steps)
        out_m["mstep/nonfinite_skipped"] = float(skipped)
        out_m["mstep/sequences"] = float(len(idx))
        out_m["_tokens"] = float(tokens)
        if stop and not kl_stop:
            out_m["ppo/early_stop"] = 1.0
        return out_m

    def _scale_lr(self, factor: float) -> None:
        """Multiply the M-step's learning rate by ``factor`` now and for later updates
        (``kl_adapt_lr``: the learning rate follows the KL budget, within [1e-3, 1e3]x)."""
        new = min(1e3, max(1e-3, self.lr_scale * factor))
        for g in self.optimizer.param_groups:
            g["lr"] *= new / self.lr_scale
        self.lr_scale = new

    def _alpha(self) -> Tensor:
        """sg[α]: the trust-region multiplier (softplus of its parameter, as in eq. 1)."""
        return O.temperature(self.alpha_param.detach(), "softplus", 0.0)

    def _realised_kl(self, batch: Batch) -> float:
        """KL(π_old ‖ π_θ) per token over the whole (global) batch, eval mode, no gradient."""
        with torch.no_grad():
            # (the chunked path computes its KL to π_old's snapshot only on an M-step pass,
            # grad=True, which the surrounding no_grad keeps free of a graph)
            out = self.forward(batch, train=False, need_logits="old_logits" in batch,
                               grad=bool(self.cfg.logp_chunk_size))
            kl = self._kl_old(batch, out)  # exact, chunked or k3, as in the M-step
            c = batch["completion_mask"][:, 1:].sum()
            s = kl * c
            tot = torch.stack([s.float(), c.float()])
            if self.world > 1:
                tot = self.accelerator.reduce(tot, reduction="sum")
            return float(tot[0] / tot[1].clamp(min=1))

    def _settle_trust_region(self, batch: Batch, params: list[Tensor], theta0: list[Tensor] | None,
                             kl: float | None = None) -> dict[str, float]:
        """Measure the update's realised KL (unless the M-step's last pass did), scale back an
        overshoot, step the dual α."""
        cfg = self.cfg
        if kl is None:
            kl = self._realised_kl(batch)
        out = {"mstep/kl_before_backtrack": kl}
        scale = 1.0
        eps = self.eps_alpha_now()
        if theta0 is not None and kl > cfg.kl_backtrack * eps:
            theta1 = [p.detach().clone() for p in params]
            for _ in range(10):
                scale *= 0.5
                with torch.no_grad():
                    for p, a, b in zip(params, theta0, theta1, strict=True):
                        p.copy_(a + scale * (b - a))
                kl = self._realised_kl(batch)
                if kl <= cfg.kl_backtrack * eps:
                    break
            else:  # still over budget at 1/1024 of the step: keep θ_old
                with torch.no_grad():
                    for p, a in zip(params, theta0, strict=True):
                        p.copy_(a)
                scale, kl = 0.0, 0.0
        if cfg.kl_adapt_lr and scale < 1.0:
            self._scale_lr(max(scale, 1e-2))  # the steps overshot: smaller ones next time
        if cfg.dual_schedule == "update":
            # the dual sees what the gradient steps did (before any backtracking): α rises
            # while the M-step pushes past ε_α, so the next M-step's sg[α]·KL holds it back
            kl_m = out["mstep/kl_before_backtrack"]
            la, ainfo = O.alpha_trust_region(torch.tensor(kl_m), self.alpha_param, eps)
            self.alpha_opt.zero_grad(set_to_none=True)
            la.backward()
            self.alpha_opt.step()
            out["loss/alpha"] = float(ainfo.loss_alpha)
        out.update({"mstep/kl": kl, "mstep/kl_budget_used": kl / eps, "mstep/eps_alpha": eps,
                    "mstep/lr_scale": self.lr_scale,
                    "mstep/backtrack_scale": scale,
                    "mstep/alpha": float(self._alpha())})
        return out

    # ------------------------------------------------------------------------ evaluation
    def evaluate(self, num_prompts: int | None = None) -> dict[str, Any]:
        """Held-out greedy (and sampled) accuracy on the task's eval rows (main process).

        Uses its own RNG stream (seeded from the run seed) so evaluating never changes the
        training run's random numbers, and repeated evaluations see the same sampling noise.
        """
        from emrl.lm.evaluate import evaluate

        cfg = self.cfg
        lm = self.unwrapped
        was = lm.training
        lm.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 12345)
            res = evaluate(lm, self.tokenizer, self.task, num_prompts=num_prompts or cfg.eval_num_prompts,
                           greedy=True, num_samples=cfg.eval_samples, temperature=cfg.eval_temperature,
                           max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size)
        lm.train(was)
        return res

    # ------------------------------------------------------------------------ the loop
    def train(self, *, callback: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run updates until ``max_steps``; write checkpoints, metrics and ``final/``.

        Returns the last logged metrics (with the final evaluation's ``eval/*``).
        """
        cfg, acc, algo = self.cfg, self.accelerator, self.algo
        t_start = time.time() - self.elapsed
        bar_kw = {} if acc.is_main_process else {"disable": True}
        # under a time budget the number of updates is not known in advance
        bar = progress(total=cfg.max_steps if cfg.max_minutes is None else None,
                       desc=f"emrl {self.algo_name}", unit="update",
                       initial=self.step, **bar_kw)
        last: dict[str, Any] = {}
        budget_s = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
        empty_run = 0
        try:
            if self.step == 0 and cfg.eval_at_start and cfg.max_steps > 0:
                start = self._eval_metrics()  # the start model: every curve begins at step 0
                if start:
                    last = {"step": 0, "samples": 0, **start}
                    if self.metrics is not None:
                        self.metrics.log(last)
            while self.step < cfg.max_steps:
                if budget_s is not None and self.train_time >= budget_s:
                    break
                t0 = time.time()
                batch = algo.collect(self, self.step)
                est = algo.estep(self, batch)
                t1 = time.time()
                mst = self._mstep(batch)
                t2 = time.time()
                self.train_time += t2 - t0
                empty_run = empty_run + 1 if est.get("estep/empty") else 0
                if empty_run in (1, 20) and acc.is_main_process:
                    self._say_empty(est, empty_run)
                with warnings.catch_warnings():  # a no-op update takes no optimizer step
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    self.scheduler.step()
                self.step += 1
                self.samples += self.global_count(len(batch)) if algo.name != "sft" else cfg.batch_size
                tokens = mst.pop("_tokens")
                rec: dict[str, Any] = {"step": self.step, "samples": self.samples, **est, **mst,
                                       "lr": self.scheduler.get_last_lr()[0],
                                       "time/rollout_s": t1 - t0, "time/update_s": t2 - t1,
                                       "time/train_s": self.train_time,
                                       "throughput/tokens_per_s": tokens * self.world / max(t2 - t1, 1e-9),
                                       "throughput/steps_per_s": 1.0 / max(t2 - t0, 1e-9)}
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                    rec.update(self._eval_metrics())
                self.elapsed = time.time() - t_start
                last = rec
                if self.metrics is not None and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
                    if self.step < cfg.max_steps:
                        self.metrics.log(rec)
                if callback is not None:
                    callback(self.step, rec)
                post = {name: f"{rec[k]:.3g}" for k, name in (
                    ("reward/mean", "train_reward"), ("loss/policy", "loss"), ("eval/accuracy", "heldout_greedy_acc"))
                    if k in rec}
                if "heldout_greedy_acc" not in post and (self.last_eval or {}).get("accuracy") is not None:
                    post["heldout_greedy_acc"] = f"{self.last_eval['accuracy']:.3g}"
                if budget_s is not None:
                    post["train_min"] = f"{self.train_time / 60:.1f}/{cfg.max_minutes:g}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
                if self.step < cfg.max_steps and cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_checkpoint()
            if budget_s is not None and self.step < cfg.max_steps and acc.is_main_process:
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
            if self.metrics is not None:
                self.metrics.log(last)
            if self.rundir is not None:
                self.save_final()
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
                self.metrics = None
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

    def _eval_metrics(self) -> dict[str, Any]:
        if is_sharded(self.policy) and not getattr(self, "_gathered", False):
            with full_params(self.policy):  # every process gathers; the main one evaluates
                self._gathered = True
                try:
                    return self._eval_metrics()
                finally:
                    self._gathered = False
        if not self.accelerator.is_main_process or self.cfg.eval_num_prompts <= 0 or not self.task.eval:
            self.accelerator.wait_for_everyone()
            return {}
        res = self.evaluate()
        self.accelerator.wait_for_everyone()
        self.last_eval = res
        out = {"eval/accuracy": res.get("accuracy")}
        if "sampled_accuracy" in res and res["sampled_accuracy"] is not None:
            out["eval/sampled_accuracy"] = res["sampled_accuracy"]
        if "reward/mean" in res:
            out["eval/reward"] = res["reward/mean"]
        return out

    # ------------------------------------------------------------------------ persistence
    def _meta(self) -> dict[str, Any]:
        return {"kind": "emrl-lm", "algo": self.algo_name, "step": self.step, "model": self.cfg.model,
                "task": self.task.name, "seed": self.cfg.seed, "world_size": self.world}

    def state_dict(self) -> dict[str, Any]:
        policy, optim = model_and_optimizer_state(acc_unwrap(self.accelerator, self.policy), self.optimizer,
                                                  policy_state_dict)
        return {
            "policy": policy,
            "optimizer": optim,
            "scheduler": self.scheduler.state_dict(),
            "alpha_param": self.alpha_param.detach().clone(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "algo": self.algo.state_dict(),
            "rng": get_rng_state(),
            "data": {"gen": self.data_gen.get_state(), "perm": self.perm.clone(), "cursor": self.cursor},
            "counters": {"step": self.step, "samples": self.samples, "elapsed": self.elapsed,
                         "train_time": self.train_time, "lr_scale": self.lr_scale,
                         "nonfinite_in_a_row": self.nonfinite_in_a_row},
            "config": to_dict(self.cfg),
            "last_record": dict(self.last_record),
        }

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint-<step>`` atomically (main process); never non-finite weights."""
        if self.rundir is None:
            return None
        if not _finite_params(self.policy):
            raise EmrlError(f"refusing to save non-finite weights at step {self.step}")
        path = self.rundir.path / f"checkpoint-{self.step}"
        rng_ranks = self._rng_states()  # every process takes part (a collective)
        state = self.state_dict()  # on every process: a sharded policy gathers its full state
        if self.accelerator.is_main_process:
            save_checkpoint(path, {**state, "rng_ranks": rng_ranks}, meta=self._meta())
            prune_checkpoints(self.rundir.path, self.cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return path

    def _rng_states(self) -> list[dict[str, Any]]:
        """Every process's global RNG states, in rank order (each rank samples its own
        share of the rollouts and dropout masks, so an exact resume needs all of them)."""
        if self.world == 1:
            return [get_rng_state()]
        from accelerate.utils import gather_object

        return list(gather_object([get_rng_state()]))

    def save_final(self) -> Path | None:
        """``final/``: ``save_pretrained`` model + tokenizer + task info, atomically."""
        if self.rundir is None:
            return None
        from emrl.lm.tasks import save_task_info

        if not _finite_params(self.lm):
            raise EmrlError("refusing to save non-finite weights as final/")
        final = self.rundir.path / "final"
        full = full_lm_state(acc_unwrap(self.accelerator, self.policy))  # None unless sharded
        if self.accelerator.is_main_process:
            with atomic_dir(final) as tmp:
                if is_lora(self.lm):
                    lora_save(self.lm, tmp, merge=self.cfg.lora_merge, base=self.cfg.model)
                else:
                    self.lm.save_pretrained(tmp, **({} if full is None else {"state_dict": full}))
                self.tokenizer.save_pretrained(tmp)
                save_task_info(tmp, self.task)
            if self.last_eval is not None:
                self.rundir.write_eval({**self.last_eval, "model": str(final), "step": self.step})
        self.accelerator.wait_for_everyone()
        return final

    def _load_latest(self) -> None:
        assert self.rundir is not None
        from emrl.checkpoint import latest_checkpoint

        ck = latest_checkpoint(self.rundir.path)
        if ck is None:
            raise CheckpointError(f"--resume: no complete checkpoint in {self.rundir.path} (the run stopped "
                                  "before its first checkpoint): start it again with --overwrite")
        state, meta = load_checkpoint(ck, trust_pickle=self.trust_checkpoint)
        mine = self._meta()
        for key in ("kind", "algo", "model", "task", "seed"):
            if meta.get(key) != mine.get(key):
                raise CheckpointError(
                    f"checkpoint {ck} does not match this run: its {key} is {meta.get(key)!r}, this run's "
                    f"is {mine.get(key)!r}")
        saved_cfg = apply_aliases(type(self.cfg), state.get("config", {}))  # e.g. reward_fns
        if not isinstance(saved_cfg, dict):
            raise CheckpointError(f"checkpoint {ck} is malformed: its config is not a mapping")
        # a time budget is a horizon too: the schedule (and the annealed KL budget) runs over it
        free = [k for k in RESUMABLE_CHANGES if k != "max_minutes" or self.cfg.lr_scheduler == "constant"]
        check_resume_config(
            saved_cfg, to_dict(self.cfg), free=free, where=f"the run in {self.rundir.path}",
            horizon="max_steps", horizon_ok=self.cfg.lr_scheduler == "constant",
            horizon_why=f"the learning-rate schedule (lr_scheduler={self.cfg.lr_scheduler} decays over "
                        "max_steps)")
        try:
            load_model_and_optimizer_state(acc_unwrap(self.accelerator, self.policy), self.optimizer,
                                           state["policy"], state["optimizer"], load_policy_state_dict)
            self.scheduler.load_state_dict(state["scheduler"])
            with torch.no_grad():
                self.alpha_param.copy_(state["alpha_param"])
            self.alpha_opt.load_state_dict(state["alpha_opt"])
            self.algo.load_state_dict(state["algo"])
            d = state["data"]
            self.data_gen.set_state(d["gen"])
            self.perm, self.cursor = d["perm"], int(d["cursor"])
            c = state["counters"]
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {ck} does not fit this model/run: {e}") from e
        self.step, self.samples = int(c["step"]), int(c["samples"])
        self.elapsed, self.nonfinite_in_a_row = float(c["elapsed"]), int(c["nonfinite_in_a_row"])
        self.train_time = float(c.get("train_time", 0.0))
        self.lr_scale = float(c.get("lr_scale", 1.0))
        if self.step > self.cfg.max_steps:
            raise CheckpointError(f"checkpoint {ck} is at step {self.step}, beyond max_steps={self.cfg.max_steps}")
        ranks = state.get("rng_ranks")
        saved_world = int(meta.get("world_size", 1) or 1)
        try:
            if isinstance(ranks, list) and len(ranks) == self.world:
                set_rng_state(ranks[self.rank])
            elif self.world == 1 and saved_world == 1:
                set_rng_state(state["rng"])
            else:  # another number of processes: each rank keeps its fresh seed
                if self.accelerator.is_main_process:
                    import sys

                    print(f"note: checkpoint {ck} was written by {saved_world} process(es), this run has "
                          f"{self.world}: random streams restart from the seed, so the resumed run is not "
                          "bit-identical to an uninterrupted one", file=sys.stderr)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {ck}: its RNG state is malformed ({e})") from e
        rec = state.get("last_record")
        self.resumed_record = dict(rec) if isinstance(rec, dict) else {}


def acc_unwrap(acc: Any, module: nn.Module) -> nn.Module:
    return acc.unwrap_model(module) if acc is not None else module


def run_training(cfg: SFTConfig | RLConfig, output_dir: str | Path, **kw: Any) -> dict[str, Any]:
    """Build an :class:`LMTrainer` and train; returns the last metrics."""
    return LMTrainer(cfg, output_dir, **kw).train()


__all__ = ["LMTrainer", "ForwardOut", "PolicyModule", "ValueHead", "run_training", "SFTConfig",
           "RLConfig"]
