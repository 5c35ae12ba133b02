"""Atomic files and checkpoint directories.

A checkpoint is a directory written under a temporary name and renamed into place
only once every file is on disk, with a ``manifest.json`` (file sizes and SHA-256) that
:func:`load_checkpoint` verifies. A crash mid-write therefore never leaves a directory
that loads as a valid checkpoint, and a truncated or edited file is detected on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from emrl.errors import CheckpointError

MANIFEST = "manifest.json"
STATE_FILE = "state.pt"


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
        json.dumps({"format": "emrl-checkpoint-1", "meta": meta or {}, "files": files}, indent=2)
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
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{mpath} is corrupted: {e}") from e
    for rel, info in files.items():
        p = directory / rel
        if not p.is_file():
            raise CheckpointError(f"checkpoint {directory} is missing {rel}")
        if p.stat().st_size != info["size"] or _sha256(p) != info["sha256"]:
            raise CheckpointError(f"checkpoint {directory} is corrupted: {rel} does not match its manifest")
    return manifest.get("meta", {})


def save_checkpoint(
    path: Path,
    state: dict[str, Any],
    *,
    meta: dict[str, Any] | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Atomically write a checkpoint directory at ``path``.

    ``state`` (model/optimiser state dicts, RNG states, counters ...) goes to
    ``state.pt``; ``write_extra(tmpdir)`` may add files (e.g. ``save_pretrained``);
    ``meta`` (JSON-safe: step, env id, task ...) is kept in the manifest and checked
    by callers on resume.
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        torch.save(state, tmp / STATE_FILE)
        if write_extra is not None:
            write_extra(tmp)
        write_manifest(tmp, meta)
    return path


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify and load a checkpoint written by :func:`save_checkpoint`; return ``(state, meta)``."""
    path = Path(path)
    meta = verify_manifest(path)
    try:
        state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad checkpoint
        raise CheckpointError(f"cannot load {path / STATE_FILE}: {e}") from e
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
