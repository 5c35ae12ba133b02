"""Configs: one dataclass per trainer, YAML files and command-line overrides.

Every field of a config dataclass carries a help string (``cfg_field(default, "help")``).
:func:`add_config_args` turns the fields into ``--field-name`` options and adds
``--config FILE.yaml``; :func:`build_config` resolves, in increasing priority,
dataclass defaults < YAML file < command-line options, and rejects unknown keys with
close-match suggestions. A run writes the resolved config with :func:`save_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
import warnings
from pathlib import Path
from typing import Any, TypeVar

import yaml

from emrl.errors import ConfigError, close_matches

T = TypeVar("T")

#: (config class name, old field name) pairs already warned about (once per process)
_WARNED_ALIASES: set[tuple[str, str]] = set()


def warn_alias(cls: type, old: str, new: str, source: str = "config") -> None:
    """Warn (a ``FutureWarning``, once per class and name per process) that ``old`` is the
    deprecated name of the config field ``new``."""
    key = (cls.__name__, old)
    if key in _WARNED_ALIASES:
        return
    _WARNED_ALIASES.add(key)
    warnings.warn(f"{cls.__name__}: config field {old!r} (in {source}) is a deprecated name of "
                  f"{new!r}; use {new!r}", FutureWarning, stacklevel=3)


def field_aliases(cls: type) -> dict[str, str]:
    """``{old name: field name}`` of the config dataclass ``cls`` (``cfg_field(aliases=...)``)."""
    return {a: f.name for f in dataclasses.fields(cls) for a in f.metadata.get("aliases", ())}


def with_aliases(cls: type[T]) -> type[T]:
    """Class decorator (above ``@dataclass``) that makes the old names of renamed fields
    (``cfg_field(..., aliases=("old",))``) work in Python as well: ``Cls(old=1)`` and
    ``cfg.old`` (read and write) reach the renamed field and warn once. YAML files and
    command-line options accept the old names through :func:`from_dict` /
    :func:`add_config_args` for every config class, decorated or not."""
    aliases = field_aliases(cls)
    init = cls.__init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if any(k in aliases for k in kwargs):
            kwargs = apply_aliases(cls, kwargs, source="keyword arguments")
        init(self, *args, **kwargs)

    __init__.__doc__, __init__.__wrapped__ = init.__doc__, init  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]
    for old, new in aliases.items():
        def get(self: Any, _old: str = old, _new: str = new) -> Any:
            warn_alias(type(self), _old, _new, "attribute access")
            return getattr(self, _new)

        def put(self: Any, value: Any, _old: str = old, _new: str = new) -> None:
            warn_alias(type(self), _old, _new, "attribute access")
            setattr(self, _new, value)

        setattr(cls, old, property(get, put, doc=f"deprecated name of :attr:`{new}`"))
    return cls


def cfg_field(default: Any, help: str, *, group: str | None = None,
              aliases: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """A dataclass field with a help string (mutable defaults are copied per instance).

    ``group``: the tag of the ``--help`` section the option is listed in (titles come from
    the config class's ``HELP_GROUPS``); ``aliases``: older field names still accepted on
    the command line (as hidden ``--old-name`` options) and in YAML files.
    """
    meta = {"help": help, **kwargs}
    if group is not None:
        meta["group"] = group
    if aliases:
        meta["aliases"] = tuple(aliases)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or the command line) to the field type ``tp``."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config field {name!r} may not be null")
    if isinstance(value, str) and optional and value.strip().lower() in ("none", "null"):
        return None
    try:
        origin = typing.get_origin(base)
        if base is bool:
            return value if isinstance(value, bool) else _parse_bool(value)
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            return str(value)
        if origin in (list, tuple):
            (item_tp, *_) = typing.get_args(base) or (str,)
            if isinstance(value, str):
                value = [v for v in (s.strip() for s in value.split(",")) if v]
            items = [_coerce(name, v, item_tp) for v in value]
            return items if origin is list else tuple(items)
        if origin is dict or base is dict:
            if isinstance(value, str):  # from the command line: a JSON (or YAML) mapping
                value = yaml.safe_load(value) if value.strip() else {}
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError, yaml.YAMLError) as e:
        if base is dict or typing.get_origin(base) is dict:
            raise ConfigError(
                f"config field {name!r} expects a mapping, e.g. '{{\"key\": 1}}' (JSON), got {value!r}"
            ) from e
        raise ConfigError(
            f"config field {name!r} expects {getattr(base, '__name__', base)}, got {value!r}"
        ) from e
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _show_default(value: Any) -> str:
    """A default as a user would type it on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) if value else "'' (empty)"
    if isinstance(value, dict):
        return yaml.safe_dump(value, default_flow_style=True).strip() if value else "{}"
    return str(value)


