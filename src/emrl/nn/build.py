"""Build a memory core by name (spec §8): ``mlp``, ``lstm``, ``trxl``, ``trxl-i``, ``gtrxl``.

The one constructor by name of the cores of :mod:`emrl.nn.core`'s interface; it sits
above the core modules (which import only the interface), so nothing imports back.
"""

from __future__ import annotations

from emrl.errors import unknown_name_error
from emrl.nn.core import CORE_NAMES, Core
from emrl.nn.lstm import LSTMCore
from emrl.nn.mlp import MLPCore
from emrl.nn.trxl import TRXL_CORE_NAMES, build_trxl_core

__all__ = ["CORE_NAMES", "build_core"]


def build_core(name: str, input_size: int, **kwargs) -> Core:
    """Build the core ``name`` for inputs of size ``input_size``; ``kwargs`` go to its
    constructor (:class:`~emrl.nn.mlp.MLPCore`, :class:`~emrl.nn.lstm.LSTMCore`,
    :func:`~emrl.nn.trxl.build_trxl_core`).

    Unknown names raise :class:`emrl.errors.EmrlError` with close-match suggestions.
    """
    if name == "mlp":
        return MLPCore(input_size, **kwargs)
    if name == "lstm":
        return LSTMCore(input_size, **kwargs)
    if name in TRXL_CORE_NAMES:
        return build_trxl_core(name, input_size, **kwargs)
    raise unknown_name_error("core", name, CORE_NAMES)
