"""The error table in proto/pairq/v1/broker.proto says what the code does (issue 17).

A client author reads the table; the broker follows pairq/errors.py and the calls
in pairq/broker. This test reads both (the table as text, the code as its mapping
and, with ``ast``, the calls that send errors on a Subscribe stream), so that
neither can change without the other:

* every ErrorCode has one row, whose gRPC status is ``errors._GRPC_CODE``'s;
* a row is starred exactly when a limit refusal (``limit_exceeded``) sends that
  reason with RESOURCE_EXHAUSTED instead of its own status;
* "SubscribeError frame" rows are the codes passed to ``send_error``, "ends it"
  rows the codes passed to ``terminate`` / ``disconnect`` (``terminate``'s default
  when none is), "-" rows neither; SubscribeError's comment lists the same codes;
* every ErrorInfo ``limit`` name the broker sends is a BrokerLimits field.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grpc

from pairq import errors
from pairq.broker import subscriber
from pairq.v1 import broker_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "pairq" / "v1" / "broker.proto"
# The code behind the gRPC Subscribe stream (pairq/broker/nsq/ speaks NSQ's protocol,
# whose errors are NSQ's, not this table's).
BROKER_SOURCES = [p for p in (ROOT / "pairq" / "broker").rglob("*.py") if "nsq" not in p.parts]
ROW = re.compile(r"^// ([A-Z_]+) +([A-Z_]+)( \*)? {2,}(.+)$")
PREFIX = "ERROR_CODE_"


def table() -> dict[str, tuple[str, bool, str]]:
    """ErrorCode name -> (gRPC status, starred, Subscribe column), from the proto."""
    lines = PROTO.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("// ErrorCode  "))
    assert lines[start + 1].startswith("// ----")
    rows: dict[str, tuple[str, bool, str]] = {}
    for line in lines[start + 2 :]:
        m = ROW.match(line)
        if m is None:
            break
        name = PREFIX + m.group(1)
        assert name not in rows, f"{name} has two rows"
        rows[name] = (m.group(2), bool(m.group(3)), m.group(4).strip())
    return rows


def _code_name(node: ast.expr) -> str | None:
    """``pb.ERROR_CODE_X`` / ``broker_pb2.ERROR_CODE_X`` -> its name."""
    if isinstance(node, ast.Attribute) and node.attr.startswith(PREFIX):
        return node.attr
    return None


def calls(method: str) -> list[ast.Call]:
    """Every call of ``<something>.method(...)`` or ``method(...)`` in the broker."""
    out = []
    for path in BROKER_SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name == method:
                out.append(node)
    return out


def code_arg(call: ast.Call, position: int, default: str | None) -> str | None:
    """The ErrorCode passed as positional ``position`` or as ``code=``."""
    for kw in call.keywords:
        if kw.arg == "code":
            return _code_name(kw.value)
    if len(call.args) > position:
        return _code_name(call.args[position])
    return default


def _terminate_default() -> str:
    default = subscriber.Subscriber.terminate.__defaults__
    assert default is not None
    return str(pb.ErrorCode.Name(default[0]))


def test_every_error_code_has_one_row_with_its_grpc_status() -> None:
    rows = table()
    codes = [n for n in pb.ErrorCode.keys() if n != "ERROR_CODE_UNSPECIFIED"]
    assert sorted(rows) == sorted(codes)
    for name, (status, _star, _sub) in rows.items():
        want = errors._GRPC_CODE[pb.ErrorCode.Value(name)]
        assert status == want.name, f"{name}: the table says {status}, the code {want.name}"


def test_starred_rows_are_the_reasons_limit_refusals_send_with_another_status() -> None:
    sent = {code_arg(c, 3, "ERROR_CODE_TOO_MANY") for c in calls("limit_exceeded")}
    assert None not in sent
    overridden = {
        n
        for n in sent
        if n is not None
        and errors._GRPC_CODE[pb.ErrorCode.Value(n)] != grpc.StatusCode.RESOURCE_EXHAUSTED
    }
    starred = {n for n, (_s, star, _sub) in table().items() if star}
    assert starred == overridden
    assert overridden  # BAD_MESSAGE and BAD_BATCH: the check reads something


def test_subscribe_column_matches_what_ends_the_stream_and_what_does_not() -> None:
    frames = {code_arg(c, 0, None) for c in calls("send_error")}
    ends = {code_arg(c, 1, _terminate_default()) for c in calls("terminate")}
    ends |= {code_arg(c, 1, None) for c in calls("disconnect") if c.args}
    ends.discard(None)
    frames.discard(None)
    assert frames and ends
    rows = table()
    said_frames = {
        n for n, (_s, _st, sub) in rows.items() if sub.startswith("SubscribeError frame")
    }
    said_ends = {n for n, (_s, _st, sub) in rows.items() if sub.startswith("ends it")}
    said_never = {n for n, (_s, _st, sub) in rows.items() if sub == "-"}
    assert said_frames == frames
    assert said_ends == ends
    assert said_never == set(rows) - frames - ends
    # SubscribeError's own comment lists the same codes.
    text = PROTO.read_text()
    listed = re.search(r"Codes sent this way:((?:\s*//)?[A-Z_, \n/]+)\.", text)
    assert listed is not None
    names = {PREFIX + w for w in re.findall(r"[A-Z_]{3,}", listed.group(1))}
    assert names == frames


def test_limit_names_in_error_info_are_broker_limits_fields() -> None:
    fields = {f.name for f in pb.BrokerLimits.DESCRIPTOR.fields}
    names = set()
    for c in calls("limit_exceeded"):
        assert isinstance(c.args[0], ast.Constant), ast.unparse(c)
        names.add(c.args[0].value)
    for c in calls("PairqError"):
        for kw in c.keywords:
            if kw.arg == "limit":
                if isinstance(kw.value, ast.Name) and kw.value.id == "name":
                    continue  # limit_exceeded's own body: its callers are read above
                assert isinstance(kw.value, ast.Constant), ast.unparse(c)
                names.add(kw.value.value)
    assert "max_msg_timeout_ms" in names and "max_batch_bytes" in names
    assert names <= fields, names - fields
    # The header lists the limits refused with RESOURCE_EXHAUSTED: every
    # limit_exceeded name but max_rdy_total (only its message is used, in a
    # SubscribeError frame, which has no metadata).
    text = " ".join(line.lstrip("/ ") for line in PROTO.read_text().splitlines())
    m = re.search(r"a size, count or rate limit: ([a-z_, ]+)\)", text)
    assert m is not None
    listed = {w.strip() for w in m.group(1).split(",")}
    exceeded = {c.args[0].value for c in calls("limit_exceeded")}  # type: ignore[attr-defined]
    assert listed == exceeded - {"max_rdy_total"}
