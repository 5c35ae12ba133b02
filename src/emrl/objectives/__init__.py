"""emrl.objectives: the E-step / M-step mathematics as pure functions on torch tensors.

No models, no environments, no transformers: the LM trainers and control agents call
these functions for all of their maths. Each loss returns ``(loss_or_value, info)``
where ``info`` is a small NamedTuple of detached diagnostics (rlax style). Docstrings
state tensor shapes and cite the specification (``spec §N`` =
``spec/em-formulations.md``). Bad input (wrong shapes, out-of-range hyperparameters,
non-finite advantages or log-probs) raises ``ValueError`` naming the argument; the
non-finite scans can be switched off in hot loops with ``checks(enabled=False)``.

Modules:

* :mod:`~emrl.objectives.returns` — discounted returns, n-step targets (spec §5), GAE
  (spec §4), group baselines, advantage normalisation. Time-major ``[T, B]``.
* :mod:`~emrl.objectives.positive` — the positive maps of the duals (softplus / exp,
  spec §6), in one place.
* :mod:`~emrl.objectives.duals` — :class:`~emrl.objectives.duals.Duals`, the holder of
  η, α, α_μ, α_Σ with their own optimiser and the one update schedule of both loops.
* :mod:`~emrl.objectives.estep` — V-MPO (top-k + adaptive temperature dual, spec §6);
  :mod:`~emrl.objectives.awr_dar` — AWR, DAR (spec §7);
  :mod:`~emrl.objectives.sft_targets` — SFT targets (δ, label smoothing, n-best,
  distillation; spec §6). ``estep`` re-exports all of them.
* :mod:`~emrl.objectives.mstep` — token log-probs, weighted NLL, soft-target NLL;
  :mod:`~emrl.objectives.trust_region` — exact and sampled KL, the α trust-region dual
  (spec §5 eq. 1), decoupled Gaussian KL (re-exported by ``mstep``).
* :mod:`~emrl.objectives.ppo` — clipped surrogate (token / sequence), value loss,
  entropy, approximate KL (spec §4).
"""

from emrl.objectives._checks import checks, checks_enabled, masked_mean, masked_sum
from emrl.objectives.duals import DUAL_SCHEDULES, Duals
from emrl.objectives.estep import (
    TEMPERATURE_PARAMS,
    DARInfo,
    NBestInfo,
    SoftTarget,
    VMPOInfo,
    WeightInfo,
    awr_weights,
    dar_weights,
    delta_target,
    distillation_target,
    inverse_temperature_param,
    label_smoothing_target,
    nbest_weights,
    temperature,
    vmpo_estep,
    vmpo_topk,
    vmpo_weights,
    weight_stats,
)
from emrl.objectives.mstep import (
    NLL_REDUCTIONS,
    AlphaInfo,
    NLLInfo,
    alpha_trust_region,
    categorical_kl,
    gaussian_kl_decoupled,
    kl_k1,
    kl_k2,
    kl_k3,
    soft_target_nll,
    token_logprobs,
    weighted_nll,
)
from emrl.objectives.ppo import (
    PPOInfo,
    ValueInfo,
    approx_kl,
    entropy_from_logits,
    ppo_clip_loss,
    value_loss,
)
from emrl.objectives.returns import (
    discounted_returns,
    gae,
    group_advantages,
    normalize_advantages,
    nstep_targets,
)

__all__ = [
    # helpers
    "checks",
    "checks_enabled",
    "masked_mean",
    "masked_sum",
    # returns
    "discounted_returns",
    "nstep_targets",
    "gae",
    "group_advantages",
    "normalize_advantages",
    # duals and their positive maps
    "DUAL_SCHEDULES",
    "Duals",
    "TEMPERATURE_PARAMS",
    "temperature",
    "inverse_temperature_param",
    "VMPOInfo",
    "vmpo_topk",
    "vmpo_weights",
    "vmpo_estep",
    "WeightInfo",
    "awr_weights",
    "DARInfo",
    "dar_weights",
    "SoftTarget",
    "delta_target",
    "label_smoothing_target",
    "NBestInfo",
    "nbest_weights",
    "distillation_target",
    "weight_stats",
    # M-step
    "token_logprobs",
    "NLLInfo",
    "NLL_REDUCTIONS",
    "weighted_nll",
    "soft_target_nll",
    "categorical_kl",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "AlphaInfo",
    "alpha_trust_region",
    "gaussian_kl_decoupled",
    # PPO
    "PPOInfo",
    "ppo_clip_loss",
    "ValueInfo",
    "value_loss",
    "entropy_from_logits",
    "approx_kl",
]
