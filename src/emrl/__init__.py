"""emrl: fine-tuning transformers with Expectation-Maximization policy improvement.

Every method is an E-step that builds a target distribution over sampled behaviour
(one weight per sample or token) and an M-step that fits the model to it by
weighted maximum likelihood under a KL trust region (spec §3, §5, §6). PPO (spec §4)
runs in the same loops as the policy-gradient contrast.

Layers (imports point down only): ``objectives`` (pure tensor maths) < ``nn`` (cores
and heads) < ``lm`` / ``control`` (training loops) < ``experiments`` < ``cli``.
"""

import os as _os

# torch on a 2-core machine is many times slower with OpenMP busy-waiting when anything
# else runs. This must be set before torch is first imported to take effect; users can
# still override it from the environment.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
