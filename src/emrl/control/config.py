"""The control trainer's config: one dataclass, every field with a help string.

Defaults are the tuned CartPole-class settings (8 envs × 32 steps per update, 20 epochs
on one minibatch, Adam 1e-3 annealed, γ 0.98, GAE λ 0.8), which also suit other small
classic-control tasks; harder tasks override fields (the LunarLander benchmark records
its overrides with its command).
"""

from __future__ import annotations

from dataclasses import dataclass

from emrl.config import cfg_field, check_choices, with_aliases
from emrl.errors import ConfigError
from emrl.objectives.duals import DUAL_SCHEDULES

ALGOS = ("ppo", "vmpo")


@with_aliases
@dataclass
class ControlConfig:
    #: ``--help`` sections (tag -> title), in order; see :func:`emrl.config.add_config_args`
    HELP_GROUPS = {"env": "environment & run", "core": "core / network", "optim": "optimisation (both algorithms)",
                   "ppo": "PPO (--algo ppo)", "vmpo": "V-MPO (--algo vmpo)",
                   "eval": "evaluation, logging & checkpoints"}
    HELP_GROUP_ALGOS = {"ppo": "ppo", "vmpo": "vmpo"}

    # what to train
    algo: str = cfg_field("ppo", "algorithm: ppo or vmpo", choices=list(ALGOS), group="main")
    env: str = cfg_field("CartPole-v1", "Gymnasium environment id (ALE/..., popgym-..., bsuite/memory_len/N need extras)", group="env")
    core: str = cfg_field("mlp", "memory core (spec §8)", choices=["mlp", "lstm", "trxl", "trxl-i", "gtrxl"], group="core")
    hidden_sizes: list[int] = cfg_field([64, 64], "MLP core hidden sizes (also the value MLP of mlp agents)", group="core")
    activation: str = cfg_field("tanh", "MLP activation", choices=["tanh", "relu", "elu", "gelu"], group="core")
    lstm_hidden_size: int = cfg_field(128, "LSTM core hidden size", group="core")
    core_kwargs: dict = cfg_field({}, "extra keyword arguments for the core (e.g. trxl sizes)", group="core")
    encoder: str = cfg_field("nature", "pixel observations: nature (Nature-DQN torso) or resnet (IMPALA ResNet torso, spec §8)", choices=["nature", "resnet"], group="core")
    prev_action_reward: bool = cfg_field(False, "spec §8: feed the previous reward and (one-hot) previous action to the core (zero after a reset)", group="core")
    separate_value: bool = cfg_field(True, "mlp core only: the value function has its own MLP", group="core")
    gaussian_state_dependent_std: bool = cfg_field(False, "Box actions: std from the network (softplus) instead of a learned vector", group="core")
    init_std: float = cfg_field(1.0, "Box actions: initial policy standard deviation", group="core")
    total_steps: int = cfg_field(100_000, "environment steps to train for (summed over envs)", group="env")
    seed: int = cfg_field(0, "random seed (torch, numpy, environments)", group="env")
    # collection
    num_envs: int = cfg_field(8, "parallel environments", group="env")
    vectorization: str = cfg_field("sync", "vector env: sync (one process) or async (one process per env)", choices=["sync", "async"], group="env")
    unroll_length: int = cfg_field(32, "steps per env per update (the training segment length T)", group="env")
    normalize_obs: bool = cfg_field(False, "normalise observations with running mean/std", group="env")
    reward_scale: float = cfg_field(1.0, "multiply training rewards by this (episode statistics stay raw)", group="env")
    # optimisation (shared)
    learning_rate: float = cfg_field(1e-3, "Adam learning rate of the agent", group="optim", aliases=("lr",))
    anneal_lr: bool = cfg_field(True, "anneal the learning rate linearly to 0", group="optim")
    epochs: int = cfg_field(20, "passes over each batch", group="optim")
    num_minibatches: int = cfg_field(1, "minibatches per epoch (over samples; over envs for memory cores)", group="optim")
    max_grad_norm: float = cfg_field(0.5, "gradient clipping by global norm", group="optim")
    gamma: float = cfg_field(0.98, "discount", group="optim")
    gae_lambda: float = cfg_field(0.8, "GAE λ", group="optim")
    vf_coef: float = cfg_field(0.5, "value loss coefficient", group="optim")
    adam_eps: float = cfg_field(1e-5, "Adam epsilon", group="optim")
    # PPO
    clip_eps: float = cfg_field(0.2, "PPO: ratio clip ε", group="ppo", aliases=("clip_coef",))
    anneal_clip: bool = cfg_field(True, "PPO: anneal the clip ε linearly to 0 (as rl-zoo)", group="ppo")
    clip_vloss: bool = cfg_field(False, "PPO: clip the value update around the old value (with clip ε)", group="ppo")
    ent_coef: float = cfg_field(0.0, "PPO: entropy bonus coefficient", group="ppo")
    normalize_advantages: bool = cfg_field(True, "PPO: normalise advantages per minibatch", group="ppo", aliases=("norm_adv",))
    target_kl: float | None = cfg_field(None, "PPO: stop the epochs early when approx KL exceeds this", group="ppo")
    # V-MPO
    vmpo_targets: str = cfg_field("gae", "V-MPO advantage/value targets: nstep or gae", choices=["nstep", "gae"], group="vmpo")
    nstep: int = cfg_field(8, "V-MPO: n of the n-step bootstrapped targets", group="vmpo")
    top_fraction: float = cfg_field(0.5, "V-MPO E-step: fraction of samples kept (highest advantages)", group="vmpo", aliases=("topk_fraction",))
    eps_eta: float = cfg_field(0.1, "V-MPO E-step: KL bound ε_η of the temperature dual", group="vmpo")
    eta_init: float = cfg_field(1.0, "V-MPO: initial temperature η", group="vmpo")
    eps_alpha: float = cfg_field(0.01, "V-MPO M-step: KL bound ε_α (categorical policies)", group="vmpo")
    eps_alpha_mu: float = cfg_field(0.01, "V-MPO M-step: mean KL bound ε_αμ (Gaussian policies)", group="vmpo")
    eps_alpha_sigma: float = cfg_field(1e-4, "V-MPO M-step: covariance KL bound ε_αΣ (Gaussian policies)", group="vmpo")
    alpha_init: float = cfg_field(1.0, "V-MPO: initial Lagrange multiplier(s) α", group="vmpo")
    dual_lr: float | None = cfg_field(None, "V-MPO: learning rate of the duals' own Adam (η and α; None: same as learning_rate, not annealed)", group="vmpo")
    dual_schedule: str = cfg_field("minibatch", "V-MPO: when the duals step: update (E-step and η once per batch before the M-step, α once after it on the realised KL) or minibatch (E-step, η and α in every minibatch loss)", choices=list(DUAL_SCHEDULES), group="vmpo")
    vmpo_norm_adv: bool = cfg_field(False, "V-MPO: normalise advantages before the E-step", group="vmpo")
    # evaluation, logging, checkpoints
    eval_every: int = cfg_field(10_000, "evaluate every this many env steps (0: only at the end)", group="eval")
    eval_episodes: int = cfg_field(10, "episodes per evaluation", group="eval")
    eval_deterministic: bool = cfg_field(True, "evaluate with the mode of the policy", group="eval")
    save_every: int = cfg_field(50_000, "save a checkpoint every this many env steps (0: only at the end)", group="eval", aliases=("checkpoint_every",))
    keep_checkpoints: int = cfg_field(2, "checkpoints kept on disk", group="eval")
    log_every: int = cfg_field(1, "log metrics every this many updates", group="eval")
    tensorboard: bool = cfg_field(False, "also write TensorBoard scalars to DIR/tensorboard (alias of --report-to tensorboard)", group="eval")
    report_to: list[str] = cfg_field([], "experiment trackers that mirror metrics.jsonl, comma-separated: tensorboard, wandb, trackio, mlflow or none", group="eval")
    num_threads: int = cfg_field(1, "torch threads (1 is fastest for small agents on a shared CPU; see benchmarks/results/control_speed.md)", group="eval")
    device: str = cfg_field("cpu", "torch device", group="eval")

    def validate(self) -> None:
        check_choices(self)
        if self.algo not in ALGOS:
            raise ConfigError(f"algo must be one of {list(ALGOS)}, got {self.algo!r}")
        for name in ("total_steps", "num_envs", "unroll_length", "epochs", "num_minibatches",
                     "nstep", "eval_episodes", "num_threads", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        from emrl.metrics import resolve_report_to

        resolve_report_to(self.report_to)
        if self.encoder not in ("nature", "resnet"):
            raise ConfigError(f"encoder must be one of ['nature', 'resnet'], got {self.encoder!r}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("learning_rate", "eps_eta", "eps_alpha", "eps_alpha_mu", "eps_alpha_sigma", "eta_init", "alpha_init",
                     "init_std", "adam_eps", "clip_eps", "max_grad_norm", "lstm_hidden_size"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("eval_every", "save_every", "vf_coef", "ent_coef"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("dual_lr", "target_kl"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 (or None), got {getattr(self, name)}")
        if not self.hidden_sizes or any(h < 1 for h in self.hidden_sizes):
            raise ConfigError(f"hidden_sizes must be a non-empty list of sizes >= 1, got {self.hidden_sizes}")
        if not isinstance(self.core_kwargs, dict):
            raise ConfigError(f"core_kwargs must be a mapping, got {self.core_kwargs!r}")
        batch = self.num_envs * self.unroll_length
        if self.core == "mlp":
            if batch % self.num_minibatches:
                raise ConfigError(
                    f"num_envs*unroll_length = {batch} must be divisible by num_minibatches = {self.num_minibatches}"
                )
        elif self.num_envs % self.num_minibatches:
            raise ConfigError(
                f"memory cores split minibatches over envs: num_envs = {self.num_envs} must be "
                f"divisible by num_minibatches = {self.num_minibatches}"
            )

    def core_kwargs_for(self) -> dict:
        if self.core == "mlp":
            return {"hidden_sizes": list(self.hidden_sizes), "activation": self.activation, **self.core_kwargs}
        if self.core == "lstm":
            return {"hidden_size": self.lstm_hidden_size, **self.core_kwargs}
        return dict(self.core_kwargs)
