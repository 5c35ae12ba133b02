"""The ``emrl`` command (DESIGN.md "Contracts").

::

    emrl demo
    emrl lm sft|train|eval ...
    emrl control train|eval ...
    emrl experiment NAME ...

Each group's subcommands are registered by its own module (``emrl.lm.cli``,
``emrl.control.cli``, ``emrl.experiments.cli``, ``emrl.lm.demo``), imported lazily
so ``emrl --help`` stays fast. User errors print ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from emrl import __version__
from emrl.errors import EmrlError

# group name -> (module providing register(subparsers) or register_command(subparsers), help)
_GROUPS = {
    "demo": ("emrl.lm.demo", "offline end-to-end: tiny LM, SFT, then V-MPO; writes a report"),
    "lm": ("emrl.lm.cli", "language models: sft, train (vmpo|awr|dar|ppo), eval"),
    "control": ("emrl.control.cli", "control agents on Gymnasium: train (ppo|vmpo), eval"),
    "experiment": ("emrl.experiments.cli", "the spec's research questions as experiments"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emrl",
        description="Fine-tune transformers with EM-style policy improvement (SFT, V-MPO, AWR, DAR) and PPO.",
    )
    parser.add_argument("--version", action="version", version=f"emrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Import only the group being run (plus all of them for --help), keeping startup fast.
    wanted = None
    if argv:
        first = next((a for a in argv if not a.startswith("-")), None)
        if first in _GROUPS:
            wanted = first
    for name, (module, help_text) in _GROUPS.items():
        if wanted is not None and name != wanted:
            sub.add_parser(name, help=help_text)
            continue
        mod = importlib.import_module(module)
        if name == "demo":
            mod.register_command(sub, name, help_text)
        else:
            p = sub.add_parser(name, help=help_text, description=help_text)
            group = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            mod.register(group)
            p.set_defaults(func=lambda args, p=p: (p.print_help(), 2)[1])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        rc = func(args)
    except EmrlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
