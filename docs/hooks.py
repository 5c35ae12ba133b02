"""MkDocs hook: generate ``reference/cli.md`` from the ``emrl`` argument parser and the
config dataclasses (every option, its type, default and help), so the page can never
fall behind the code."""

from __future__ import annotations

import argparse
import dataclasses
import html
import sys
import typing
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def _cell(text: object) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _code(value: object) -> str:
    return "`" + repr(value).replace("|", "\\|") + "`"


def _type_name(tp: object) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        inner = [a for a in args if a is not type(None)]
        return " | ".join(_type_name(a) for a in inner) + (" | None" if len(inner) < len(args) else "")
    if origin in (list, tuple):
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict or tp is dict:
        return "dict"
    return getattr(tp, "__name__", str(tp))


def _config_classes() -> dict[tuple[str, ...], type]:
    from emrl.control.config import ControlConfig
    from emrl.lm.train_config import RLConfig, SFTConfig

    return {("lm", "sft"): SFTConfig, ("lm", "train"): RLConfig, ("control", "train"): ControlConfig}


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaf_parsers(sub, path + (name,))


def _defaults(cls: type) -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def cli_reference_markdown() -> str:
    """The Markdown of the command-line reference page."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from emrl.cli import build_parser

    parser = build_parser()
    classes = _config_classes()
    lines = [
        "# Command line",
        "",
        "Generated from the `emrl` argument parser and the config dataclasses when the site is "
        "built: every option of every command, with its type, default and help. Options of a "
        "config field also go into a `--config FILE.yaml` (the field name as key); values "
        "resolve as field default < YAML file < command line, and the run writes the resolved "
        "`config.yaml`. List-valued fields take comma-separated values (`--report-to wandb,trackio`); "
        "booleans take `--flag` / `--no-flag`.",
        "",
        "The Python config classes (`emrl.SFTConfig`, `emrl.VMPOConfig`, `emrl.AWRConfig`, "
        "`emrl.DARConfig`, `emrl.PPOConfig`) have the fields of `emrl lm sft` / `emrl lm train` "
        "below (with `algo` fixed by the class) plus `output_dir` and `overwrite_output_dir`; "
        "`emrl.control.VMPO` / `PPO` take the fields of `emrl control train` as keywords.",
        "",
    ]
    for path, sub in _leaf_parsers(parser):
        cls = classes.get(path)
        hints = typing.get_type_hints(cls) if cls is not None else {}
        defaults = _defaults(cls) if cls is not None else {}
        lines += [f"## `emrl {' '.join(path)}`", ""]
        if sub.description:
            lines += [sub.description, ""]
        if cls is not None:
            lines += [f"Config dataclass: `{cls.__module__}.{cls.__name__}`.", ""]
        lines += ["| option | type | default | description |", "| --- | --- | --- | --- |"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            opts = ", ".join(f"`{o}`" for o in action.option_strings if o != f"--no-{action.dest.replace('_', '-')}")
            if action.dest in hints:
                tp = _type_name(hints[action.dest])
                default = _code(defaults.get(action.dest))
                help_text = (action.help or "").rsplit(" (default: ", 1)[0]
                if action.choices:
                    help_text += f" (one of {', '.join(map(str, action.choices))})"
            else:
                tp = "flag" if action.nargs == 0 else (getattr(action.type, "__name__", None) or "str")
                default = "" if action.default in (None, False, argparse.SUPPRESS) else _code(action.default)
                help_text = action.help or ""
                if action.required:
                    help_text += " (required)"
                if action.choices:
                    help_text += f" (one of {', '.join(map(str, action.choices))})"
            lines.append(f"| {opts} | {_cell(tp)} | {default} | {_cell(help_text)} |")
        lines.append("")
    return "\n".join(lines)


def on_files(files, config):  # noqa: ANN001 - the MkDocs hook signature
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference/cli.md", content=cli_reference_markdown()))
    return files
