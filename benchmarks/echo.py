"""A trivial gRPC echo server in a child process: the gRPC baselines.

``run.py`` measures raw unary calls against it (``UNARY``), ``floor.py`` one message
at a time on a bidirectional stream (``STREAM``: read a message, write it back, with
``context.read`` / ``context.write`` as ``PublishStream`` does). It runs on the
loop it is told to: ``asyncio`` (run.py's baseline, as it always was) or
``uvloop`` (the brokers' default, for floor.py).

    python benchmarks/echo.py PORT [asyncio|uvloop]
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc

from pairq.testing import free_port, wait_for_port

SERVICE = "pairq.bench.Echo"
UNARY = f"/{SERVICE}/Call"
STREAM = f"/{SERVICE}/Stream"


async def _call(request: bytes, context: Any) -> bytes:
    return request


async def _stream(request_iterator: Any, context: Any) -> None:
    while True:
        msg = await context.read()
        if msg is grpc.aio.EOF:
            return
        await context.write(msg)


async def serve(port: int) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Call": grpc.unary_unary_rpc_method_handler(_call),
            "Stream": grpc.stream_stream_rpc_method_handler(_stream),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


@contextlib.contextmanager
def echo_process(event_loop: str = "asyncio") -> Iterator[tuple[str, int]]:
    """(address, pid) of an echo server in a child process, stopped at the end."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, str(port), event_loop],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=20)
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    port, loop = int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "asyncio"
    if loop == "uvloop":
        import uvloop

        uvloop.run(serve(port))
    else:
        asyncio.run(serve(port))
