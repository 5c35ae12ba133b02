"""emrl.control: PPO and V-MPO agents on Gymnasium environments (MLP, LSTM, TrXL, GTrXL cores).

``emrl.control.VMPO`` / ``emrl.control.PPO`` are a Stable-Baselines3-style API
(:mod:`emrl.control.api`) over the training loop :func:`emrl.control.train.train`.
"""

_API = ("PPO", "VMPO")
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        from emrl.control import api

        return getattr(api, name)
    raise AttributeError(f"module 'emrl.control' has no attribute {name!r}")
