"""pairq errors: stable codes on the wire, exceptions with structured fields in Python.

The broker reports failures as gRPC statuses whose details carry a
``google.rpc.ErrorInfo`` (domain ``pairq.dev``, reason = an ``ErrorCode``
name). ``PairqError.from_rpc_error`` maps them back to exception classes on
the client side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from pairq.v1 import broker_pb2

DOMAIN = "pairq.dev"

# Echoed input is cut to this many characters; a status message and each ErrorInfo
# metadata value to these (gRPC refuses trailers beyond its metadata limit, ~8 KiB,
# and the message travels twice: grpc-message and the base64 status details).
ECHO_CHARS = 80
MAX_MESSAGE_CHARS = 1024
MAX_METADATA_CHARS = 256

# ErrorCode name -> the gRPC status code used for it.
_GRPC_CODE: dict[int, grpc.StatusCode] = {
    broker_pb2.ERROR_CODE_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    broker_pb2.ERROR_CODE_BAD_TOPIC: grpc.StatusCode.INVALID_ARGUMENT,
    broker_pb2.ERROR_CODE_BAD_CHANNEL: grpc.StatusCode.INVALID_ARGUMENT,
    broker_pb2.ERROR_CODE_BAD_MESSAGE: grpc.StatusCode.INVALID_ARGUMENT,
    broker_pb2.ERROR_CODE_BAD_BATCH: grpc.StatusCode.INVALID_ARGUMENT,
    broker_pb2.ERROR_CODE_BAD_RDY: grpc.StatusCode.INVALID_ARGUMENT,
    broker_pb2.ERROR_CODE_FIN_FAILED: grpc.StatusCode.FAILED_PRECONDITION,
    broker_pb2.ERROR_CODE_REQ_FAILED: grpc.StatusCode.FAILED_PRECONDITION,
    broker_pb2.ERROR_CODE_TOUCH_FAILED: grpc.StatusCode.FAILED_PRECONDITION,
    broker_pb2.ERROR_CODE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    broker_pb2.ERROR_CODE_STORE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    broker_pb2.ERROR_CODE_TOO_MANY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    broker_pb2.ERROR_CODE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    broker_pb2.ERROR_CODE_NOT_IDENTIFIED: grpc.StatusCode.FAILED_PRECONDITION,
    broker_pb2.ERROR_CODE_HEARTBEAT_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    broker_pb2.ERROR_CODE_DELETED: grpc.StatusCode.NOT_FOUND,
    broker_pb2.ERROR_CODE_PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}


class PairqError(Exception):
    """Base class: ``code`` is an ``ErrorCode`` value, ``grpc_code`` the status."""

    code: int = broker_pb2.ERROR_CODE_UNSPECIFIED
    # The gRPC status when it is not the one of ``code`` (a limit exceeded by an
    # otherwise valid request: RESOURCE_EXHAUSTED, with the reason the client maps).
    status_override: grpc.StatusCode | None = None

    def __init__(self, message: str, *, code: int | None = None, **fields: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.fields = fields

    @property
    def reason(self) -> str:
        return str(broker_pb2.ErrorCode.Name(self.code))

    @property
    def grpc_code(self) -> grpc.StatusCode:
        if self.status_override is not None:
            return self.status_override
        return _GRPC_CODE.get(self.code, grpc.StatusCode.UNKNOWN)

    def metadata(self) -> dict[str, str]:
        """``fields`` as wire metadata (ErrorInfo's, or a PublishError's): strings, each
        key and value cut to a bounded length."""
        return {k[:64]: clip(str(v), MAX_METADATA_CHARS) for k, v in self.fields.items()}

    def to_status(self) -> grpc.Status:
        """A grpc.Status with ErrorInfo details, for ``context.abort_with_status``.

        The message and every metadata value are cut to a bounded length, so a
        status always fits in gRPC's trailers whatever input it repeats."""
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=DOMAIN, metadata=self.metadata()
        )
        detail = status_pb2.Status()
        detail.code = self.grpc_code.value[0]
        detail.message = clip(self.message, MAX_MESSAGE_CHARS)
        packed = detail.details.add()
        packed.Pack(info)
        return rpc_status.to_status(detail)

    async def abort(self, context: Any) -> None:
        """End the RPC served by ``context`` with this error's status (raises AbortError)."""
        status = self.to_status()
        await context.abort(status.code, status.details, status.trailing_metadata)

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> PairqError:
        """Map a gRPC error (from a pairq broker or a transport failure) to an exception."""
        code: int = broker_pb2.ERROR_CODE_UNSPECIFIED
        message = ""
        fields: dict[str, str] = {}
        try:
            message = err.details() or ""
            st = rpc_status.from_call(err)
            if st is not None:
                for d in st.details:
                    info = error_details_pb2.ErrorInfo()
                    if d.Unpack(info) and info.domain == DOMAIN:
                        code = int(broker_pb2.ErrorCode.Value(info.reason))
                        fields = dict(info.metadata)
        except Exception:
            pass
        if code == broker_pb2.ERROR_CODE_UNSPECIFIED:
            status = err.code() if hasattr(err, "code") else None
            if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return UnavailableError(message or str(status))
            if status == grpc.StatusCode.RESOURCE_EXHAUSTED and "full" in message:
                return StoreFullError(message)
            return PairqError(message or str(status))
        return cls.from_code(code, message, fields)

    @classmethod
    def from_code(
        cls, code: int, message: str, metadata: Mapping[str, str] | None = None
    ) -> PairqError:
        """The exception for an ``ErrorCode`` value (e.g. from a ``PublishError``), with
        the error's metadata (ErrorInfo's, or PublishError's) as its ``fields``."""
        klass = _CLASS_BY_CODE.get(code, PairqError)
        fields = {k: v for k, v in (metadata or {}).items() if k != "code"}
        return klass(message, code=code, **fields)


