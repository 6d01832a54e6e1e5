"""Command-line flags made from an options dataclass (``BrokerOptions``,
``LookupOptions``, ``AdminOptions``): one flag per field, ``--help`` showing every default, its
choices and its env var, and ``--config FILE``.

The flags carry plain strings (no argparse ``type`` or ``choices``): their
values are parsed and checked by :func:`pairq.options.resolve`, by the same
rules as ``PAIRQ_*`` variables and TOML values, and a bad one is reported with
its flag.
"""

from __future__ import annotations

import argparse
from typing import Any

from pairq.options import default_value, env_names, env_prefix, field_kind, flag_name, option_fields

__all__ = ["add_flags"]


def add_flags(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add ``--config`` and one flag per dataclass field.

    Flags default to None so the fallbacks can apply, and reach
    :func:`resolve` as strings: their values are checked there, by the same
    rules as env and file values.
    """
    prefix = env_prefix(cls)
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"optional TOML file with the same keys as the flags (dashes or underscores; "
        f"env {prefix}CONFIG); precedence: flag > {prefix}* env var > file > default",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in option_fields(cls):
        group = f.metadata.get("group")
        target: Any = parser
        if group:
            target = groups.get(group) or groups.setdefault(group, parser.add_argument_group(group))
        default = default_value(f)
        shown = default if not isinstance(default, tuple) else list(default)
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        envs = " or ".join(env_names(f, prefix))
        help_text = f"{help_text} (default: {shown!r}; env {envs})"
        kind = field_kind(f)
        if kind == "bool":
            target.add_argument(
                flag_name(f.name),
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        elif kind == "tuple":
            target.add_argument(
                flag_name(f.name),
                dest=f.name,
                default=None,
                action="append",
                metavar=f.metadata.get("metavar", "VALUE"),
                help=help_text + "; repeatable",
            )
        else:
            target.add_argument(
                flag_name(f.name),
                dest=f.name,
                default=None,
                metavar=f.metadata.get(
                    "metavar", "|".join(str(c) for c in choices) if choices else kind.upper()
                ),
                help=help_text,
            )
