"""Regenerate the committed gRPC/protobuf stubs in ``pairq/v1`` from ``proto/``.

Run by ``make proto``. ``generate(out_dir)`` is also used by the test that
fails when the committed stubs are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "pairq" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write ``pairq/v1/*_pb2*.py`` (and .pyi) for every proto under ``out_dir``."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in proto_files()],
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")


def main() -> None:
    generate(ROOT)
    init = ROOT / "pairq" / "v1" / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC/protobuf stubs (do not edit; `make proto`)."""\n')
    print("regenerated", ", ".join(p.name for p in proto_files()), file=sys.stderr)


if __name__ == "__main__":
    main()
