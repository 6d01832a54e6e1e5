"""Topic and channel names: NSQ's rules (``^[.a-zA-Z0-9_-]{1,64}$``, optional ``#ephemeral``)."""

from __future__ import annotations

import re

from pairq.errors import InvalidError, echo
from pairq.v1 import broker_pb2

EPHEMERAL_SUFFIX = "#ephemeral"
_NAME = re.compile(r"^[.a-zA-Z0-9_-]{1,64}(#ephemeral)?$")


def is_valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def is_ephemeral(name: str) -> bool:
    return name.endswith(EPHEMERAL_SUFFIX)


def check_topic(name: str) -> str:
    if not is_valid_name(name):
        raise InvalidError(
            f"invalid topic name {echo(name)}: use 1-64 characters from [.a-zA-Z0-9_-], "
            "optionally followed by '#ephemeral'",
            code=broker_pb2.ERROR_CODE_BAD_TOPIC,
        )
    return name


def check_channel(name: str) -> str:
    if not is_valid_name(name):
        raise InvalidError(
            f"invalid channel name {echo(name)}: use 1-64 characters from [.a-zA-Z0-9_-], "
            "optionally followed by '#ephemeral'",
            code=broker_pb2.ERROR_CODE_BAD_CHANNEL,
        )
    return name
