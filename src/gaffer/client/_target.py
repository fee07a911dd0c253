"""Server addresses as gRPC channel targets: one ``host:port``, or several, comma-separated.

``"10.0.0.1:50051,10.0.0.2:50051"`` becomes ``"ipv4:10.0.0.1:50051,10.0.0.2:50051"``: one
channel over every replica with the ``pick_first`` policy, so when the replica in use goes
away the channel moves to the next one that answers. Host names in a list are resolved once,
here, to all their addresses; a single name (``gaffer.svc:50051``) is left to grpc's own DNS
resolver, which follows it over time. A target that already names a resolver (``dns:``,
``ipv4:``, ``ipv6:``, ``unix:``, ...) passes through unchanged.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence

__all__ = ["CHANNEL_OPTIONS", "channel_target", "split_addresses"]

#: grpc's reconnect backoff grows to 2 minutes by default, so a replica that came back would
#: go unused that long; ours stays short. ``pick_first`` is grpc's default, named here because
#: moving to another replica when ours dies is what the address list is for.
CHANNEL_OPTIONS: tuple[tuple[str, object], ...] = (
    ("grpc.lb_policy_name", "pick_first"),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)

_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")

Resolve = Callable[[str, int], Sequence[str]]


def split_addresses(server: str) -> list[str]:
    """The ``host:port`` entries of a comma-separated list, stripped, empty ones dropped.

    Raises:
        ValueError: no address, or an entry without a port.
    """
    entries = [part.strip() for part in server.split(",") if part.strip()]
    if not entries:
        raise ValueError(f"no server address in {server!r}")
    for entry in entries:
        _host_port(entry)
    return entries


def channel_target(server: str, *, resolve: Resolve | None = None) -> str:
    """The gRPC target for ``server``: one address as is, several as an ``ipv4:``/``ipv6:`` list.

    Args:
        server: ``host:port``, ``host:port,host:port,...``, or a target with a resolver scheme.
        resolve: Maps a host name and port to its IP addresses; :func:`socket.getaddrinfo`
            when None (tests pass their own).

    Returns:
        A target for ``grpc.insecure_channel`` (use it with :data:`CHANNEL_OPTIONS`).

    Raises:
        ValueError: an entry without a port, a name that resolves to nothing, or a list that
            mixes IPv4 and IPv6 addresses (grpc takes one family per list).
    """
    text = server.strip()
    if text.startswith(_SCHEMES) or "," not in text:
        if not text:
            raise ValueError("empty server address")
        return text
    v4: list[str] = []
    v6: list[str] = []
    for entry in split_addresses(text):
        host, port = _host_port(entry)
        for ip in _addresses(host, port, resolve or _getaddrinfo):
            parsed = ipaddress.ip_address(ip)
            if parsed.version == 4:
                v4.append(f"{ip}:{port}")
            else:
                v6.append(f"[{ip}]:{port}")
    if v4 and v6:
        raise ValueError(f"{server!r} mixes IPv4 and IPv6 addresses; give one family")
    scheme, addresses = ("ipv4", v4) if v4 else ("ipv6", v6)
    return f"{scheme}:" + ",".join(dict.fromkeys(addresses))


def _host_port(entry: str) -> tuple[str, int]:
    host, sep, port = entry.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {entry!r}")
    return host, int(port)


def _addresses(host: str, port: int, resolve: Resolve) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    found = list(dict.fromkeys(resolve(host, port)))
    if not found:
        raise ValueError(f"{host!r} resolves to no address")
    return found


def _getaddrinfo(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ValueError(f"cannot resolve {host!r}: {error}") from error
    return [str(info[4][0]) for info in infos]
