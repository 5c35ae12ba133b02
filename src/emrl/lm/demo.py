"""`emrl demo` (built in issue 4)."""

from __future__ import annotations

import argparse

from emrl.errors import EmrlError


def _run(args: argparse.Namespace) -> int:
    raise EmrlError("the demo is not built yet")


def register_command(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(func=_run)
