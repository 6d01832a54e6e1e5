#!/usr/bin/env python3
"""pairq-pair-health: wait until a broker pair is healthy, or fail closed.

Usage: ``pairq-pair-health --broker HOST:PORT --partner HOST:PORT [--timeout S]
[--tls | --tls-ca FILE] [--tls-cert FILE --tls-key FILE]``; run with the pairq virtualenv's
python. Every ``--interval`` it asks both brokers for GetStats (over TLS when ``--tls`` or
``--tls-ca`` is given, presenting ``--tls-cert`` to brokers that require client
certificates) and exits 0 as soon as ``verdict()`` says healthy twice in a row, or 1 with
the last reason when ``--timeout`` passes first (the rolling restart and the upgrade stop
there).

The rules (``verdict``, pure: it takes the two GetStats answers, as dicts):
- both brokers answer, and each reports ``health == "ok"`` and pair stats;
- they are each other's partner (each one's ``partner_address`` is the address the other
  was asked at, ``address``) and name the same pair;
- replication is up both ways on both (``connected`` and ``partner_connected``);
- every message is back at two copies: ``replication_lag == 0`` on both, and no re-fill
  in progress (``refill_sending == refill_receiving == 0``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def verdict(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    """"" when the pair (a, b) is healthy, else why not (one line)."""
    for name, s in (("broker", a), ("partner", b)):
        if s is None:
            return f"{name} does not answer GetStats"
        if s.get("health", "") != "ok":
            return f"{name} {s.get('broker_id', '?')} health is {s.get('health', '')!r}"
        if not s.get("pair"):
            return f"{name} {s.get('broker_id', '?')} has no pair"
    assert a is not None and b is not None
    pa, pb = a["pair"], b["pair"]
    if pa.get("partner_address") != b.get("address") or pb.get("partner_address") != a.get("address"):
        return (
            f"not each other's partner: {a.get('address')} -> {pa.get('partner_address')!r}, "
            f"{b.get('address')} -> {pb.get('partner_address')!r}"
        )
    if pa.get("pair") != pb.get("pair"):
        return f"pair names differ: {pa.get('pair')!r} and {pb.get('pair')!r}"
    for s, p in ((a, pa), (b, pb)):
        who = s.get("broker_id")
        if not p.get("connected"):
            return f"{who}: replication to its partner is down"
        if not p.get("partner_connected"):
            return f"{who}: replication from its partner is down"
        if int(p.get("replication_lag", 0)):
            return f"{who}: {p['replication_lag']} messages still have one copy"
        if int(p.get("refill_sending", 0)) or int(p.get("refill_receiving", 0)):
            return (
                f"{who}: re-fill in progress ({p.get('refill_sending', 0)} to send, "
                f"{p.get('refill_receiving', 0)} to come)"
            )
    return ""


def _channel(address: str, tls: dict[str, str] | None) -> Any:
    import grpc

    if tls is None:
        return grpc.insecure_channel(address)
    from pairq.security.client import ClientSecurity  # the clients' own TLS files rules

    creds = ClientSecurity(
        tls_cert=tls.get("cert", ""), tls_key=tls.get("key", ""), tls_ca=tls.get("ca", "")
    ).credentials()
    return grpc.secure_channel(address, creds)


def _stats(address: str, timeout: float, tls: dict[str, str] | None = None) -> dict[str, Any] | None:
    import grpc

    from pairq.v1 import broker_pb2, broker_pb2_grpc

    try:
        with _channel(address, tls) as ch:
            r = broker_pb2_grpc.BrokerServiceStub(ch).GetStats(
                broker_pb2.GetStatsRequest(no_clients=True), timeout=timeout
            )
    except grpc.RpcError:
        return None
    out: dict[str, Any] = {
        "address": address,
        "broker_id": r.broker_id,
        "health": r.health,
        "version": r.version,
    }
    if r.HasField("pair"):
        out["pair"] = {f.name: getattr(r.pair, f.name) for f in r.pair.DESCRIPTOR.fields}
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pairq-pair-health", description=__doc__.split("\n")[0])
    p.add_argument("--broker", required=True, help="gRPC HOST:PORT of one broker of the pair")
    p.add_argument("--partner", required=True, help="gRPC HOST:PORT of the other broker")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before failing")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between checks")
    p.add_argument("--tls", action="store_true", help="TLS, trusting the system's roots")
    p.add_argument("--tls-ca", default="", help="TLS, trusting this PEM CA bundle")
    p.add_argument("--tls-cert", default="", help="PEM client certificate (mTLS)")
    p.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    tls = (
        {"ca": args.tls_ca, "cert": args.tls_cert, "key": args.tls_key}
        if args.tls or args.tls_ca or args.tls_cert
        else None
    )
    deadline = time.monotonic() + args.timeout
    why, good = "not checked yet", 0
    while True:
        a = _stats(args.broker, 2.0, tls)
        b = _stats(args.partner, 2.0, tls)
        why = verdict(a, b)
        good = good + 1 if not why else 0
        if good >= 2:
            pair = a["pair"] if a else {}
            print(json.dumps({"healthy": True, "pair": pair.get("pair"), "epoch": pair.get("epoch")}))
            return 0
        if time.monotonic() >= deadline:
            print(f"pair of {args.broker} not healthy after {args.timeout:.0f} s: {why}")
            return 1
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
