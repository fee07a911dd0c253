"""The floor: a bare grpc.aio service with a no-op unary RPC and a server stream (bytes, no proto).

``python -m bench.floor_server [--listen 127.0.0.1:0]`` prints ``floor server listening on
HOST:PORT``. ``/bench.Floor/Ping`` answers empty bytes; ``/bench.Floor/Stream`` takes
``b"COUNT SIZE"`` and sends COUNT messages of SIZE bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import grpc

SERVICE = "bench.Floor"
PING = f"/{SERVICE}/Ping"
STREAM = f"/{SERVICE}/Stream"


async def _ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b""


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    count, size = (int(x) for x in request.split())
    message = b"x" * size
    for _ in range(count):
        yield message


async def serve(listen: str) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Ping": grpc.unary_unary_rpc_method_handler(_ping),
                    "Stream": grpc.unary_stream_rpc_method_handler(_stream),
                },
            )
        ]
    )
    port = server.add_insecure_port(listen)
    await server.start()
    host = listen.rsplit(":", 1)[0]
    print(f"floor server listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_server")
    parser.add_argument("--listen", default="127.0.0.1:0")
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
