"""emrl: fine-tuning transformers with Expectation-Maximization policy improvement.

Every method is an E-step that builds a target distribution over sampled behaviour
(one weight per sample or token) and an M-step that fits the model to it by
weighted maximum likelihood under a KL trust region (spec §3, §5, §6). PPO (spec §4)
runs in the same loops as the policy-gradient contrast.

Python API (TRL's shape; :mod:`emrl.api`)::

    from emrl import VMPOConfig, VMPOTrainer      # likewise SFT*, AWR*, DAR*, PPO*
    VMPOTrainer(model="tiny", reward_funcs=[fn], args=VMPOConfig(output_dir="run")).train()

and, for Gymnasium agents, :class:`emrl.control.VMPO` / :class:`emrl.control.PPO`
(Stable-Baselines3's shape: ``learn``, ``predict``, ``save``, ``load``).

Layers (imports point down only): ``objectives`` (pure tensor maths) < ``nn`` (cores
and heads) < ``lm`` / ``control`` (training loops) < ``experiments`` < ``cli``.
"""

import os as _os

# torch on a 2-core machine is many times slower with OpenMP busy-waiting when anything
# else runs. This must be set before torch is first imported to take effect; users can
# still override it from the environment.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

#: names exported lazily from :mod:`emrl.api` (importing ``emrl`` stays light: no torch).
_API = ("SFTConfig", "SFTTrainer", "VMPOConfig", "VMPOTrainer", "AWRConfig", "AWRTrainer",
        "DARConfig", "DARTrainer", "PPOConfig", "PPOTrainer")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from emrl import api

        return getattr(api, name)
    raise AttributeError(f"module 'emrl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
