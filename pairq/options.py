"""Option plumbing shared by every pairq process: flags first, then ``PAIRQ_*``
environment variables, then an optional TOML file, then the dataclass default.

Each process describes its options once as a frozen dataclass whose fields
carry ``metadata={"help": ...}``; ``add_flags`` turns that into argparse
flags whose ``--help`` shows every default, and ``resolve`` builds the
dataclass from parsed flags + environment + file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_prefix(cls: type[Any]) -> str:
    """``PAIRQ_`` for the broker; another process's options set ``ENV_PREFIX`` (the
    lookup: ``PAIRQ_LOOKUP_``) so one shared environment cannot hand a lookup the
    broker's ``PAIRQ_ADDRESS``."""
    return str(getattr(cls, "ENV_PREFIX", "PAIRQ_"))


def env_name(field: str, prefix: str = "PAIRQ_") -> str:
    return prefix + field.upper()


def add_flags(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one flag per dataclass field (default None so fallbacks can apply)."""
    prefix = env_prefix(cls)
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"optional TOML file with the same keys as the flags (dashes or underscores; "
        f"env {prefix}CONFIG); precedence: flag > {prefix}* env var > file > default",
    )
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        help_text = f.metadata.get("help", "")
        shown = default if not isinstance(default, tuple) else list(default)
        help_text = f"{help_text} (default: {shown!r}; env {env_name(f.name, prefix)})"
        kind = f.metadata.get("kind", type(default).__name__ if default is not None else "str")
        if kind == "bool":
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        elif kind in ("tuple", "list"):
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                default=None,
                action="append",
                metavar=f.metadata.get("metavar", "VALUE"),
                help=help_text + "; repeatable",
            )
        else:
            conv: Any = {"int": int, "float": float}.get(kind, str)
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                default=None,
                type=conv,
                metavar=f.metadata.get("metavar", kind.upper()),
                help=help_text,
                choices=f.metadata.get("choices"),
            )


def _coerce(value: Any, example: Any, kind: str) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    if kind in ("tuple", "list"):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return tuple(value)
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return str(value)


def resolve(
    cls: type[T], args: argparse.Namespace | None = None, env: dict[str, str] | None = None
) -> T:
    """Build ``cls`` from flags, then env, then TOML file, then defaults."""
    env = dict(os.environ) if env is None else env
    prefix = env_prefix(cls)
    file_values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) if args is not None else None
    config_path = config_path or env.get(prefix + "CONFIG")
    if config_path:
        with Path(config_path).open("rb") as fh:
            raw = tomllib.load(fh)
        file_values = {k.replace("-", "_"): v for k, v in raw.items()}
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(file_values) - known)
        if unknown:
            raise ValueError(f"{config_path}: unknown option(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = f.metadata.get("kind", type(default).__name__ if default is not None else "str")
        value = getattr(args, f.name, None) if args is not None else None
        if value is None and env_name(f.name, prefix) in env:
            value = env[env_name(f.name, prefix)]
        if value is None and f.name in file_values:
            value = file_values[f.name]
        if value is not None:
            kwargs[f.name] = _coerce(value, default, kind)
    return cls(**kwargs)


def parse_hostport(value: str, *, what: str = "address") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{what} {value!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)