def _parse_mapping(text: str) -> dict:
    try:
        value = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"expected a YAML mapping such as '{{a: 1}}', got {text!r}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping such as '{{a: 1}}', got {text!r}")
    return value


def _value_syntax(fields_: list, hints: dict[str, Any]) -> str:
    """The epilog explaining how to type list, mapping, optional and on/off values."""
    lists = [f.name for f in fields_ if typing.get_origin(_unwrap_optional(hints[f.name])[0]) in (list, tuple)]
    maps = [f.name for f in fields_ if _unwrap_optional(hints[f.name])[0] is dict
            or typing.get_origin(_unwrap_optional(hints[f.name])[0]) is dict]
    parts = []
    if lists:
        flag = "--" + lists[0].replace("_", "-")
        parts.append(f"lists are comma-separated ({flag} a,b; {flag} '' for an empty list)")
    if maps:
        parts.append(f"mappings are YAML (--{maps[0].replace('_', '-')} '{{key: 1, other: 2}}')")
    parts.append("options shown with default none also take 'none'")
    parts.append("on/off options take --name / --no-name")
    example = lists[0] if lists else fields_[0].name if fields_ else "field"
    return ("Value syntax: " + "; ".join(parts) + ". Values resolve as defaults < --config FILE.yaml < "
            f"command-line options; the YAML file uses the field names (e.g. {example}: ...).")


def add_config_args(
    parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = ()
) -> None:
    """Add ``--config`` and one ``--field-name`` option per field of the dataclass ``cls``.

    Options default to ``argparse.SUPPRESS`` so :func:`build_config` can tell which ones
    the user actually typed. Each option's help shows its default and, for fields with
    ``choices``, the choices. Fields tagged ``group=`` go into ``--help`` sections in the
    order and with the titles of ``cls.HELP_GROUPS`` (tag -> title; tag ``"main"`` or no
    tag: the parser's own options section); sections tagged in
    ``cls.HELP_GROUP_ALGOS`` (tag -> ``--algo`` value) are shown alone with ``--algo``
    (:class:`emrl.clihelp.EmrlArgumentParser`).
    """
    if not any(a.dest == "config" for a in parser._actions):
        parser.add_argument(
            "--config", default=None, metavar="FILE.yaml",
            help="YAML file of config fields; command-line options override it",
        )
    hints = _hints(cls)
    titles: dict[str, str] = dict(getattr(cls, "HELP_GROUPS", {}) or {})
    algos: dict[str, str] = dict(getattr(cls, "HELP_GROUP_ALGOS", {}) or {})
    fields_ = [f for f in dataclasses.fields(cls) if f.name not in exclude and f.init]
    used = {f.metadata.get("group") for f in fields_} - {None, "main"}
    groups: dict[str, Any] = {}
    for tag in [*titles, *sorted(used - set(titles))]:
        if tag in used:
            groups[tag] = parser.add_argument_group(titles.get(tag, tag))
            if tag in algos and hasattr(parser, "algo_groups"):
                parser.algo_groups[groups[tag]] = algos[tag]
    for f in fields_:
        tp, _ = _unwrap_optional(hints[f.name])
        default = (
            f.default if f.default is not dataclasses.MISSING
            else f.default_factory() if f.default_factory is not dataclasses.MISSING  # type: ignore[misc]
            else None
        )
        help_text = f.metadata.get("help", "").replace("%", "%%")
        shown = f"default: {_show_default(default)}".replace("%", "%%")
        help_text = f"{help_text} ({shown})" if help_text else shown
        flag = "--" + f.name.replace("_", "-")
        target = groups.get(f.metadata.get("group"), parser)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        choices = f.metadata.get("choices")
        if choices:
            kwargs["choices"] = choices
        origin = typing.get_origin(tp)
        if tp is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            if choices:
                metavar = "{" + ",".join(map(str, choices)) + "}"
            elif origin in (list, tuple):
                (item_tp, *_) = typing.get_args(tp) or (str,)
                metavar = f"{getattr(item_tp, '__name__', 'str').upper()},..."
            elif origin is dict or tp is dict:
                metavar = "YAML"
            else:
                metavar = {int: "N", float: "FLOAT"}.get(tp, f.name.upper())
            kwargs["metavar"] = f.metadata.get("metavar", metavar)
            kind = _parse_mapping if (origin is dict or tp is dict) else str
            target.add_argument(flag, type=kind, **kwargs)
        for alias in f.metadata.get("aliases", ()):  # older names: accepted, not listed
            # dest = the old name: build_config renames it (and warns once)
            alias_kwargs = {**kwargs, "dest": alias, "help": argparse.SUPPRESS}
            if tp is bool:
                alias_kwargs["action"] = argparse.BooleanOptionalAction
            else:
                alias_kwargs["type"] = kind
            target.add_argument("--" + alias.replace("_", "-"), **alias_kwargs)
    if parser.epilog is None:
        parser.epilog = _value_syntax(fields_, hints)


