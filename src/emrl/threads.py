"""CPU thread policy.

On a small shared machine (2 cores) torch's default OpenMP busy-waiting can make a run
10-20x slower when anything else is running. ``emrl`` sets ``OMP_WAIT_POLICY=PASSIVE``
on import (before torch is imported) and lets each command choose a thread count.
"""

from __future__ import annotations

import os

import torch

from emrl.errors import ConfigError


def default_num_threads() -> int:
    """Threads to use when the user gives none: ``$EMRL_NUM_THREADS`` or the CPUs we may use."""
    env = os.environ.get("EMRL_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError as e:
            raise ConfigError(f"EMRL_NUM_THREADS must be a positive integer, got {env!r}") from e
        if n < 1:
            raise ConfigError(f"EMRL_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count (``None``: :func:`default_num_threads`); return it."""
    n = default_num_threads() if num_threads is None else int(num_threads)
    if n < 1:
        raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
    torch.set_num_threads(n)
    return n
