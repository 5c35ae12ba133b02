"""Importing a module the user named (reward functions, custom environments) with clear errors.

Every failure becomes an :class:`~emrl.errors.EmrlError` naming the module and what went
wrong: not found (with a hint when a file of that name sits in the current directory,
which the ``emrl`` command does not put on the import path), a syntax error (file and
line), an exception or ``sys.exit`` while importing.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from emrl.errors import EmrlError


def _cwd_hint(module_name: str) -> str:
    top = module_name.split(".")[0]
    cwd = Path.cwd()
    here = (cwd / f"{top}.py").is_file() or (cwd / top / "__init__.py").is_file()
    on_path = any(p in ("", ".") or _same(p, cwd) for p in sys.path)
    if here and not on_path:
        return (f" {top!r} is in the current directory ({cwd}), which is not on Python's import "
                "path when emrl runs as a command: run with PYTHONPATH=. (or install the module)")
    return " Is it installed, or its directory on PYTHONPATH?"


def _same(p: str, cwd: Path) -> bool:
    try:
        return Path(p).resolve() == cwd.resolve()
    except OSError:
        return False


def import_user_module(module_name: str, what: str) -> ModuleType:
    """``importlib.import_module(module_name)``; any failure is an :class:`EmrlError`
    starting with ``what`` (e.g. ``"reward function 'm:f'"``)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise EmrlError(f"{what}: cannot import module {module_name!r} (not found).{_cwd_hint(module_name)}") from e
        raise EmrlError(f"{what}: importing module {module_name!r} failed: it needs {missing!r}, "
                        "which is not installed") from e
    except SyntaxError as e:
        raise EmrlError(f"{what}: module {module_name!r} has a syntax error at {e.filename}, line "
                        f"{e.lineno}: {e.msg}") from e
    except SystemExit as e:
        raise EmrlError(f"{what}: importing module {module_name!r} called sys.exit({e.code!r})") from e
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises
        raise EmrlError(f"{what}: importing module {module_name!r} raised {type(e).__name__}: {e}") from e
