"""pairq.errors: each ErrorCode maps to the exception a client can act on."""

from __future__ import annotations


def test_a_limit_is_not_a_full_store() -> None:
    from pairq.errors import LimitExceededError, PairqError, StoreFullError
    from pairq.v1 import broker_pb2

    err = PairqError.from_code(broker_pb2.ERROR_CODE_TOO_MANY, "publish rate above 10/s")
    assert isinstance(err, LimitExceededError) and not isinstance(err, StoreFullError)
    full = PairqError.from_code(broker_pb2.ERROR_CODE_STORE_FULL, "store is full")
    assert isinstance(full, StoreFullError) and not isinstance(full, LimitExceededError)