class InvalidError(PairqError):
    """Bad input (names, sizes, RDY); do not retry unchanged."""

    code = broker_pb2.ERROR_CODE_INVALID


class NotFoundError(PairqError):
    code = broker_pb2.ERROR_CODE_NOT_FOUND


class StoreCorruptError(OSError):
    """LMDB found its own structure corrupt (a bad page or meta page): the broker will
    not serve from that store. The message names the file and the recovery steps."""


class StoreFullError(PairqError):
    """The broker's store is full; publishes are refused until space is freed."""

    code = broker_pb2.ERROR_CODE_STORE_FULL


class LimitExceededError(PairqError):
    """A limit of the broker was reached (``ERROR_CODE_TOO_MANY``: the publish rate,
    --max-clients, --max-rdy-total, ...): the ErrorInfo metadata names it
    (``limit``, ``max``). Not a full store; back off or raise the limit."""

    code = broker_pb2.ERROR_CODE_TOO_MANY


class UnavailableError(PairqError):
    """The broker cannot take this now (shutting down, unreachable, too few copies)."""

    code = broker_pb2.ERROR_CODE_UNAVAILABLE


class NotInFlightError(PairqError):
    """FIN/REQ/TOUCH of a message that is not in flight on this subscription."""

    code = broker_pb2.ERROR_CODE_FIN_FAILED


_CLASS_BY_CODE: dict[int, type[PairqError]] = {
    broker_pb2.ERROR_CODE_INVALID: InvalidError,
    broker_pb2.ERROR_CODE_BAD_TOPIC: InvalidError,
    broker_pb2.ERROR_CODE_BAD_CHANNEL: InvalidError,
    broker_pb2.ERROR_CODE_BAD_MESSAGE: InvalidError,
    broker_pb2.ERROR_CODE_BAD_BATCH: InvalidError,
    broker_pb2.ERROR_CODE_BAD_RDY: InvalidError,
    broker_pb2.ERROR_CODE_NOT_FOUND: NotFoundError,
    broker_pb2.ERROR_CODE_DELETED: NotFoundError,
    broker_pb2.ERROR_CODE_STORE_FULL: StoreFullError,
    broker_pb2.ERROR_CODE_TOO_MANY: LimitExceededError,
    broker_pb2.ERROR_CODE_UNAVAILABLE: UnavailableError,
    broker_pb2.ERROR_CODE_FIN_FAILED: NotInFlightError,
    broker_pb2.ERROR_CODE_REQ_FAILED: NotInFlightError,
    broker_pb2.ERROR_CODE_TOUCH_FAILED: NotInFlightError,
}

RETRYABLE = (UnavailableError,)

_log = logging.getLogger("pairq.rpc")


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    note = f"... ({len(text)} chars)"
    return text[: max(0, limit - len(note))] + note


def echo(value: str | bytes) -> str:
    """A client-supplied value as error messages repeat it: ``repr`` of a short prefix,
    with its full length when cut (a 100 kB name must not become a 100 kB status)."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return f"{value[:ECHO_CHARS]!r}... ({len(value)} chars)"


class Undecodable:
    """What a :func:`decoder` hands the handler instead of a request it cannot parse.

    gRPC's own path for a deserializer that raises answers UNKNOWN and logs a
    traceback; with this the handler answers INVALID_ARGUMENT itself (and a
    stream can end with that status instead of OK)."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def error(self) -> InvalidError:
        return InvalidError(self.message)


def decoder(cls: Any) -> Callable[[bytes], Any]:
    """A request deserializer for protobuf class ``cls`` that never raises:
    bytes that do not parse become an :class:`Undecodable`."""
    name = cls.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # DecodeError, or a RecursionError on deep nesting
            return Undecodable(
                f"undecodable request: {len(data)} bytes are not a valid {name} "
                f"({clip(str(exc) or type(exc).__name__, 120)})"
            )

    return decode


def guard_unary(fn: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    """A unary gRPC handler ``fn(request, context)`` that answers an
    :class:`Undecodable` request INVALID_ARGUMENT before ``fn`` sees it."""

    async def handler(request: Any, context: Any) -> Any:
        if isinstance(request, Undecodable):
            await request.error().abort(context)
        return await fn(request, context)

    return handler


async def serve_rpc(context: Any, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run a unary handler body: a PairqError becomes its status, any other
    exception (a bug) is logged and answered INTERNAL, and the server keeps serving."""
    try:
        return await fn()
    except PairqError as exc:
        await exc.abort(context)
    except asyncio.CancelledError:
        raise
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        _log.exception("internal error")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")
