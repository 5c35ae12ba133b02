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

import emrl.objectives.duals as _duals
import emrl.objectives.estep as _estep
import emrl.objectives.mstep as _mstep
import emrl.objectives.ppo as _ppo
import emrl.objectives.returns as _returns
from emrl.objectives._checks import checks, checks_enabled, masked_mean, masked_sum
from emrl.objectives.duals import *  # noqa: F403
from emrl.objectives.estep import *  # noqa: F403  (V-MPO, AWR, DAR, SFT targets, positive maps)
from emrl.objectives.mstep import *  # noqa: F403  (log-probs, NLL, KL, trust region)
from emrl.objectives.ppo import *  # noqa: F403
from emrl.objectives.returns import *  # noqa: F403

__all__ = ["checks", "checks_enabled", "masked_mean", "masked_sum",
           *_returns.__all__, *_duals.__all__, *_estep.__all__, *_mstep.__all__, *_ppo.__all__]
