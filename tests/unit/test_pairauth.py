def test_repair_proof_binds_secret_pair_time_and_request() -> None:
    from pairq.security.pairauth import REPAIR_WINDOW_MS, check_repair, repair_proof

    secret, req = b"s" * 32, b"\x0a\x03fix\x12\x01\x01"
    value = repair_proof(secret, "p", 1_000_000, req)
    assert check_repair(secret, "p", value, req, 1_000_000) == ""
    assert check_repair(secret, "p", value, req, 1_000_000 + REPAIR_WINDOW_MS) == ""
    assert "clock" in check_repair(secret, "p", value, req, 1_000_001 + REPAIR_WINDOW_MS)
    assert "does not match" in check_repair(b"t" * 32, "p", value, req, 1_000_000)
    assert "does not match" in check_repair(secret, "q", value, req, 1_000_000)
    assert "does not match" in check_repair(secret, "p", value, req + b"\x01", 1_000_000)
    ts, _, mac = value.partition(".")
    assert "does not match" in check_repair(secret, "p", f"{int(ts) + 1}.{mac}", req, 1_000_000)
    assert "no pairq-pair-proof" in check_repair(secret, "p", "", req, 1_000_000)
    assert "not hex" in check_repair(secret, "p", f"{ts}.zz", req, 1_000_000)
    assert "does not match" in check_repair(secret, "p", f"{ts}.ab", req, 1_000_000)
