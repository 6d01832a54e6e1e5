"""Option plumbing shared by every pairq process: flags first, then ``PAIRQ_*``
environment variables, then an optional TOML file, then the dataclass default.

Each process describes its options once as a frozen dataclass whose fields
carry their rules in ``metadata``:

- ``help``: the ``--help`` text (the default and the env var are appended);
- ``kind``: ``int``, ``float``, ``bool``, ``str`` or ``tuple`` (default: the
  default value's type);
- ``choices``: the allowed values; ``min`` / ``max``: an inclusive range;
- ``check``: a function that raises ``ValueError(reason)`` for a bad value
  (for a tuple: called on each item);
- ``metavar``, ``group`` (an ``--help`` section, listed after the others),
  ``internal`` (no flag);
- ``env``: other environment variable names read after ``PREFIX_FIELD``, in
  order (the console's ``lookup`` also reads ``PAIRQ_LOOKUP``, as it always did);
- ``secret``: the value (a token) is never printed: :func:`to_toml` and the
  error messages show ``'***'`` instead.

The rules (validation):

- Every value, whatever its source, goes through :func:`parse_value`: text
  (flags, env vars) is parsed to the field's kind; TOML values must already
  have it (an int for an int, a float or an int for a float, a string for a
  string, a list of strings or one comma-separated string for a tuple). A
  bool is true/false/1/0/yes/no/on/off in any case (TOML: a bool too);
  anything else is refused. Then the choices, the range and the check apply.
- A refused value is reported with its source: ``--sync='Always': ...``,
  ``PAIRQ_SYNC='Always': ...``, ``FILE: sync = 'sometimes': ...``. Every bad
  value is reported, not only the first (:class:`OptionsError` lists them).
- A TOML key that is no option is refused, as is a TOML table.
- Rules that relate several fields live in the dataclass's ``validate()``,
  which also re-checks every field (:func:`check_fields`), so a dataclass built
  in Python is held to the same rules as one read from the command line.

Library code raises ``ValueError`` (:class:`OptionsError`), never argparse
errors. The flags are made from the same dataclass by ``pairq.cli._flags``,
which hands argparse's plain strings to :func:`resolve`, so flags take the same
path as every other source.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import argparse

__all__ = [
    "BOOL_WORDS",
    "OptionsError",
    "check_fields",
    "default_value",
    "env_name",
    "env_names",
    "env_prefix",
    "example_toml",
    "field_kind",
    "flag_name",
    "hostport",
    "option_fields",
    "optional_hostport",
    "parse_hostport",
    "parse_value",
    "resolve",
    "resolve_with_sources",
    "to_toml",
]

T = TypeVar("T")

BOOL_WORDS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}
"""The accepted spellings of a bool (any case)."""


class OptionsError(ValueError):
    """One or more option values are refused; ``errors`` has one line per value."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_prefix(cls: type[Any]) -> str:
    """``PAIRQ_`` for the broker; another process's options set ``ENV_PREFIX`` (the
    lookup: ``PAIRQ_LOOKUP_``) so one shared environment cannot hand a lookup the
    broker's ``PAIRQ_ADDRESS``."""
    return str(getattr(cls, "ENV_PREFIX", "PAIRQ_"))


def env_name(field: str, prefix: str = "PAIRQ_") -> str:
    return prefix + field.upper()


def env_names(f: dataclasses.Field[Any], prefix: str = "PAIRQ_") -> list[str]:
    """The environment variables field ``f`` reads, the first one found wins:
    ``PREFIX_FIELD``, then the field's ``env`` aliases."""
    return [env_name(f.name, prefix), *f.metadata.get("env", ())]


def _shown(f: dataclasses.Field[Any], value: Any) -> str:
    """``repr(value)``, or ``'***'`` for a set secret."""
    return "'***'" if f.metadata.get("secret") and value else repr(value)


def option_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """The fields in ``--help`` order: ungrouped ones first, then each group."""
    fields = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    groups: list[str] = []
    for f in fields:
        g = f.metadata.get("group")
        if g and g not in groups:
            groups.append(g)
    return [f for f in fields if not f.metadata.get("group")] + [
        f for g in groups for f in fields if f.metadata.get("group") == g
    ]


