"""pairq.broker.checksum: the compiled batch CRC32C (pairq/broker/_crc32c.c) gives
google-crc32c's results, with the CPU instruction and with its table, and refuses bad
input with an exception (never a crash); the fallback without it gives the same."""

from __future__ import annotations

import importlib
import shutil
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pairq.broker
from pairq.broker import checksum

CAN_BUILD = (
    bool(shutil.which("cc")) and (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()
)


def test_where_it_can_be_built_the_compiled_module_is_used() -> None:
    # setup.py builds it wherever a C compiler and Python's headers are there.
    if CAN_BUILD:
        assert checksum.IMPLEMENTATION.startswith("pairq._crc32c")
    else:
        assert checksum.IMPLEMENTATION.startswith("google-crc32c")


native = pytest.importorskip(
    "pairq.broker._crc32c", reason="not compiled here (no C compiler at install)"
)

blobs = st.lists(st.binary(max_size=600), max_size=40)


@pytest.fixture(params=["best", "table"])
def impl(request: pytest.FixtureRequest) -> Iterator[str]:
    name = native.use_table(request.param == "table")
    try:
        yield name
    finally:
        native.use_table(False)


def test_the_compiled_module_is_the_one_in_use() -> None:
    assert checksum.crcs is native.values and checksum.keyed_many is native.keyed


@given(records=blobs, keys=blobs)
def test_values_and_keyed_equal_google_crc32c(records: list[bytes], keys: list[bytes]) -> None:
    for flag in (False, True):
        native.use_table(flag)
        try:
            want = [google_crc32c.value(r) for r in records]
            assert native.values(records) == want
            assert [native.value(r) for r in records] == want
            ks = (keys * len(records))[: len(records)]
            if len(ks) == len(records):
                keyed = [c ^ google_crc32c.value(k) for c, k in zip(want, ks, strict=True)]
                assert native.keyed(want, ks) == keyed
        finally:
            native.use_table(False)


def test_every_length_and_alignment_matches(impl: str) -> None:
    data = bytes(range(256)) * 3
    for start in range(9):
        for end in range(start, start + 70):
            chunk = data[start:end]
            assert native.value(chunk) == google_crc32c.value(chunk), (impl, start, end)
    assert native.value(memoryview(data)[3:500]) == google_crc32c.value(data[3:500])
    assert native.value(bytearray(b"abc")) == google_crc32c.value(b"abc")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: native.value("text"), TypeError),
        (lambda: native.values((b"a",)), TypeError),
        (lambda: native.values([b"a", 3]), TypeError),
        (lambda: native.keyed([1], [b"a", b"b"]), ValueError),
        (lambda: native.keyed([1 << 32], [b"a"]), ValueError),
        (lambda: native.keyed([-1], [b"a"]), OverflowError),
        (lambda: native.keyed(["x"], [b"a"]), TypeError),
        (lambda: native.keyed([1], ["a"]), TypeError),
        (lambda: native.keyed([1]), TypeError),  # type: ignore[call-arg]
    ],
)
def test_bad_input_raises(call, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        call()


def test_without_the_compiled_module_the_results_are_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recs = [b"", b"a", bytes(range(200))]
    keys = [b"k1", b"\x00" * 12, b"topic\x00" + bytes(8)]
    monkeypatch.setitem(sys.modules, "pairq.broker._crc32c", None)  # import fails
    monkeypatch.delattr(pairq.broker, "_crc32c")
    try:
        fallback = importlib.reload(checksum)
        assert fallback.IMPLEMENTATION.startswith("google-crc32c")
        assert fallback.crcs(recs) == native.values(recs)
        assert fallback.crc(recs[2]) == native.value(recs[2])
        assert fallback.keyed_many([1, 2, 3], keys) == native.keyed([1, 2, 3], keys)
        with pytest.raises(ValueError):
            fallback.keyed_many([1], keys)
    finally:
        monkeypatch.undo()
        importlib.reload(checksum)
    assert checksum.IMPLEMENTATION.startswith("pairq._crc32c")
