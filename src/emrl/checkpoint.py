"""Atomic files and checkpoint directories in a data-only format.

A checkpoint is a directory written under a temporary name and renamed into place
only once every file is on disk, with a ``manifest.json`` (file sizes and SHA-256) that
:func:`load_checkpoint` verifies. A crash mid-write therefore never leaves a directory
that loads as a valid checkpoint, and a truncated or edited file is detected on load.

Format (``emrl-checkpoint-2``): the state (nested dicts, lists and tuples of counters,
RNG states, configs, optimiser scalars, tensors and NumPy arrays) is split into
``tensors.safetensors`` (every tensor and array) and ``state.json`` (everything else,
with typed markers for tuples, non-string dict keys, NumPy scalars and non-finite
floats). Loading parses JSON and safetensors only: nothing is unpickled, so a crafted
checkpoint cannot run code. The manifest guards against accidents (torn writes,
truncation), not against a forger, who can rewrite it; the format itself is what makes a
forged checkpoint harmless.

Checkpoints of the old format (a pickled ``state.pt``) are refused with a
:class:`~emrl.errors.CheckpointError`, unless the caller passes ``trust_pickle=True``
(the ``--trust-checkpoint`` flag of the CLI): unpickling can run arbitrary code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emrl.errors import CheckpointError

MANIFEST = "manifest.json"
STATE_FILE = "state.json"
TENSORS_FILE = "tensors.safetensors"
LEGACY_STATE_FILE = "state.pt"
FORMAT = "emrl-checkpoint-2"
_M = "__emrl_"  # prefix of the typed markers in state.json
TRUST_HELP = (
    "also load checkpoints in the old pickle format (state.pt, written by emrl before the "
    "data-only format). Unpickling runs whatever code the file names: use it only for "
    "checkpoints you wrote yourself, never for downloaded ones")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` when the block succeeds.

    On an exception the temporary directory is removed and ``final`` is untouched.
    With ``overwrite`` an existing ``final`` is replaced (moved aside, then deleted).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise CheckpointError(f"{final} already exists")
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, meta: dict[str, Any] | None = None) -> None:
    """Record size and SHA-256 of every file under ``directory`` in ``manifest.json``."""
    directory = Path(directory)
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(directory).as_posix()
            files[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    (directory / MANIFEST).write_text(
        json.dumps({"format": FORMAT, "meta": meta or {}, "files": files}, indent=2)
    )


def verify_manifest(directory: Path) -> dict[str, Any]:
    """Check every file listed in the manifest; return the manifest's ``meta``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint not found: {directory}")
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(
            f"{directory} is not a complete emrl checkpoint (no {MANIFEST}); "
            "it may come from an interrupted write"
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not isinstance(manifest.get("meta", {}), dict):
            raise TypeError("'files' and 'meta' must be mappings")
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # bad UTF-8 / JSON / layout
        raise CheckpointError(f"{mpath} is corrupted: {e}") from e
    for rel, info in files.items():
        p = directory / rel
        if not isinstance(info, dict) or ".." in Path(rel).parts or Path(rel).is_absolute():
            raise CheckpointError(f"{mpath} is corrupted: bad entry {rel!r}")
        if not p.is_file():
            raise CheckpointError(f"checkpoint {directory} is missing {rel}")
        if p.stat().st_size != info.get("size") or _sha256(p) != info.get("sha256"):
            raise CheckpointError(f"checkpoint {directory} is corrupted: {rel} does not match its manifest")
    return manifest.get("meta", {})


class _Encoder:
    """Split a nested state into a JSON tree and a dict of tensors (see module doc)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._views: dict[tuple, str] = {}
        self._storages: set[int] = set()

    def _tensor(self, t: torch.Tensor) -> str:
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
                t.dtype) if t.numel() else None
        if view is not None and view in self._views:  # the same tensor twice (tied weights)
            return self._views[view]
        ptr = t.untyped_storage().data_ptr()
        whole = t.is_contiguous() and t.storage_offset() == 0 and \
            t.numel() * t.element_size() == t.untyped_storage().nbytes()
        if not t.numel() or ptr in self._storages or not whole:
            t = t.contiguous().clone()  # safetensors stores each tensor on its own storage
        self._storages.add(t.untyped_storage().data_ptr())
        key = str(len(self.tensors))
        self.tensors[key] = t
        if view is not None:
            self._views[view] = key
        return key

    def encode(self, x: Any, where: str = "state") -> Any:
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int) and not isinstance(x, bool):
            return int(x)
        if isinstance(x, float):
            if math.isfinite(x):
                return float(x)
            return {_M + "float__": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}
        if isinstance(x, torch.Tensor):
            return {_M + "tensor__": self._tensor(x)}
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in "biufc" or x.dtype.byteorder == ">":
                raise CheckpointError(f"cannot store {where} (a NumPy array of dtype {x.dtype}) in a checkpoint")
            t = torch.from_numpy(np.ascontiguousarray(x).copy())
            return {_M + "ndarray__": self._tensor(t), "dtype": x.dtype.str}
        if isinstance(x, np.generic):
            if x.dtype.kind not in "biuf":
                raise CheckpointError(f"cannot store {where} (NumPy {x.dtype}) in a checkpoint")
            return {_M + "npscalar__": x.dtype.str, "value": self.encode(x.item(), where)}
        if isinstance(x, tuple):
            return {_M + "tuple__": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith(_M) for k in x):
                return {k: self.encode(v, f"{where}.{k}") for k, v in x.items()}
            return {_M + "dict__": [[self.encode(k, where), self.encode(v, f"{where}[{k!r}]")]
                                    for k, v in x.items()]}
        raise CheckpointError(
            f"cannot store {where} of type {type(x).__name__} in a checkpoint (expected tensors, "
            "arrays, numbers, strings, None and dicts/lists/tuples of them)")


def _decode(x: Any, tensors: dict[str, torch.Tensor], where: str = "state") -> Any:
    if isinstance(x, list):
        return [_decode(v, tensors, where) for v in x]
    if not isinstance(x, dict):
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise CheckpointError(f"{where}: unexpected JSON value {x!r}")
    marker = next((k for k in x if k.startswith(_M)), None)
    if marker is None:
        return {k: _decode(v, tensors, f"{where}.{k}") for k, v in x.items()}
    try:
        if marker == _M + "tensor__":
            return tensors[x[marker]]
        if marker == _M + "ndarray__":
            arr = tensors[x[marker]].numpy()
            return np.array(arr, dtype=np.dtype(x["dtype"]), copy=True)
        if marker == _M + "npscalar__":
            dtype = np.dtype(x[marker])
            if dtype.kind not in "biuf":
                raise ValueError(f"dtype {dtype}")
            return dtype.type(x["value"])
        if marker == _M + "float__":
            return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[x[marker]]
        if marker == _M + "tuple__":
            return tuple(_decode(v, tensors, where) for v in x[marker])
        if marker == _M + "dict__":
            return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in x[marker]}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: malformed {marker[len(_M):].rstrip('_')} entry in the checkpoint ({e})") from e
    raise CheckpointError(f"{where}: unknown entry {marker!r} in the checkpoint")


def save_checkpoint(
    path: Path,
    state: dict[str, Any],
    *,
    meta: dict[str, Any] | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Atomically write a checkpoint directory at ``path`` (data only, see module doc).

    ``state`` (model/optimiser state dicts, RNG states, counters ...) goes to
    ``tensors.safetensors`` + ``state.json``; ``write_extra(tmpdir)`` may add files
    (e.g. ``save_pretrained``); ``meta`` (JSON-safe: step, env id, task ...) is kept in
    the manifest and checked by callers on resume.
    """
    from safetensors.torch import save_file

    path = Path(path)
    enc = _Encoder()
    tree = enc.encode(state)
    with atomic_dir(path) as tmp:
        save_file(enc.tensors, str(tmp / TENSORS_FILE))
        (tmp / STATE_FILE).write_text(json.dumps({"format": FORMAT, "state": tree}, allow_nan=False))
        if write_extra is not None:
            write_extra(tmp)
        write_manifest(tmp, meta)
    return path


def load_checkpoint(
    path: Path, *, map_location: str | torch.device = "cpu", trust_pickle: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify and load a checkpoint written by :func:`save_checkpoint`; return ``(state, meta)``.

    Nothing is unpickled. A checkpoint of the old pickle format (``state.pt``) raises
    :class:`CheckpointError` unless ``trust_pickle`` (then it is loaded with
    ``torch.load(weights_only=False)``, which can run code: only for your own files).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = verify_manifest(path)
    if not (path / STATE_FILE).is_file() and (path / LEGACY_STATE_FILE).is_file():
        if not trust_pickle:
            raise CheckpointError(
                f"{path} is a checkpoint in emrl's old format (a pickled {LEGACY_STATE_FILE}); "
                "loading it could run code stored in the file, so it is refused. If you wrote it "
                "yourself, pass --trust-checkpoint (trust_pickle=True) to load it once; the "
                "checkpoints written after that use the data-only format")
        try:
            state = torch.load(path / LEGACY_STATE_FILE, map_location=map_location, weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad checkpoint
            raise CheckpointError(f"cannot load {path / LEGACY_STATE_FILE}: {e}") from e
        return state, meta
    try:
        doc = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} has no {STATE_FILE}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} is not valid JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "state" not in doc:
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} is not an {FORMAT} state")
    try:
        tensors = load_file(str(path / TENSORS_FILE), device="cpu")
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} has no {TENSORS_FILE}") from e
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: {TENSORS_FILE} is not a safetensors file ({e})") from e
    if str(map_location) != "cpu":
        tensors = {k: v.to(map_location) for k, v in tensors.items()}
    state = _decode(doc["state"], tensors)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: its state is not a mapping")
    return state, meta


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` directory name, else ``None``."""
    name = Path(path).name
    if name.startswith("checkpoint-"):
        try:
            return int(name.split("-", 1)[1])
        except ValueError:
            return None
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete ``checkpoint-<step>`` directory with the highest step in ``run_dir``."""
    best: tuple[int, Path] | None = None
    for p in Path(run_dir).glob("checkpoint-*"):
        step = checkpoint_step(p)
        if step is not None and p.is_dir() and (p / MANIFEST).is_file():
            if best is None or step > best[0]:
                best = (step, p)
    return best[1] if best else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (``keep <= 0``: keep all)."""
    if keep <= 0:
        return
    cps = sorted(
        (s, p) for p in Path(run_dir).glob("checkpoint-*")
        if (s := checkpoint_step(p)) is not None and p.is_dir()
    )
    for _, p in cps[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