def apply_aliases(cls: type, values: dict[str, Any], *, source: str = "config",
                  warn: bool = True) -> dict[str, Any]:
    """``values`` with keys that are older names of fields (``cfg_field(aliases=...)``)
    renamed to the fields' names (each old name warns once, unless ``warn=False``);
    giving both names is an error."""
    out = dict(values)
    for alias, name in field_aliases(cls).items():
        if alias in out:
            if name in out:
                raise ConfigError(f"{source} gives both {alias!r} (the old name) and {name!r}; keep {name!r}")
            out[name] = out.pop(alias)
            if warn:
                warn_alias(cls, alias, name, source)
    return out


def build_config(cls: type[T], args: argparse.Namespace | None = None, *,
                 base: dict[str, Any] | None = None, **overrides: Any) -> T:
    """Resolve a config: defaults < ``base`` (e.g. a resumed run's saved config) <
    ``args.config`` YAML < options typed in ``args`` < ``overrides``."""
    names = {f.name for f in dataclasses.fields(cls) if f.init} | set(field_aliases(cls))
    values: dict[str, Any] = apply_aliases(cls, dict(base or {}), source="the saved config")
    config_path = getattr(args, "config", None) if args is not None else None
    if config_path:
        values.update(apply_aliases(cls, load_yaml(config_path), source=str(config_path)))
    if args is not None:
        typed = {k: v for k, v in vars(args).items() if k in names}
        values.update(apply_aliases(cls, typed, source="the command line"))
    values.update(apply_aliases(cls, overrides, source="keyword arguments"))
    return from_dict(cls, values, source=str(config_path) if config_path else "config")


def from_dict(cls: type[T], values: dict[str, Any], *, source: str = "config") -> T:
    """Build ``cls`` from a mapping, coercing types and rejecting unknown keys."""
    fields_ = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    values = apply_aliases(cls, values, source=source)
    unknown = [k for k in values if k not in fields_]
    if unknown:
        k = unknown[0]
        sugg = close_matches(k, fields_)
        hint = f" Did you mean: {', '.join(sugg)}?" if sugg else ""
        raise ConfigError(f"unknown field {k!r} in {source} for {cls.__name__}.{hint}")
    kwargs = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
    try:
        cfg = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"invalid {cls.__name__} in {source}: {e}") from e
    check_choices(cfg, source=source)
    return cfg


def check_choices(cfg: Any, *, source: str | None = None) -> None:
    """Raise :class:`ConfigError` if a field with ``choices`` holds another value (the
    check argparse does for command-line options, for YAML files and Python too)."""
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        if not choices:
            continue
        value = getattr(cfg, f.name)
        items = value if isinstance(value, (list, tuple)) else [value]
        for v in items:
            if v is None and _unwrap_optional(_hints(type(cfg))[f.name])[1]:
                continue
            if v not in choices:
                sugg = close_matches(str(v), [str(c) for c in choices])
                hint = f" Did you mean: {', '.join(sugg)}?" if sugg else ""
                where = f" in {source}" if source else ""
                raise ConfigError(f"config field {f.name!r}{where} must be one of "
                                  f"{', '.join(map(str, choices))}; got {v!r}.{hint}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` with clear errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte offset {e.start}); expected YAML") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of field: value, got {type(data).__name__}")
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (tuples become lists)."""
    def clean(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return {k: clean(v) for k, v in data.items()}


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from emrl.checkpoint import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_config(cls: type[T], path: str | Path) -> T:
    """Read a config dataclass written by :func:`save_config`."""
    return from_dict(cls, load_yaml(path), source=str(path))