def default_value(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def field_kind(f: dataclasses.Field[Any]) -> str:
    default = default_value(f)
    kind = f.metadata.get("kind", type(default).__name__ if default is not None else "str")
    return "tuple" if kind == "list" else str(kind)


def _parse(kind: str, raw: Any, text: bool) -> Any:
    """``raw`` as ``kind``; ``text``: it came as a string (flag, env var)."""
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in BOOL_WORDS:
            return BOOL_WORDS[raw.strip().lower()]
        raise ValueError("must be a bool: one of " + ", ".join(BOOL_WORDS))
    if kind == "tuple":
        if isinstance(raw, str):
            return tuple(v.strip() for v in raw.split(",") if v.strip())
        if isinstance(raw, list | tuple) and all(isinstance(v, str) for v in raw):
            return tuple(raw)
        raise ValueError("must be a list of strings")
    if kind == "int":
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if text and isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise ValueError("must be an integer")
    if kind == "float":
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if text and isinstance(raw, str):
            try:
                return float(raw.strip())
            except ValueError:
                pass
        raise ValueError("must be a number")
    if isinstance(raw, str):
        return raw
    raise ValueError("must be a string")


def _check(f: dataclasses.Field[Any], value: Any) -> None:
    """The field's choices, range and check on an already typed ``value``."""
    items = value if isinstance(value, tuple) else (value,)
    choices = f.metadata.get("choices")
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    check: Callable[[Any], object] | None = f.metadata.get("check")
    for v in items:
        if choices is not None and v not in choices:
            raise ValueError("must be one of " + ", ".join(str(c) for c in choices))
        if lo is not None and v < lo:
            raise ValueError(f"must be >= {lo}")
        if hi is not None and v > hi:
            raise ValueError(f"must be <= {hi}")
        if check is not None:
            check(v)


def parse_value(f: dataclasses.Field[Any], raw: Any, *, text: bool) -> Any:
    """Parse and check one value of field ``f``; ``ValueError(reason)`` if refused."""
    value = _parse(field_kind(f), raw, text)
    _check(f, value)
    return value


def check_fields(obj: Any) -> None:
    """Check every field of the dataclass ``obj`` against its rules (the values it
    holds, named by their flags); raise :class:`OptionsError` listing every bad one."""
    errors = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        try:
            parse_value(f, value, text=False)
        except ValueError as exc:
            errors.append(f"{flag_name(f.name)}={_shown(f, value)}: {exc}")
    if errors:
        raise OptionsError(errors)


def _read_file(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise OptionsError([f"{path}: not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise OptionsError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    return {k.replace("-", "_"): v for k, v in raw.items()}


def resolve_with_sources(
    cls: type[T], args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
) -> tuple[T, dict[str, str]]:
    """Build ``cls`` from flags, then env, then the TOML file, then defaults.

    Returns the options and, for every value not left at its default, where it
    came from (``--flag``, ``PAIRQ_NAME`` (or an ``env`` alias) or the file's path). Raises
    :class:`OptionsError` naming every refused value and its source.
    """
    env = dict(os.environ) if env is None else env
    prefix = env_prefix(cls)
    file_values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) if args is not None else None
    config_path = config_path or env.get(prefix + "CONFIG")
    errors: list[str] = []
    if config_path:
        file_values = _read_file(config_path)
        known = {f.name for f in option_fields(cls)}
        unknown = sorted(set(file_values) - known)
        if unknown:
            errors.append(f"{config_path}: unknown option(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in option_fields(cls):
        flag = getattr(args, f.name, None) if args is not None else None
        ename = next((n for n in env_names(f, prefix) if n in env), None)
        if flag is not None:
            raw: Any = flag
            if isinstance(flag, list):  # a repeatable flag: each item is one value
                raw = tuple(flag)
            where, text = flag_name(f.name), True
            shown = f"{flag_name(f.name)}={_shown(f, raw)}"
        elif ename is not None:
            raw, where, text = env[ename], ename, True
            shown = f"{ename}={_shown(f, raw)}"
        elif f.name in file_values:
            raw, where, text = file_values[f.name], str(config_path), False
            shown = f"{config_path}: {f.name} = {_shown(f, raw)}"
        else:
            continue
        try:
            kwargs[f.name] = parse_value(f, raw, text=text)
            sources[f.name] = where
        except ValueError as exc:
            errors.append(f"{shown}: {exc}")
    if errors:
        raise OptionsError(errors)
    return cls(**kwargs), sources


def resolve(
    cls: type[T], args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
) -> T:
    """Build ``cls`` from flags, then env, then TOML file, then defaults (see
    :func:`resolve_with_sources`)."""
    return resolve_with_sources(cls, args, env)[0]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def to_toml(obj: Any, sources: Mapping[str, str] | None = None) -> str:
    """``obj``'s options as TOML lines (``key = value``), each value not at its
    default followed by ``# from SOURCE``; readable back by :func:`resolve`.
    A set secret is a comment (``# token = '***'``), so it is neither shown nor
    read back."""
    lines = []
    for f in option_fields(type(obj)):
        value = getattr(obj, f.name)
        if f.metadata.get("secret") and value:
            line = f"# {f.name} = '***' (set, not shown)"
        else:
            line = f"{f.name} = {_toml_value(value)}"
        if sources and f.name in sources:
            line += f"  # from {sources[f.name]}"
        lines.append(line)
    return "\n".join(lines)


def example_toml(cls: type[Any], title: str) -> str:
    """A commented example config for ``cls``: every option's help and its
    default as a commented ``key = value`` line, after a header naming ``title``
    (``pairq broker``) and its env prefix. ``deploy/*.example.toml`` are this."""
    prefix = env_prefix(cls)
    lines = [
        f"# {title} configuration (TOML). Every key is also a flag (--key-name) and an",
        f"# environment variable ({prefix}KEY_NAME); precedence: flag > env > this file > default.",
        "# Values shown are the defaults.",
        "",
    ]
    for f in option_fields(cls):
        v: Any = default_value(f)
        if isinstance(v, tuple):
            shown: Any = "[" + ", ".join(f'"{x}"' for x in v) + "]"
        elif isinstance(v, str):
            shown = f'"{v}"'
        elif isinstance(v, bool):
            shown = str(v).lower()
        else:
            shown = v
        lines += [f"# {f.metadata['help']}", f"# {f.name} = {shown}", ""]
    return "\n".join(lines)


def hostport(value: str) -> None:
    """A ``check`` rule: ``value`` is HOST:PORT."""
    parse_hostport(value, what="")


def optional_hostport(value: str) -> None:
    """A ``check`` rule: ``value`` is empty (off) or HOST:PORT."""
    if value:
        parse_hostport(value, what="")


def parse_hostport(value: str, *, what: str = "address") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"{what} {value[:80]!r} must be HOST:PORT" if what else "must be HOST:PORT"
        )
    return host.strip("[]") or "0.0.0.0", int(port)
