"""pairq.errors: each ErrorCode maps to the exception a client can act on."""

from __future__ import annotations


def test_a_limit_is_not_a_full_store() -> None:
    from pairq.errors import LimitExceededError, PairqError, StoreFullError
    from pairq.v1 import broker_pb2

    err = PairqError.from_code(broker_pb2.ERROR_CODE_TOO_MANY, "publish rate above 10/s")
    assert isinstance(err, LimitExceededError) and not isinstance(err, StoreFullError)
    full = PairqError.from_code(broker_pb2.ERROR_CODE_STORE_FULL, "store is full")
    assert isinstance(full, StoreFullError) and not isinstance(full, LimitExceededError)


def test_metadata_travels_as_fields() -> None:
    """ErrorInfo metadata (an RPC error) and PublishError metadata (an in-stream one)
    come back as the exception's ``fields`` (e.g. ``partner`` on a refusal for want of
    the partner's copy, which makes a producer skip that pair)."""
    from pairq.errors import PairqError, UnavailableError
    from pairq.v1 import broker_pb2

    sent = UnavailableError("partner down", partner="10.0.0.2:4150")
    assert sent.metadata() == {"partner": "10.0.0.2:4150"}
    got = PairqError.from_code(broker_pb2.ERROR_CODE_UNAVAILABLE, "partner down", sent.metadata())
    assert isinstance(got, UnavailableError) and got.fields == {"partner": "10.0.0.2:4150"}
    # a key that would clash with the code argument is dropped, not a TypeError
    odd = PairqError.from_code(broker_pb2.ERROR_CODE_UNAVAILABLE, "x", {"code": "1", "a": "b"})
    assert odd.code == broker_pb2.ERROR_CODE_UNAVAILABLE and odd.fields == {"a": "b"}
