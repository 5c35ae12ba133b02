"""The ``emrl`` command (DESIGN.md "Contracts").

::

    emrl demo
    emrl lm sft|train|eval ...
    emrl control train|eval ...
    emrl experiment NAME ...

Each group's subcommands are registered by its own module (``emrl.lm.cli``,
``emrl.control.cli``, ``emrl.experiments.cli``, ``emrl.lm.demo``), imported lazily
so ``emrl --help`` stays fast. User errors print ``error: ...`` (one line) and exit with
status 2; ``emrl --debug ...`` also prints the traceback. A misspelled option gets the
closest option names.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from emrl import __version__
from emrl.clihelp import EmrlArgumentParser
from emrl.errors import EmrlError, close_matches

# group name -> (module providing register(subparsers) or register_command(subparsers), help)
_GROUPS = {
    "demo": ("emrl.lm.demo", "offline end-to-end: tiny LM, SFT, then V-MPO; writes a report"),
    "lm": ("emrl.lm.cli", "language models: sft, train (vmpo|awr|dar|ppo), eval"),
    "control": ("emrl.control.cli", "control agents on Gymnasium: train (ppo|vmpo), eval"),
    "experiment": ("emrl.experiments.cli", "the spec's research questions as experiments"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = EmrlArgumentParser(
        prog="emrl",
        description="Fine-tune transformers with EM-style policy improvement (SFT, V-MPO, AWR, DAR) and PPO.",
    )
    parser.add_argument("--version", action="version", version=f"emrl {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, also print the Python traceback")
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
            _add_demo_length_options(sub.choices[name])
        else:
            p = sub.add_parser(name, help=help_text, description=help_text)
            group = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            mod.register(group)
            p.set_defaults(func=lambda args, p=p: (p.print_help(), 2)[1])
    return parser


#: ``emrl demo --quick``: SFT and V-MPO updates of the short run
QUICK_SFT_STEPS = 300
QUICK_RL_STEPS = 30


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _add_demo_length_options(p: argparse.ArgumentParser) -> None:
    """``--quick`` / ``--sft-max-steps`` / ``--rl-max-steps`` on ``emrl demo``: overrides of
    the SFT and V-MPO stages' ``max_steps`` (the ``sft`` / ``rl`` entries of its config)."""
    g = p.add_argument_group("run length (a short demo)")
    g.add_argument("--quick", action="store_true",
                   help=f"a short run to try the pipeline (about 2 minutes measured on 2 shared CPU cores): "
                        f"{QUICK_SFT_STEPS} SFT and at most {QUICK_RL_STEPS} V-MPO updates, then 30 s of "
                        "continued SFT as the control; the model learns "
                        "little, so its accuracies are not the demo's figures")
    g.add_argument("--sft-max-steps", type=_positive_int, metavar="N", default=None,
                   help="SFT updates (default: the `emrl lm sft` default, 2000; --quick: "
                        f"{QUICK_SFT_STEPS})")
    g.add_argument("--rl-max-steps", type=_positive_int, metavar="N", default=None,
                   help=f"V-MPO updates (default: the `emrl lm train` default, 300; --quick: {QUICK_RL_STEPS})")
    run_full = p.get_default("func")
    p.set_defaults(func=lambda args: _run_demo(args, run_full))


def _run_demo(args: argparse.Namespace, run_full) -> int:
    sft_steps = args.sft_max_steps or (QUICK_SFT_STEPS if args.quick else None)
    rl_steps = args.rl_max_steps or (QUICK_RL_STEPS if args.quick else None)
    if sft_steps is None and rl_steps is None:
        return run_full(args)
    from dataclasses import replace

    from transformers.utils import logging as hf_logging

    from emrl.config import build_config
    from emrl.lm.demo import DemoConfig, run_demo

    dc = build_config(DemoConfig, args)
    stages = {"sft": dict(dc.sft), "rl": dict(dc.rl)}
    for stage, steps in (("sft", sft_steps), ("rl", rl_steps)):
        if steps is None:
            continue
        over = stages[stage]
        over["max_steps"] = steps
        if args.quick and "eval_every" not in getattr(dc, stage):
            over["eval_every"] = max(1, steps // 3)  # a few points on the learning curves
    dc = replace(dc, sft=stages["sft"], rl=stages["rl"])
    if args.quick:  # V-MPO and its continued-SFT control: half a minute of training each
        dc = replace(dc, rl_minutes=min(dc.rl_minutes, 0.5))
    hf_logging.disable_progress_bar()  # weight loading/saving bars are noise in a training log
    run_demo(dc, args.output_dir, overwrite=args.overwrite)
    return 0


def _leaf_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that handles ``argv``'s subcommand (e.g. ``emrl lm sft``)."""
    current = parser
    rest = list(argv)
    while True:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return current
        idx = next((i for i, tok in enumerate(rest) if tok in subs[0].choices), None)
        if idx is None:
            return current
        current, rest = subs[0].choices[rest[idx]], rest[idx + 1:]


def _unknown_args_error(parser: argparse.ArgumentParser, argv: list[str], unknown: list[str]) -> str:
    leaf = _leaf_parser(parser, argv)
    options = [o for a in leaf._actions for o in a.option_strings if o.startswith("--")]
    flag = next((u for u in unknown if u.startswith("-")), unknown[0])
    name = flag.split("=", 1)[0]
    matches = close_matches(name, options, n=3) if name.startswith("-") else []
    hint = f" Did you mean: {', '.join(matches)}?" if matches else f" See: {leaf.prog} --help"
    what = "unknown option" if name.startswith("-") else "unexpected argument"
    return f"{leaf.prog}: {what} {name!r}.{hint}"


def main(argv: list[str] | None = None) -> int:
    """Run the ``emrl`` command; returns the exit status (2: bad input, with a one-line
    ``error: ...`` and no traceback unless ``--debug``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
    argv = [a for a in argv if a != "--debug"] if debug else argv
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"error: {_unknown_args_error(parser, argv, unknown)}", file=sys.stderr)
        return 2
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        rc = func(args)
    except EmrlError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine's answer to a write/read (disk full, permissions ...)
        if debug:
            traceback.print_exc()
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
