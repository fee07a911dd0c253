"""A few live gauges, served in Prometheus text format by a tiny stdlib HTTP/1.0 responder.

Only what the server can count cheaply in-process: calls received by method, calls in
flight, open server streams, Notifier subscriptions and whether the store answers.
``GET /metrics`` answers; anything else is 404 (405 for another method).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

_READ_TIMEOUT = 5.0
_MAX_HEADER_LINES = 100


@dataclass
class Metrics:
    """Gauges kept by the server; ``extra`` holds gauges read when scraped."""

    rpcs_in_flight: int = 0
    open_streams: int = 0
    store_up: int = 1
    extra: dict[str, tuple[str, Callable[[], float]]] = field(default_factory=dict)
    #: Counters read when scraped (names end in _total).
    extra_counters: dict[str, tuple[str, Callable[[], float]]] = field(default_factory=dict)
    #: Calls received since start, by full method name.
    calls: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        gauges: list[tuple[str, str, float]] = [
            ("gaffer_rpcs_in_flight", "Calls being served now.", self.rpcs_in_flight),
            (
                "gaffer_open_streams",
                "Server streams open now.",
                self.open_streams,
            ),
            ("gaffer_store_up", "1 while the store answers reads and writes.", self.store_up),
        ]
        gauges.extend((name, doc, read()) for name, (doc, read) in self.extra.items())
        lines: list[str] = []
        for name, doc, value in gauges:
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        for name, (doc, read) in self.extra_counters.items():
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter", f"{name} {read():g}"]
        lines += [
            "# HELP gaffer_rpcs_total Calls received since start, by method (a request on an"
            " agent's Session counts as a call of the method it stands for).",
            "# TYPE gaffer_rpcs_total counter",
        ]
        lines += [
            f'gaffer_rpcs_total{{method="{method}"}} {count}'
            for method, count in sorted(self.calls.items())
        ]
        return "\n".join(lines) + "\n"


def _response(status: str, body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


async def _serve_one(
    metrics: Metrics, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        async with asyncio.timeout(_READ_TIMEOUT):
            request_line = (await reader.readline()).decode("latin-1").split()
            for _ in range(_MAX_HEADER_LINES):
                if (await reader.readline()) in (b"\r\n", b"\n", b""):
                    break
        if len(request_line) < 2:
            answer = _response("400 Bad Request", "bad request\n")
        elif request_line[0] != "GET":
            answer = _response("405 Method Not Allowed", "only GET\n")
        elif request_line[1].split("?")[0] != "/metrics":
            answer = _response("404 Not Found", "try /metrics\n")
        else:
            answer = _response("200 OK", metrics.render(), "text/plain; version=0.0.4")
        writer.write(answer)
        await writer.drain()
    except (TimeoutError, OSError, ValueError):
        pass  # a client that went away or sent garbage gets nothing
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def serve_metrics(listen: str, metrics: Metrics) -> tuple[asyncio.Server, str]:
    """Starts the endpoint on ``listen`` (host:port, port 0 picks one); returns it and its address.

    Raises:
        ValueError: the address cannot be bound.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        server = await asyncio.start_server(lambda r, w: _serve_one(metrics, r, w), host, int(port))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot serve metrics on {listen}: {exc}") from exc
    bound = server.sockets[0].getsockname()
    address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
    log.info("metrics on http://%s/metrics", address)
    return server, address
