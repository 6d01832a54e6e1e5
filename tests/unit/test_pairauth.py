def test_repair_proof_binds_secret_pair_time_and_request() -> None:
    from pairq.security.pairauth import REPAIR_WINDOW_MS, PairSecret, check_repair, repair_proof

    key, req = b"s" * 32, b"\x0a\x03fix\x12\x01\x01"
    secret = PairSecret.of(key)
    value = repair_proof(key, "p", 1_000_000, req)
    assert check_repair(secret, "p", value, req, 1_000_000) == ""
    assert check_repair(secret, "p", value, req, 1_000_000 + REPAIR_WINDOW_MS) == ""
    assert "clock" in check_repair(secret, "p", value, req, 1_000_001 + REPAIR_WINDOW_MS)
    assert "does not match" in check_repair(PairSecret.of(b"t" * 32), "p", value, req, 1_000_000)
    assert "does not match" in check_repair(secret, "q", value, req, 1_000_000)
    assert "does not match" in check_repair(secret, "p", value, req + b"\x01", 1_000_000)
    ts, _, mac = value.partition(".")
    assert "does not match" in check_repair(secret, "p", f"{int(ts) + 1}.{mac}", req, 1_000_000)
    assert "no pairq-pair-proof" in check_repair(secret, "p", "", req, 1_000_000)
    assert "not hex" in check_repair(secret, "p", f"{ts}.zz", req, 1_000_000)
    assert "does not match" in check_repair(secret, "p", f"{ts}.ab", req, 1_000_000)


def test_a_repair_proof_made_with_a_secret_being_rotated_in_or_out_is_accepted() -> None:
    from pairq.security.pairauth import PairSecret, check_repair, repair_proof

    old, new, req = b"o" * 32, b"n" * 32, b"\x0a\x03fix"
    assert check_repair(PairSecret.of(new, old), "p", repair_proof(old, "p", 5, req), req, 5) == ""
    assert check_repair(PairSecret.of(old, new), "p", repair_proof(new, "p", 5, req), req, 5) == ""
    assert "does not match" in check_repair(
        PairSecret.of(new), "p", repair_proof(old, "p", 5, req), req, 5
    )
