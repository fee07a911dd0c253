"""The floor: a bare grpc.aio service with a no-op unary RPC and a server stream (bytes, no proto).

``python -m bench.floor_server [--listen 127.0.0.1:0]`` prints ``floor server listening on
HOST:PORT``. ``/bench.Floor/Ping`` answers empty bytes; ``/bench.Floor/Stream`` takes
``b"COUNT SIZE"`` and sends COUNT messages of SIZE bytes. ``/bench.Floor/Broadcast`` takes
``b"STREAMS ROUNDS SIZE"``: once STREAMS such calls are open, each gets one SIZE-byte message
per round, ROUNDS rounds back to back (a round starts when every stream sent the last one).
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
BROADCAST = f"/{SERVICE}/Broadcast"


async def _ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b""


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    count, size = (int(x) for x in request.split())
    message = b"x" * size
    for _ in range(count):
        yield message


class _Broadcast:
    """Rounds of one message to every open stream, the next as soon as all were sent."""

    def __init__(self) -> None:
        self.streams = 0
        self.round = asyncio.Event()
        self.sent = 0
        self.all_sent = asyncio.Event()
        self.runner: asyncio.Task[None] | None = None  # held: the loop keeps weak refs

    async def run(self, rounds: int) -> None:
        for _ in range(rounds):
            self.sent = 0
            self.all_sent.clear()
            woken, self.round = self.round, asyncio.Event()
            woken.set()
            await self.all_sent.wait()

    async def stream(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        streams, rounds, size = (int(x) for x in request.split())
        message = b"x" * size
        round_ = self.round
        self.streams += 1
        if self.streams == streams:
            self.streams = 0
            self.runner = asyncio.create_task(self.run(rounds))
        for _ in range(rounds):
            await round_.wait()
            round_ = self.round
            yield message
            self.sent += 1
            if self.sent == streams:
                self.all_sent.set()


async def serve(listen: str) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Ping": grpc.unary_unary_rpc_method_handler(_ping),
                    "Stream": grpc.unary_stream_rpc_method_handler(_stream),
                    "Broadcast": grpc.unary_stream_rpc_method_handler(_Broadcast().stream),
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
