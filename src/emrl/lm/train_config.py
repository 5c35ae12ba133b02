"""Config dataclasses of the LM trainer: one for SFT, one for RL (vmpo|awr|dar|ppo).

TRL style: every field has a help string and a default chosen for the ``tiny`` preset on
the default task, so ``emrl lm sft --model tiny --output-dir DIR`` and
``emrl lm train --algo vmpo --model DIR/final --output-dir DIR2`` work out of the box on
a CPU. Values resolve as dataclass defaults < ``--config FILE.yaml`` < command-line
options (:func:`emrl.config.build_config`); the run writes the resolved ``config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

from emrl.config import cfg_field, check_choices, with_aliases
from emrl.errors import ConfigError
from emrl.objectives.duals import DUAL_SCHEDULES

_WARNED: set[str] = set()


def warn_deprecated(old: str, new: str) -> None:
    """Warn once per process that ``old`` is a deprecated spelling of ``new``."""
    if old not in _WARNED:
        _WARNED.add(old)
        import warnings

        warnings.warn(f"{old} is deprecated; use {new}", FutureWarning, stacklevel=3)

ALGOS = ("vmpo", "awr", "dar", "ppo")
SFT_TARGETS = ("delta", "label_smoothing", "nbest", "distill")
BASELINES = ("group_mean", "loo", "value", "batch_mean")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class CommonTrainConfig:
    """Fields shared by SFT and RL runs (model, data, optimiser, M-step, logging); the
    trust region and the duals are RL-only (:class:`RLConfig`)."""

    #: ``--help`` sections (tag -> title), in order; see :func:`emrl.config.add_config_args`
    HELP_GROUPS = {
        "model": "model & data", "sft": "SFT target (E-step)", "rollout": "rollouts, reward & advantages",
        "optim": "optimisation", "mstep": "M-step & trust region", "eval": "evaluation",
        "logging": "logging & checkpoints", "vmpo": "V-MPO (--algo vmpo)", "awr": "AWR (--algo awr)",
        "dar": "DAR (--algo dar)", "ppo": "PPO (--algo ppo)",
        "scale": "scale: LoRA, precision, memory, generation engine",
    }
    HELP_GROUP_ALGOS = {"vmpo": "vmpo", "awr": "awr", "dar": "dar", "ppo": "ppo"}

    model: str = cfg_field("tiny", "'tiny' (fresh offline model) or a local HF causal-LM directory", group="model")
    task: str | None = cfg_field(
        None, "task SPEC: reasoning_gym:<name>[?k=v&...], a local JSONL/CSV/parquet file or saved "
        "dataset dir; empty: the model's own task (saved with it) or the default arithmetic task", group="model")
    template: str | None = cfg_field(
        None, "prompt template, str.format placeholders in braces. reasoning-gym tasks: {question} and the "
        "scalar metadata fields (e.g. {expression}; default '{question}\\nAnswer: ', the default task "
        "'{expression}='); a user dataset: any of its columns, e.g. '{prompt}' (the default) or "
        "'Q: {question}\\nA: ' for a dataset with a 'question' column", group="model")
    num_train: int | None = cfg_field(None, "training items to use (None: the task's default)", group="model")
    num_eval: int = cfg_field(
        200, "held-out items set aside for evaluation; a user dataset without a 'test' split loses "
        "these rows from training (a saved dataset's 'test' split is used instead; 0: train on all)",
        group="model")
    seed: int = cfg_field(0, "seed for model init, data order, sampling and dropout", group="model")
    max_steps: int = cfg_field(100, "number of updates (one batch each)", group="optim")
    batch_size: int = cfg_field(64, "global batch: examples (SFT) or prompts (RL) per update, over all processes", group="optim")
    minibatch_size: int | None = cfg_field(
        None, "sequences per M-step gradient step on each process (None: the whole local batch)", group="optim")
    epochs: int = cfg_field(1, "M-step epochs over each batch", group="optim")
    learning_rate: float = cfg_field(3e-3, "Adam(W) learning rate of the policy", group="optim")
    weight_decay: float = cfg_field(0.0, "AdamW weight decay", group="optim")
    adam_beta2: float = cfg_field(0.99, "AdamW beta2", group="optim")
    max_grad_norm: float = cfg_field(1.0, "gradient-norm clip (<= 0: off)", group="optim")
    lr_scheduler: str = cfg_field(
        "cosine", "learning-rate schedule after warm-up", choices=["constant", "linear", "cosine"], group="optim")
    warmup_steps: int = cfg_field(0, "linear warm-up updates", group="optim")
    min_lr_ratio: float = cfg_field(0.1, "final lr / peak lr for the linear and cosine schedules", group="optim")
    dropout: float | None = cfg_field(
        None, "model attention+residual dropout p (spec §9); None keeps the model's own", group="model")
    mstep_dropout: bool = cfg_field(
        True, "dropout active in M-step forward passes (spec §9); rollouts are always in eval mode", group="mstep")
    max_new_tokens: int = cfg_field(8, "longest completion sampled or evaluated", group="model")
    eval_every: int = cfg_field(0, "evaluate held-out greedy accuracy every N updates (0: only at the end)", group="eval")
    eval_at_start: bool = cfg_field(
        True, "evaluate the start model before the first update, so every curve starts at step 0", group="eval")
    max_minutes: float | None = cfg_field(
        None, "stop after this many minutes of training (evaluations excluded), even before max_steps", group="optim")
    eval_num_prompts: int = cfg_field(200, "held-out prompts per evaluation", group="eval")
    eval_samples: int = cfg_field(4, "samples per prompt for sampled accuracy (0: greedy only)", group="eval")
    eval_temperature: float = cfg_field(1.0, "temperature of sampled accuracy", group="eval")
    eval_batch_size: int = cfg_field(200, "prompts per generation batch in evaluation", group="eval")
    save_every: int = cfg_field(0, "write checkpoint-<step> every N updates (0: only the last)", group="logging")
    keep_checkpoints: int = cfg_field(2, "checkpoints kept (<= 0: all)", group="logging")
    log_every: int = cfg_field(1, "write metrics.jsonl every N updates", group="logging")
    max_nonfinite_steps: int = cfg_field(
        5, "stop after this many M-step gradient steps in a row with a non-finite loss or gradient", group="optim")
    num_threads: int | None = cfg_field(None, "torch CPU threads (None: EMRL_NUM_THREADS or all allowed CPUs)", group="optim")
    tensorboard: bool = cfg_field(False, "also log scalars to DIR/tensorboard (alias of --report-to tensorboard)", group="logging")
    report_to: list[str] = cfg_field(
        [], "experiment trackers that mirror metrics.jsonl, comma-separated: tensorboard, wandb, "
        "trackio, mlflow or none", group="logging")

    # scale: LoRA, precision, memory, generation engine (emrl.lm.lora / emrl.lm.scale)
    lora_r: int = cfg_field(0, "LoRA rank (0: off, full fine-tuning); needs the 'lora' extra (peft)", group="scale")
    lora_alpha: float = cfg_field(16.0, "LoRA scale numerator (the update is scaled by lora_alpha / lora_r)", group="scale")
    lora_dropout: float = cfg_field(0.0, "dropout on the LoRA branch", group="scale")
    lora_target_modules: list[str] = cfg_field(
        [], "module-name suffixes to adapt, e.g. q_proj,v_proj (empty: every linear layer but the output)", group="scale")
    lora_merge: bool = cfg_field(False, "final/ holds the merged model instead of the adapters", group="scale")
    mixed_precision: str = cfg_field(
        "no", "autocast precision of forward passes through accelerate (weights stay float32)",
        choices=["no", "bf16", "fp16"], group="scale")
    gradient_checkpointing: bool = cfg_field(False, "recompute activations in the backward pass (memory)", group="scale")
    logp_chunk_size: int | None = cfg_field(
        None, "positions per chunk of the log-softmax over the vocabulary (None: all at once); bounds the "
        "M-step's vocabulary-sized memory by chunk x V", group="scale")
    generation_backend: str = cfg_field(
        "hf", "rollout engine: transformers generate, or vLLM (colocated, weights pushed each update; "
        "needs the 'vllm' extra)", choices=["hf", "vllm"], group="scale")

    def validate(self) -> None:
        check_choices(self)
        _check(self.lora_r >= 0, f"lora_r must be >= 0, got {self.lora_r}")
        _check(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        _check(0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _check(self.logp_chunk_size is None or self.logp_chunk_size >= 1,
               f"logp_chunk_size must be >= 1 or None, got {self.logp_chunk_size}")
        _check(self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}")
        for name in ("log_every", "eval_batch_size"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "eval_every", "eval_num_prompts", "warmup_steps", "num_eval"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check(self.num_train is None or self.num_train >= 0, f"num_train must be >= 0, got {self.num_train}")
        _check(self.num_threads is None or self.num_threads >= 1,
               f"num_threads must be >= 1 (or None), got {self.num_threads}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(0.0 <= self.adam_beta2 < 1.0, f"adam_beta2 must be in [0, 1), got {self.adam_beta2}")
        _check(self.eval_temperature > 0, f"eval_temperature must be > 0, got {self.eval_temperature}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.minibatch_size is None or self.minibatch_size >= 1,
               f"minibatch_size must be >= 1 or None, got {self.minibatch_size}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.dropout is None or 0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.max_nonfinite_steps >= 1, f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        _check(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.eval_samples >= 0, f"eval_samples must be >= 0, got {self.eval_samples}")
        _check(self.max_minutes is None or self.max_minutes > 0,
               f"max_minutes must be > 0 (a training-time budget in minutes) or None, got {self.max_minutes}")
        from emrl.metrics import resolve_report_to

        resolve_report_to(self.report_to)


@dataclass
class SFTConfig(CommonTrainConfig):
    """Supervised fine-tuning as an EM M-step with an SFT E-step target (spec §6).

    Defaults: the tiny model on the default arithmetic task reaches >= 20% held-out
    greedy exact match in a few minutes on 2 CPU cores while leaving room for RL.
    """

    target: str = cfg_field(
        "delta", "E-step target: delta on demonstrations, label_smoothing, nbest (k samples from the "
        "model + the demonstration, weighted by reward) or distill (forward KL to a teacher)",
        choices=list(SFT_TARGETS), group="sft")
    label_smoothing: float = cfg_field(0.1, "smoothing mass epsilon for target=label_smoothing", group="sft")
    teacher: str | None = cfg_field(None, "teacher model directory for target=distill", group="sft")
    distill_temperature: float = cfg_field(1.0, "teacher softmax temperature for target=distill", group="sft")
    nbest_n: int = cfg_field(4, "candidates per prompt sampled from the model for target=nbest", group="sft")
    nbest_temperature: float = cfg_field(0.5, "softmax temperature over candidate rewards for target=nbest", group="sft")
    max_steps: int = cfg_field(2000, "number of updates (one batch each)", group="optim")
    batch_size: int = cfg_field(64, "global batch: examples per update, over all processes", group="optim")
    learning_rate: float = cfg_field(3e-3, "AdamW learning rate", group="optim")
    warmup_steps: int = cfg_field(20, "linear warm-up updates", group="optim")

    def validate(self) -> None:
        super().validate()
        _check(self.target in SFT_TARGETS, f"target must be one of {SFT_TARGETS}, got {self.target!r}")
        _check(0.0 <= self.label_smoothing < 1.0, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(self.target != "distill" or bool(self.teacher), "target=distill needs --teacher DIR")
        _check(self.nbest_n >= 1, f"nbest_n must be >= 1, got {self.nbest_n}")
        _check(self.nbest_temperature > 0, f"nbest_temperature must be > 0, got {self.nbest_temperature}")
        _check(self.distill_temperature > 0, f"distill_temperature must be > 0, got {self.distill_temperature}")


@with_aliases
@dataclass
class RLConfig(CommonTrainConfig):
    """RL fine-tuning in one EM loop: V-MPO, AWR, DAR (E-step weights + weighted-MLE M-step
    under the alpha trust region, spec §5-§7) or PPO (clipped ratio loss, spec §4)."""

    algo: str = cfg_field("vmpo", "algorithm", choices=list(ALGOS), group="main")
    model: str = cfg_field("tiny", "policy to fine-tune: a local HF causal-LM dir (e.g. DIR/final of an SFT run) or 'tiny'", group="model")
    max_steps: int = cfg_field(300, "number of updates (one batch of rollouts each)", group="optim")
    batch_size: int = cfg_field(32, "prompts per update (global, over all processes)", group="optim")
    num_samples: int = cfg_field(8, "completions k sampled per prompt (a group)", group="rollout")
    temperature: float = cfg_field(1.0, "sampling temperature of rollouts", group="rollout")
    top_p: float = cfg_field(1.0, "nucleus sampling of rollouts", group="rollout")
    reward_funcs: list[str] = cfg_field(
        [], "reward functions 'module:function' (TRL signature fn(prompts, completions, **columns)), "
        "'exact_match', 'verifier' (reasoning-gym) or a reward-model directory; empty: the task's own "
        "verifier", group="rollout", aliases=("reward_fns",))
    reward_weights: list[float] = cfg_field([], "weights of reward_funcs (empty: all 1)", group="rollout")
    learning_rate: float = cfg_field(
        3e-4, "AdamW learning rate of the policy: the size of one M-step gradient step; the KL budget "
        "eps_alpha decides how many are taken (kl_early_stop), so tune eps_alpha rather than this", group="optim")
    lr_scheduler: str = cfg_field(
        "cosine", "learning-rate (and, with anneal_eps_alpha, KL-budget) schedule after warm-up, over "
        "max_steps or max_minutes, whichever ends the run first", choices=["constant", "linear", "cosine"], group="optim")
    epochs: int = cfg_field(
        8, "most M-step passes over each batch of rollouts (the KL early stop usually ends it sooner)", group="optim")
    trust_region: bool = cfg_field(
        True, "alpha trust region on KL(pi_old || pi_theta) per token for vmpo/awr/dar (spec §5 eq. 1); "
        "ppo uses its clip instead", group="mstep")
    eps_alpha: float = cfg_field(
        0.005, "KL budget epsilon_alpha per update (nats per token): the step size of an update", group="mstep")
    alpha_init: float = cfg_field(1.0, "initial trust-region multiplier alpha", group="mstep")
    dual_lr: float = cfg_field(
        0.05, "learning rate of the duals' own Adam (eta's and alpha's parameters; one optimiser)",
        group="mstep", aliases=("eta_lr", "alpha_lr"))
    dual_schedule: str = cfg_field(
        "update", "when the duals step: once per update (the V-MPO E-step and eta's dual once per batch "
        "of rollouts, alpha's dual once on the realised KL of the whole M-step), or at every M-step "
        "gradient step on that minibatch ('minibatch', spec §5 eq. 1 literally; the old value 'step' "
        "is a deprecated alias)", choices=list(DUAL_SCHEDULES), group="mstep")
    anneal_eps_alpha: bool = cfg_field(
        True, "anneal the KL budget eps_alpha with the learning-rate schedule (the budget sets the "
        "step, so it is what must shrink for the policy to settle)", group="mstep")
    trust_region_states: str = cfg_field(
        "selected", "states over which the trust region's KL(pi_old || pi_theta) is taken: those of "
        "the samples the E-step selected (the M-step only fits those, so it skips the rest: about "
        "1/rho less work) or of every sample ('all', spec §5 literally)", choices=["selected", "all"], group="mstep")
    kl_early_stop: bool = cfg_field(
        True, "end the M-step's gradient steps once the measured KL(pi_old || pi_theta) reaches "
        "eps_alpha: the KL budget, not the learning rate, sets the size of an update", group="mstep")
    kl_adapt_lr: bool = cfg_field(
        True, "adapt the M-step's learning rate to the KL budget: double it while a step moves the "
        "policy by less than eps_alpha/4, shrink it by the backtracking factor when an update overshoots", group="mstep")
    kl_backtrack: float | None = cfg_field(
        2.0, "after the M-step, scale an update whose realised KL exceeds this x eps_alpha back "
        "towards pi_old (halving the step) until it does not; None: off (saves a parameter copy)", group="mstep")
    kl_estimator: str = cfg_field(
        "exact", "KL(pi_old||pi_theta): exact from logits, or the sampled k3 estimator for large vocabularies",
        choices=["exact", "k3"], group="mstep")
    kl_chunk_size: int | None = cfg_field(None, "positions per chunk of the exact KL (None: all at once)", group="mstep")
    baseline: str = cfg_field(
        "group_mean", "advantage baseline: group_mean or loo over the k samples of a prompt, a learned "
        "value head V(x), or the batch mean", choices=list(BASELINES), group="rollout")
    normalize_advantages: bool = cfg_field(False, "divide advantages by their global std", group="rollout")
    weight_level: str = cfg_field("sequence", "E-step weights per sequence (broadcast to tokens) or per token",
                                  choices=["sequence", "token"], group="rollout")
    top_fraction: float = cfg_field(
        0.25, "V-MPO rho: fraction of samples kept by top-k, k = max(1, floor(rho N)); with 0/1 rewards "
        "keep it near the fraction of correct samples so the target holds few wrong ones", group="vmpo")
    min_advantage: float | None = cfg_field(
        0.0, "V-MPO: select only samples whose advantage exceeds this ('demonstrably good' samples, "
        "spec §6); with 0/1 rewards and a group baseline, plain top-k (None) fills up with "
        "zero-advantage ties and the M-step fits wrong answers", group="vmpo")
    eps_eta: float = cfg_field(0.1, "V-MPO KL budget epsilon_eta of the temperature dual", group="vmpo")
    eta_init: float = cfg_field(1.0, "initial (or, with adaptive_temperature off, fixed) temperature eta", group="vmpo")
    eta_param: str = cfg_field("softplus", "positive parameterisation of eta (spec §6)", choices=["softplus", "log"], group="vmpo")
    adaptive_temperature: bool = cfg_field(True, "optimise eta by its dual (False: fixed eta_init, for comparison)", group="vmpo")
    kl_ref_coef: float = cfg_field(0.0, "V-MPO/AWR/DAR: optional penalty coefficient on KL(pi_theta || pi_ref) per token", group="mstep")
    awr_temperature: float = cfg_field(1.0, "AWR fixed temperature", group="awr")
    awr_max_weight: float | None = cfg_field(20.0, "AWR max-weight clip (None: off)", group="awr")
    dar_alpha: float = cfg_field(0.1, "DAR alpha: KL coefficient to the reference policy (spec §7)", group="dar")
    dar_beta: float = cfg_field(0.9, "DAR beta: KL coefficient to the sampling policy (spec §7)", group="dar")
    dar_clip_max: float | None = cfg_field(20.0, "DAR weight clip (None: off)", group="dar")
    ppo_level: str = cfg_field("token", "PPO ratio per token (value head + GAE) or per sequence (spec §4)",
                               choices=["token", "sequence"], group="ppo")
    clip_eps: float = cfg_field(0.2, "PPO clip epsilon", group="ppo")
    vf_coef: float = cfg_field(0.5, "value-loss coefficient (ppo, and baseline=value)", group="ppo")
    vf_clip: float | None = cfg_field(0.2, "PPO value clipping range (None: off)", group="ppo")
    ent_coef: float = cfg_field(0.0, "PPO entropy bonus coefficient", group="ppo")
    gamma: float = cfg_field(1.0, "PPO discount over tokens", group="ppo")
    gae_lambda: float = cfg_field(0.95, "PPO GAE lambda over tokens", group="ppo")
    kl_coef: float = cfg_field(0.02, "PPO per-token KL-to-reference penalty folded into the reward", group="ppo")
    target_kl: float | None = cfg_field(0.05, "PPO: stop the update's epochs once approx KL exceeds this (None: off)", group="ppo")
    eval_every: int = cfg_field(50, "evaluate held-out accuracy every N updates (0: only at the end)", group="eval")

    def __post_init__(self) -> None:
        if self.dual_schedule == "step":  # the old name of "minibatch"
            warn_deprecated("dual_schedule='step'", "dual_schedule='minibatch'")
            self.dual_schedule = "minibatch"

    def validate(self) -> None:
        super().validate()
        _check(self.eps_alpha > 0, f"eps_alpha must be > 0, got {self.eps_alpha}")
        _check(self.alpha_init > 0, f"alpha_init must be > 0, got {self.alpha_init}")
        _check(self.dual_lr > 0, f"dual_lr must be > 0, got {self.dual_lr}")
        _check(self.kl_chunk_size is None or self.kl_chunk_size >= 1,
               f"kl_chunk_size must be >= 1 (or None), got {self.kl_chunk_size}")
        _check(self.kl_backtrack is None or self.kl_backtrack >= 1.0,
               f"kl_backtrack must be >= 1 (a multiple of eps_alpha) or None, got {self.kl_backtrack}")
        _check(self.algo in ALGOS, f"algo must be one of {ALGOS}, got {self.algo!r}")
        _check(self.num_samples >= 1, f"num_samples must be >= 1, got {self.num_samples}")
        _check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        _check(0.0 < self.top_fraction <= 1.0, f"top_fraction (rho) must be in (0, 1], got {self.top_fraction}")
        _check(self.eps_eta > 0, f"eps_eta must be > 0, got {self.eps_eta}")
        _check(self.eta_init > 0, f"eta_init must be > 0, got {self.eta_init}")
        _check(self.awr_temperature > 0, f"awr_temperature must be > 0, got {self.awr_temperature}")
        _check(self.dar_alpha >= 0 and self.dar_beta > 0,
               f"dar_alpha must be >= 0 and dar_beta > 0, got {self.dar_alpha}, {self.dar_beta}")
        _check(self.clip_eps > 0, f"clip_eps must be > 0, got {self.clip_eps}")
        _check(0 <= self.gae_lambda <= 1 and 0 <= self.gamma <= 1, "gamma and gae_lambda must be in [0, 1]")
        if self.reward_weights:
            _check(len(self.reward_weights) == len(self.reward_funcs),
                   f"reward_weights has {len(self.reward_weights)} entries but reward_funcs has "
                   f"{len(self.reward_funcs)}")
        if self.baseline in ("group_mean", "loo") and self.num_samples < 2 and self.algo != "ppo":
            raise ConfigError(
                f"baseline={self.baseline} compares the k samples of a prompt with each other, so it needs "
                f"num_samples >= 2 (got {self.num_samples}); with k = 1 every advantage would be 0. Use "
                "--num-samples 2 or more, or --baseline value / batch_mean")
        if self.algo == "ppo" and self.ppo_level == "sequence" and self.baseline in ("group_mean", "loo") \
                and self.num_samples < 2:
            raise ConfigError(
                f"sequence-level PPO with baseline={self.baseline} needs num_samples >= 2 (got "
                f"{self.num_samples}): a group of one has zero advantage. Use --baseline batch_mean or value")
