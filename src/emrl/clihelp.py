"""Readable ``--help`` for the ``emrl`` commands.

* :func:`plain_text` renders the reStructuredText markup of docstrings (double
  backquotes, roles such as ``:class:`~a.B```, literal-block ``::`` markers) as plain
  text, so a command can use its module docstring as its description;
* :class:`HelpFormatter` wraps prose paragraphs to the terminal, keeps indented blocks
  (command examples) as they are, and renders help strings with :func:`plain_text`;
* :class:`EmrlArgumentParser` is the parser class of every ``emrl`` (sub)command: it uses
  :class:`HelpFormatter` and, for ``--help`` after ``--algo NAME``, shows only the option
  groups that apply to that algorithm (groups registered by
  :func:`emrl.config.add_config_args` from a config's ``HELP_GROUP_ALGOS``).
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from typing import Any

_ROLE = re.compile(r":[a-zA-Z]+(?::[a-zA-Z]+)?:`([^`]*)`")
_LITERAL = re.compile(r"``(.+?)``", re.S)
_SINGLE = re.compile(r"(?<![`\w])`([^`\n]+)`(?![`\w])")


def _role_text(match: re.Match) -> str:
    text = match.group(1)
    m = re.match(r"(.*?)\s*<[^>]+>$", text)  # :role:`title <target>`
    if m and m.group(1):
        return m.group(1)
    text = text.lstrip("!")
    if text.startswith("~"):
        return text[1:].split(".")[-1]
    return text


def plain_text(doc: str | None) -> str:
    """``doc`` (a docstring) with its reStructuredText markup rendered as plain text.

    ``\\`\\`x\\`\\``` becomes ``x``; ``:class:`~pkg.mod.Name``` becomes ``Name``; a line
    that is only ``::`` is dropped and a paragraph ending in ``::`` ends in ``:``
    instead. Indentation and line breaks are kept.
    """
    if not doc:
        return ""
    text = textwrap.dedent(doc if not doc.startswith(("\n", " ")) else doc).strip("\n")
    lines = text.splitlines()
    if lines and not lines[0].startswith(" ") and len(lines) > 1:
        # docstring style: first line flush, the rest indented
        rest = textwrap.dedent("\n".join(lines[1:]))
        text = lines[0] + ("\n" + rest if rest else "")
    out: list[str] = []
    for line in text.splitlines():
        if line.strip() == "::":
            continue
        if line.rstrip().endswith("::"):
            line = line.rstrip()[:-2].rstrip() + ":"
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = _ROLE.sub(_role_text, text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    text = _SINGLE.sub(lambda m: m.group(1), text)
    return text.strip("\n")


class HelpFormatter(argparse.HelpFormatter):
    """Prose paragraphs wrapped, indented blocks kept verbatim, markup rendered as text."""

    def __init__(self, prog: str, **kw: Any) -> None:
        kw.setdefault("max_help_position", 34)
        super().__init__(prog, **kw)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks: list[str] = []
        for block in re.split(r"\n\s*\n", plain_text(text)):
            lines = block.splitlines()
            if not lines:
                continue
            if all(line.startswith((" ", "\t")) for line in lines if line.strip()):
                blocks.append("\n".join(indent + line for line in lines))
                continue
            items: list[str] = []  # bullet items are wrapped one by one
            for line in lines:
                if re.match(r"\s*([*-]|\d+\.)\s", line) or not items:
                    items.append(line.strip())
                else:
                    items[-1] += " " + line.strip()
            wrapped = []
            for item in items:
                bullet = re.match(r"([*-]|\d+\.)\s+", item)
                sub = " " * len(bullet.group(0)) if bullet else ""
                wrapped.append(textwrap.fill(item, width, initial_indent=indent,
                                             subsequent_indent=indent + sub))
            blocks.append("\n".join(wrapped))
        return "\n\n".join(blocks)

    def _get_help_string(self, action: argparse.Action) -> str:
        return plain_text(action.help or "").replace("\n", " ")


def _algo_in(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a == "--algo" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--algo="):
            return a.split("=", 1)[1]
    return None


class EmrlArgumentParser(argparse.ArgumentParser):
    """The parser class of ``emrl`` and its subcommands (see the module docstring)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)
        self._emrl_args: list[str] = []
        #: option group -> the ``--algo`` value it applies to (set by add_config_args)
        self.algo_groups: dict[Any, str] = {}

    def parse_known_args(self, args=None, namespace=None):  # noqa: D401 - argparse API
        self._emrl_args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def _compact_usage(self) -> None:
        """A short usage line for commands with many options: the required ones, then
        ``[OPTIONS]`` (the full list is in the sections below)."""
        optionals = [a for a in self._actions if a.option_strings and a.help is not argparse.SUPPRESS]
        if self.usage is not None or len(optionals) <= 12:
            return
        parts = ["%(prog)s"]
        for a in self._actions:
            if a.option_strings and a.required:
                metavar = a.metavar or a.dest.upper()
                parts.append(f"{a.option_strings[0]} {metavar}")
            elif not a.option_strings and a.help is not argparse.SUPPRESS:
                parts.append(str(a.metavar or a.dest))
        if self.algo_groups:
            parts.append("[--algo {" + ",".join(dict.fromkeys(self.algo_groups.values())) + "}]")
        parts.append("[OPTIONS]")
        self.usage = " ".join(parts)

    def format_usage(self) -> str:
        self._compact_usage()
        return super().format_usage()

    def format_help(self) -> str:
        self._compact_usage()
        algo = _algo_in(self._emrl_args) if self.algo_groups else None
        known = set(self.algo_groups.values())
        if algo is None or algo not in known:
            return super().format_help()
        groups = self._action_groups
        hidden = sorted({a for a in self.algo_groups.values() if a != algo})
        epilog = self.epilog
        self._action_groups = [g for g in groups if self.algo_groups.get(g, algo) == algo]
        note = (f"Shown: the options that apply to --algo {algo}; the options of "
                f"{', '.join(hidden)} are hidden (run --help without --algo to see all).")
        self.epilog = note + ("\n\n" + epilog if epilog else "")
        try:
            return super().format_help()
        finally:
            self._action_groups = groups
            self.epilog = epilog


__all__ = ["EmrlArgumentParser", "HelpFormatter", "plain_text"]
