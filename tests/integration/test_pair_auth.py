"""The authenticated pair (--pair-secret-file): a peer without the secret is
refused, counted and changes nothing; the real partner replicates as before.

Each forgery of issue 14 is played by ``pair_forgery.py`` against a live pair.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pair_forgery
import pytest

from pairq.broker.broker import Broker
from pairq.broker.options import BrokerOptions
from pairq.client import Consumer, Producer
from pairq.errors import PairqError
from pairq.options import OptionsError
from pairq.testing import eventually, free_port, run_pair


def secret_file(tmp: Path, name: str = "secret") -> str:
    p = tmp / name
    p.write_bytes(os.urandom(32).hex().encode() + b"\n")
    return str(p)


async def test_every_forgery_without_the_pair_secret_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    secret = secret_file(tmp_path)
    async with run_pair(tmp_path / "pair", pair_secret_file=secret) as (a, b):
        assert a.pair is not None and b.pair is not None
        # The real partners proved the secret on both transports.
        await eventually(lambda: a.pair.stats().link == "tcp" and b.pair.stats().link == "tcp")
        handled: dict[bytes, int] = {}

        def handler(msg: Any) -> None:
            handled[msg.id] = handled.get(msg.id, 0) + 1

        async with Producer(brokers=[a.address]) as producer:
            first = await producer.publish_batch(pair_forgery.TOPIC, [b"real"] * 5)
            assert all(ack.copies == 2 for ack in first)
            consumer = Consumer(
                pair_forgery.TOPIC, "work", brokers=[a.address, b.address], handler=handler
            )
            await consumer.start()
            try:
                await eventually(lambda: len(handled) == 5)
                standby_before = [(h.topic, h.next_seq) for h in b.pair.standby.holdings()]
                partner_before = (a.pair.standby.partner_id, b.pair.standby.partner_id)
                next_ids = [os.urandom(16) for _ in range(10)]
                answers: dict[str, str] = {}
                for target in (a, b):
                    assert target.pair is not None
                    partner_id = target.pair.standby.partner_id
                    for forge in pair_forgery.ALL:
                        answers[f"{forge.__name__}@{target.address}"] = await forge(
                            target.address, "p1", partner_id, next_ids
                        )
                    answers[f"tcp@{target.address}"] = await pair_forgery.forge_tcp_link(
                        "127.0.0.1", target.pair.receiver.tcp_port
                    )
                for name, answer in answers.items():
                    expected = (
                        "closed"
                        if name.startswith("tcp@")
                        else "FAILED_PRECONDITION"
                        if name.startswith("forge_batch_without_hello")
                        else "UNAUTHENTICATED"
                    )
                    assert answer == expected, (name, answer)
                # Counted on each side: the 7 sessions that said hello (a TCP
                # connection with a guessed token names no session: closed, not counted).
                for broker in (a, b):
                    assert broker.pair is not None
                    assert broker.pair.stats().auth_failures == 7
                    assert broker.pair.takeovers == 0 and not broker.pair.solo
                assert (a.pair.standby.partner_id, b.pair.standby.partner_id) == partner_before
                assert [(h.topic, h.next_seq) for h in b.pair.standby.holdings()] == standby_before
                assert a.pair.connected and b.pair.connected
                # The real messages with the ids the forgers used are stored and delivered.
                acks = await producer.publish_batch(
                    pair_forgery.TOPIC, [b"next"] * 10, ids=next_ids
                )
                assert [ack.id for ack in acks] == next_ids
                assert all(ack.copies == 2 for ack in acks)
                await eventually(lambda: all(handled.get(i) == 1 for i in next_ids))
                await asyncio.sleep(0)  # nothing forged was delivered
                assert len(handled) == 15 and set(handled.values()) == {1}
                assert b.pair.standby.count() == 0 or all(
                    h.topic == pair_forgery.TOPIC for h in b.pair.standby.holdings()
                )
            finally:
                await consumer.stop()


async def test_the_forgeries_succeed_against_a_pair_without_the_secret(tmp_path: Path) -> None:
    """The forger is real: where nothing checks a pair secret, a made-up partner's
    records are stored and acknowledged. So the refusals above come from the secret,
    not from a forger that could not have succeeded anyway."""
    async with run_pair(tmp_path / "pair") as (a, b):
        assert a.pair is not None and b.pair is not None
        await eventually(lambda: a.pair.stats().link == "tcp" and b.pair.stats().link == "tcp")
        ids = [os.urandom(16) for _ in range(3)]
        answer = await pair_forgery.forge_next_ids(b.address, "p1", b.pair.standby.partner_id, ids)
        assert answer == "ACKED"
        assert b.pair.stats().auth_failures == 0


async def _broker(tmp: Path, name: str, port: int, partner: int, **extra: Any) -> Broker:
    broker = Broker(
        BrokerOptions(
            data_dir=str(tmp / name),
            address=f"127.0.0.1:{port}",
            pair="p1",
            partner=f"127.0.0.1:{partner}",
            **extra,
        )
    )
    await broker.start()
    return broker


@pytest.mark.parametrize("b_secret", ["other", "none"])
async def test_a_partner_with_another_secret_or_none_never_connects(
    tmp_path: Path, b_secret: str
) -> None:
    pa, pb_ = free_port(), free_port()
    a = await _broker(tmp_path, "a", pa, pb_, pair_secret_file=secret_file(tmp_path, "secret-a"))
    try:
        extra = (
            {"pair_secret_file": secret_file(tmp_path, "secret-b")} if b_secret == "other" else {}
        )
        b = await _broker(tmp_path, "b", pb_, pa, **extra)
        try:
            assert a.pair is not None and b.pair is not None
            # Each side refuses the other's session (a wrong proof, or none at all).
            await eventually(lambda: a.pair.stats().auth_failures >= 2)
            if b_secret == "other":
                await eventually(lambda: b.pair.stats().auth_failures >= 2)
            assert not a.pair.connected and not b.pair.connected
            assert not a.pair.partner_connected and not b.pair.partner_connected
            assert a.pair.standby.partner_id == "" and b.pair.standby.partner_id == ""
            async with Producer(brokers=[a.address], retry_timeout=1.0) as producer:
                with pytest.raises(PairqError):
                    await producer.publish("t", b"x")
        finally:
            await b.stop(grace=0.5)
    finally:
        await a.stop(grace=0.5)


def test_a_short_or_missing_pair_secret_is_refused_at_start_up(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("too short\n")
    for path, words in ((short, "at least 16"), (tmp_path / "missing", "--pair-secret-file")):
        with pytest.raises(OptionsError, match=words):
            BrokerOptions(data_dir=str(tmp_path), pair_secret_file=str(path)).validate()


async def test_repair_needs_the_pair_secret_and_works_under_auth(tmp_path: Path) -> None:
    """Repair (good copies of corrupt records, and the partner's store-full state)
    is authenticated by the pair secret, not by tokens: under --auth-file the real
    partner gets its copies, and a caller without the secret gets nothing, even
    with an admin token."""
    import grpc

    from pairq.security import pairauth
    from pairq.security.auth import hash_token
    from pairq.v1 import replication_pb2 as rpb

    auth = tmp_path / "auth.toml"
    auth.write_text(
        f'[[principal]]\nname = "ops"\ntoken_sha256 = "{hash_token("ops-token-123456")}"\n'
        'admin = ["*"]\npublish = ["*"]\n'
    )
    secret = secret_file(tmp_path)
    async with run_pair(tmp_path / "pair", pair_secret_file=secret, auth_file=str(auth)) as (a, b):
        assert a.pair is not None and b.pair is not None
        async with Producer(brokers=[a.address], token="ops-token-123456") as producer:
            acks = await producer.publish_batch("fix", [b"one", b"two", b"three"])
        assert [ack.copies for ack in acks] == [2, 2, 2]
        tid = a.topics["fix"].meta.id
        seqs = [q for q in range(64) if a.store.log.get(tid, q) is not None]
        assert len(seqs) == 3
        # The real partner: B's standby copies of A's records, as A holds them.
        got = await a.pair.fetch("fix", seqs, owned=True)
        assert got is not None and sorted(got) == seqs
        for q in seqs:
            assert got[q] == a.store.log.get(tid, q)
        await a.pair._probe_partner()  # the store-full probe takes the same call
        assert a.pair._partner_full == ""
        # Anyone else: an admin token is not the pair secret.
        before = b.pair.state.auth_failures
        req = rpb.RepairRequest(topic="fix", seqs=seqs, owned=True)
        other = pairauth.repair_proof(b"x" * 32, a.pair.name, 0, req.SerializeToString())
        import time

        now_ms = time.time_ns() // 1_000_000
        wrong = pairauth.repair_proof(b"y" * 32, a.pair.name, now_ms, req.SerializeToString())
        async with grpc.aio.insecure_channel(b.address) as ch:
            call = ch.unary_unary(
                "/pairq.v1.ReplicationService/Repair",
                request_serializer=rpb.RepairRequest.SerializeToString,
                response_deserializer=rpb.RepairResponse.FromString,
            )
            token = ("authorization", "Bearer ops-token-123456")
            for md in (
                (token,),
                (token, ("pairq-pair-proof", other)),
                (("pairq-pair-proof", wrong),),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await call(req, metadata=md, timeout=5)
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "Repair refused" in (ei.value.details() or "")
        assert b.pair.state.auth_failures == before + 3


@pytest.mark.parametrize("a_lines,b_lines", [("old new", "old"), ("new old", "old new")])
async def test_brokers_a_rotation_step_apart_replicate_on_both_links(
    tmp_path: Path, a_lines: str, b_lines: str
) -> None:
    """Rotating the pair secret (pairauth): a broker whose file lists (OLD, NEW) and one
    with OLD alone, or (NEW, OLD) and (OLD, NEW), prove themselves to each other on the
    gRPC handshake and the TCP link, so the pair replicates at every step."""
    keys = {"old": os.urandom(32).hex().encode(), "new": os.urandom(32).hex().encode()}

    def write(name: str, lines: str) -> str:
        p = tmp_path / name
        p.write_bytes(b"".join(keys[w] + b"\n" for w in lines.split()))
        return str(p)

    pa, pb_ = free_port(), free_port()
    a = await _broker(tmp_path, "a", pa, pb_, pair_secret_file=write("a.secret", a_lines))
    try:
        b = await _broker(tmp_path, "b", pb_, pa, pair_secret_file=write("b.secret", b_lines))
        try:
            assert a.pair is not None and b.pair is not None
            await eventually(lambda: a.pair.stats().link == "tcp" and b.pair.stats().link == "tcp")
            async with Producer(brokers=[a.address]) as producer:
                ack = await producer.publish("t", b"x")
            assert ack.copies == 2
            assert a.pair.stats().auth_failures == 0 and b.pair.stats().auth_failures == 0
        finally:
            await b.stop(grace=0.5)
    finally:
        await a.stop(grace=0.5)
