"""`emrl lm` subcommands: ``sft``, ``train`` (vmpo|awr|dar|ppo), ``eval``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sft``, ``train`` and ``eval`` to ``subparsers``."""
    from emrl.lm.eval_cli import register_eval
    from emrl.lm.train_cli import register_sft, register_train

    register_sft(subparsers)
    register_train(subparsers)
    register_eval(subparsers)
