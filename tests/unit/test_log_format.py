"""``--log-format json``: one JSON object per record, for every daemon."""

from __future__ import annotations

import json
import logging

from pairq.broker.options import BrokerOptions
from pairq.cli._daemon import JsonFormatter
from pairq.lookup.options import LookupOptions


def test_json_records_carry_time_level_logger_message_and_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord(
            "pairq.broker", logging.ERROR, __file__, 1, "x=%d", (3,), sys.exc_info()
        )
    out = json.loads(JsonFormatter().format(rec))
    assert out["level"] == "error" and out["logger"] == "pairq.broker" and out["message"] == "x=3"
    assert out["time"].endswith("+00:00") and "ValueError: boom" in out["exception"]


def test_every_daemon_takes_log_format() -> None:
    assert BrokerOptions().log_format == "text" and LookupOptions().log_format == "text"
