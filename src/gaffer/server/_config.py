"""The server's settings: a frozen dataclass the CLI builds from flags and environment."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from gaffer.domain import Limits


@dataclass(frozen=True)
class ServerConfig:
    """How one `gaffer server` runs.

    Attributes:
        listen: host:port to bind; port 0 picks a free one (printed once bound).
        data_dir: where the embedded SQLite store and artifact bytes live.
        insecure: allow a non-loopback address without auth.
        lease_ttl: seconds a lease lives without a heartbeat.
        heartbeat_interval: seconds between an agent's heartbeats.
        timeout_grace: seconds past a job's timeout before the server fails it itself.
        shutdown_grace: seconds unary calls get to finish on SIGTERM.
        max_connection_age: seconds before a connection is asked to reconnect (0: never),
            so that balancers spread long-lived clients.
        sqlite_synchronous: SQLite's `synchronous` pragma. NORMAL (the default) still syncs
            every batch that holds a submit or a cancel before answering; agents' reports
            survive a crash of the process at once and of the machine once synced. FULL syncs
            every commit.
        max_concurrent_rpcs: calls served at once (streams and long polls included); past it a
            call is refused at once with RESOURCE_EXHAUSTED. 0: no limit.
        metrics_listen: host:port of a Prometheus text endpoint (``/metrics``); empty: none.
        database_url: a ``postgresql://`` URL: use PostgreSQL (replicas share it) instead of
            the embedded SQLite store; artifact bytes then live under ``data_dir/blobs``,
            which replicas must share.
        pg_notify: send and listen for LISTEN/NOTIFY wake-ups across replicas; False is a
            test switch (work is still found by re-checks, only later).
    """

    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path(".gaffer")
    insecure: bool = False
    lease_ttl: float = 15.0
    heartbeat_interval: float = 5.0
    timeout_grace: float = 1.0
    sweep_interval: float = 0.5
    shutdown_grace: float = 5.0
    max_connection_age: float = 0.0
    keepalive_time: float = 30.0
    sqlite_synchronous: str = "NORMAL"
    max_concurrent_rpcs: int = 20_000
    metrics_listen: str = ""
    database_url: str = ""
    pg_notify: bool = True
    limits: Limits = field(default_factory=Limits)


def split_host(listen: str) -> str:
    host, sep, _port = listen.rpartition(":")
    if not sep:
        raise ValueError(f"--listen {listen!r} is not host:port")
    return host.strip("[]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(config: ServerConfig) -> None:
    """Refuses a non-loopback address without auth unless ``insecure`` says so."""
    host = split_host(config.listen)
    if not is_loopback(host) and not config.insecure:
        raise ValueError(
            f"refusing to listen on {config.listen} without authentication; "
            "use a loopback address, or pass --insecure if the network is trusted"
        )
