"""A CPU-only check that every tensor of an update lives on the model's device.

On a machine with only a CPU, "the CPU" and "the model's device" are the same device, so
``torch.zeros(n)`` next to a log-prob tensor runs — and then fails on the first CUDA
M-step. :class:`DeviceGuard` (a ``TorchFunctionMode``) models a second device: every
tensor that checked code (by default the ``emrl`` package) creates **without naming a
device** — ``torch.zeros(n)``, ``torch.arange(S)``, ``torch.tensor(list)`` — is put on a
virtual *host* device, and so is the result of ``.cpu()``; the host tag propagates
through ops whose tensor inputs are all on the host, and ``.to(device)`` / ``.cuda()``
moves a tensor off it. Every op that combines a host tensor of one or more dimensions
with a device tensor of one or more dimensions is a violation, exactly as CUDA would
reject it (0-dim host tensors mix freely, as CUDA allows; host index tensors may index a
device tensor, as CUDA allows). Ops whose inputs really are on different devices (a GPU
machine, ``meta``) are violations too.

Violations are recorded (op, creation site of the host tensor, the op's call site), not
raised, so one run lists all of them; :meth:`DeviceGuard.check` raises with the list.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

import emrl

_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_THIS = str(Path(__file__).resolve())

# factories that take a ``device=`` and fall back to the default device without one
_FACTORIES = {
    torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.range, torch.tensor,
    torch.as_tensor, torch.asarray, torch.rand, torch.randn, torch.randint, torch.randperm,
    torch.linspace, torch.logspace, torch.eye, torch.scalar_tensor, torch.empty_strided,
    torch.from_numpy, torch.normal, torch.tril_indices, torch.triu_indices,
}
_TO_DEVICE = {torch.Tensor.to, torch.Tensor.cuda}
_TO_HOST = {torch.Tensor.cpu}
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
# ops that only read the shape of their second tensor
_SHAPE_OF_OTHER = {torch.Tensor.expand_as, torch.Tensor.view_as, torch.Tensor.reshape_as}


def _tensors(obj, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _tensors(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            _tensors(x, out)
    return out


def _has_device_arg(args, kwargs) -> bool:
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (str, torch.device, torch.Tensor)) for a in args[1:])


class DeviceGuard(TorchFunctionMode):
    """See the module docstring. ``roots``: source directories whose factory calls are checked."""

    def __init__(self, roots: Iterable[str | Path] | None = None) -> None:
        super().__init__()
        self.roots = [str(Path(r).resolve()) for r in (roots or [Path(emrl.__file__).parent])]
        self._host: dict[int, tuple[weakref.ref, str]] = {}
        self.violations: list[str] = []
        self.host_creations = 0

    # -- bookkeeping ---------------------------------------------------------------
    def _site(self) -> tuple[str, bool]:
        """The first caller frame outside torch and this file: ``file:line``, checked?"""
        f = sys._getframe(2)
        while f is not None:
            fn = f.f_code.co_filename
            if not (fn.startswith(_TORCH_DIR) or fn == _THIS):
                checked = any(fn.startswith(r) for r in self.roots)
                return f"{fn}:{f.f_lineno}", checked
            f = f.f_back
        return "?", False

    def _tag(self, t: torch.Tensor, site: str) -> None:
        key = id(t)
        if key in self._host:
            return
        self._host[key] = (weakref.ref(t, lambda _r, k=key: self._host.pop(k, None)), site)

    def _untag(self, t: torch.Tensor) -> None:
        self._host.pop(id(t), None)

    def host_site(self, t: torch.Tensor) -> str | None:
        e = self._host.get(id(t))
        return e[1] if e is not None and e[0]() is t else None

    def _fail(self, func, msg: str) -> None:
        site, _ = self._site()
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
        self.violations.append(f"{name} at {site}: {msg}")

    # -- the mode ------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES:
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor) and kwargs.get("device") is None:
                data = _tensors(args[:1], [])
                site, checked = self._site()
                if data:  # as_tensor(t): keeps t's device
                    if self.host_site(data[0]) is not None:
                        self._tag(out, self.host_site(data[0]))
                elif checked or func is torch.from_numpy:
                    self.host_creations += 1
                    self._tag(out, site)
            return out
        ins = _tensors((args, kwargs), [])
        if not ins:
            return func(*args, **kwargs)
        if func in _TO_DEVICE and _has_device_arg(args, kwargs) or func in _TO_HOST:
            out = func(*args, **kwargs)
            if out is args[0]:  # a no-op move on a one-device machine: a new handle
                out = out.view_as(out)
            if func in _TO_HOST:
                self._tag(out, self._site()[0] + " (.cpu())")
            else:
                self._untag(out)
            return out
        check = ins
        if func in _SHAPE_OF_OTHER:
            check = ins[:1]
        elif func in _INDEXING:
            # CUDA: a device tensor may be indexed by host indices, not a host tensor by
            # device indices; a __setitem__ value follows the ordinary rule
            self_t = args[0]
            idx = _tensors(args[1], [])
            if self.host_site(self_t) is not None and any(
                    i.dim() > 0 and self.host_site(i) is None for i in idx):
                self._fail(func, f"host tensor (created at {self.host_site(self_t)}) indexed by a "
                                 "device tensor")
            check = [self_t] + _tensors(args[2:], [])
        host = [t for t in check if self.host_site(t) is not None]
        dev = [t for t in check if self.host_site(t) is None]
        real = {t.device for t in check if t.dim() > 0}
        if len(real) > 1:
            self._fail(func, f"inputs on different devices {sorted(str(d) for d in real)}")
        host_nd = [t for t in host if t.dim() > 0]
        if host_nd and dev:
            self._fail(func, f"a tensor created on the host at {self.host_site(host_nd[0])} "
                             f"{tuple(host_nd[0].shape)} meets a device tensor {tuple(dev[0].shape)}")
        out = func(*args, **kwargs)
        if host and not dev:  # host-only inputs: the result stays on the host
            site = self.host_site(host[0])
            for o in _tensors(out, []):
                self._tag(o, site)
        return out

    def check(self) -> None:
        if self.violations:
            uniq = list(dict.fromkeys(self.violations))
            raise AssertionError(f"{len(uniq)} device-placement violation(s):\n  " + "\n  ".join(uniq))
