"""User-facing errors and close-match suggestions shared by every layer."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EmrlError(Exception):
    """An error caused by user input (bad argument, missing file, bad config ...).

    The CLI prints these as ``error: <message>`` and exits with status 2, without a
    traceback. Messages name what is wrong and what was expected.
    """


class ConfigError(EmrlError, ValueError):
    """A configuration value is missing, malformed or out of range."""


class CheckpointError(EmrlError):
    """A checkpoint is missing, incomplete, corrupted or does not match the run."""


def close_matches(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` entries of ``choices`` that look like ``name`` (best first)."""
    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if len(found) < n:
        low = name.lower()
        for c in choices:
            if c not in found and (low in c.lower() or c.lower() in low):
                found.append(c)
            if len(found) >= n:
                break
    return found


def unknown_name_error(kind: str, name: str, choices: Iterable[str], *, error: type[EmrlError] = EmrlError,
                       list_choices: bool = False) -> EmrlError:
    """Build an ``error`` (an :class:`EmrlError`) for an unknown ``kind`` called ``name``,
    with close-match suggestions (and, with ``list_choices``, every choice)."""
    choices = [str(c) for c in choices]
    matches = close_matches(str(name), choices)
    hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
    expected = f": expected one of {', '.join(choices)}" if list_choices else ""
    return error(f"unknown {kind} {name!r}{expected}.{hint}")
