"""The committed stubs in pairq/v1 must match proto/ (run `make proto` after editing a .proto)."""

from __future__ import annotations

from pathlib import Path

from pairq._protogen import ROOT, generate, proto_files


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    generate(tmp_path)
    for proto in proto_files():
        stem = proto.stem
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            fresh = (tmp_path / "pairq" / "v1" / f"{stem}{suffix}").read_text()
            committed_path = ROOT / "pairq" / "v1" / f"{stem}{suffix}"
            assert committed_path.exists(), f"{committed_path} missing: run `make proto`"
            assert committed_path.read_text() == fresh, (
                f"{committed_path} is stale: run `make proto`"
            )
