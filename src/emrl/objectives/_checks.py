"""Cheap input validation shared by the objectives (private).

Every public function in :mod:`emrl.objectives` validates its inputs with these
helpers so that bad input fails loudly with a ``ValueError`` naming the argument and
what was expected, instead of propagating a silent NaN. Each check is O(1) Python
work plus at most one ``torch.isfinite(x).all()`` reduction per tensor.

The non-finite scans (the ``torch.isfinite(x).all()`` reductions of
:func:`check_tensor`) can be switched off inside hot loops that have already validated
their data, with the context manager :func:`checks` (exported as
``emrl.objectives.checks``)::

    with emrl.objectives.checks(enabled=False):
        loss, info = ppo_clip_loss(...)   # shapes and arguments still checked

Shape, dtype, emptiness and argument checks always run; the default is enabled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.utils.checkpoint
from torch import Tensor

_FINITE_SCANS = [True]  # a one-element list: mutable module state read by check_tensor


@contextmanager
def checks(enabled: bool = True) -> Iterator[None]:
    """Context manager enabling (default) or disabling the objectives' non-finite scans.

    With ``enabled=False``, :func:`check_tensor` skips its ``torch.isfinite(x).all()``
    reduction (one reduction and one host sync per tensor) until the block exits; the
    previous setting is restored on exit, also after an exception, so blocks nest.
    Shape, dtype, emptiness and hyperparameter checks are unaffected. Use it only
    where the inputs are known to be finite (e.g. a training loop's inner epochs on a
    batch that was checked once).
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be a bool, got {type(enabled).__name__}")
    previous = _FINITE_SCANS[0]
    _FINITE_SCANS[0] = enabled
    try:
        yield
    finally:
        _FINITE_SCANS[0] = previous


def checks_enabled() -> bool:
    """Whether the non-finite scans of :func:`check_tensor` currently run (see :func:`checks`)."""
    return _FINITE_SCANS[0]


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def check_tensor(
    x: object,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[int] | None = None,
    finite: bool = True,
    floating: bool = False,
    nonempty: bool = True,
) -> Tensor:
    """Return ``x`` if it is a tensor meeting the requirements, else raise ``ValueError``.

    ``ndim``: required number of dimensions (or a collection of allowed values).
    ``shape``: required exact shape. ``finite``: every element must be finite.
    ``floating``: must have a floating-point dtype. The finiteness scan is skipped
    inside ``checks(enabled=False)``.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(
                f"{name} must have {want} dimension(s), got shape {_shape(x)}"
            )
    if shape is not None and _shape(x) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {_shape(x)}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {_shape(x)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if finite and _FINITE_SCANS[0] and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf), got non-finite values")
    return x


def check_same_shape(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{b_name} must have the same shape as {a_name} {_shape(a)}, got {_shape(b)}"
        )


def check_mask(mask: object, name: str, like: Tensor, like_name: str) -> Tensor | None:
    """Validate an optional validity mask of the same shape as ``like``; return it as bool.

    Accepts bool tensors or 0/1 numeric tensors. ``None`` passes through.
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.shape != like.shape:
        raise ValueError(
            f"{name} must have the same shape as {like_name} {_shape(like)}, got {_shape(mask)}"
        )
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() and not bool(torch.isfinite(mask).all()):
        raise ValueError(f"{name} must contain only 0/1 values, got non-finite values")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must be boolean or contain only 0/1 values")
    return mask.bool()


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """Return ``float(value)`` if it is a finite number > 0 (or >= 0), else raise."""
    v = to_float(value, name)
    if allow_zero:
        if not v >= 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    elif not v > 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v


def check_unit_interval(
    value: object, name: str, *, low_open: bool = False, high_open: bool = False
) -> float:
    """Return ``float(value)`` if it lies in [0, 1] (ends optionally open), else raise."""
    v = to_float(value, name)
    ok_low = v > 0 if low_open else v >= 0
    ok_high = v < 1 if high_open else v <= 1
    if not (ok_low and ok_high):
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}0, 1{hi}, got {v}")
    return v


def to_float(value: object, name: str) -> float:
    """Convert a Python number or one-element tensor to ``float``; require it finite."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number, got a tensor of shape {_shape(value)}")
        value = value.detach().item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_chunk_size(chunk_size: object) -> int | None:
    """``None`` or a positive int."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


def masked_sum(x: Tensor, mask: Tensor | None) -> Tensor:
    """Sum of ``x`` over positions where ``mask`` is true (all positions if ``None``)."""
    if mask is None:
        return x.sum()
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum()


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is true; 0 when nothing is valid."""
    if mask is None:
        return x.mean()
    count = mask.sum().clamp_min(1).to(x.dtype)
    return masked_sum(x, mask) / count


# ------------------------------------------------------------- logits (M-step, KL)

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in _LOW_PRECISION else x


def chunked(fn, n_chunks: int, *args: Tensor) -> Tensor:
    """Run ``fn(*args)`` for one chunk; when there are several chunks and autograd is
    recording, under activation checkpointing: the chunk's ``[chunk, V]`` temporaries
    (log-softmax, upcast copies) are then not kept for backward but recomputed, so peak
    memory is one chunk's worth instead of the whole ``[B, T, V]`` (the point of
    chunking). Values and gradients are unchanged."""
    if n_chunks > 1 and torch.is_grad_enabled() and any(a.requires_grad for a in args):
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def check_logits(logits: Tensor, name: str = "logits") -> None:
    # logits may legitimately contain -inf (a masked vocabulary entry) but never NaN or
    # +inf; one reduction (NaN < inf is False) checks both.
    check_tensor(logits, name, floating=True, finite=False)
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a vocabulary dimension, got {tuple(logits.shape)}")
    if checks_enabled() and not bool((logits < float("inf")).all()):
        raise ValueError(f"{name} must not contain NaN or +inf (-inf is allowed)")
