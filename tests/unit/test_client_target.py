"""Server address lists as gRPC targets (`--server a:1,b:2`, `Client.connect("a:1,b:2")`)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gaffer.agent import AgentConfig
from gaffer.cli import build_parser, main
from gaffer.client import SyncClient
from gaffer.client._target import CHANNEL_OPTIONS, channel_target, split_addresses

NAMES = {
    "replica-a": ["10.0.0.1"],
    "replica-b": ["10.0.0.2", "10.0.0.3"],
    "v6only": ["fd00::2"],
    "nowhere": [],
}


def fake_resolve(host: str, port: int) -> Sequence[str]:
    return NAMES[host]


@pytest.mark.parametrize(
    ("server", "target"),
    [
        # One address: left as it is (a single DNS name keeps grpc's own resolver).
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("  gaffer.svc:50051 ", "gaffer.svc:50051"),
        ("[::1]:50051", "[::1]:50051"),
        # Several: one list for pick_first.
        ("127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("127.0.0.1:1, 127.0.0.2:2 ,", "ipv4:127.0.0.1:1,127.0.0.2:2"),
        ("[::1]:1,[fd00::1]:2", "ipv6:[::1]:1,[fd00::1]:2"),
        # Names are resolved to all their addresses, duplicates dropped, order kept.
        ("replica-a:7,replica-b:7", "ipv4:10.0.0.1:7,10.0.0.2:7,10.0.0.3:7"),
        ("replica-a:7,10.0.0.1:7", "ipv4:10.0.0.1:7"),
        ("v6only:9,[::1]:9", "ipv6:[fd00::2]:9,[::1]:9"),
        # A target that names its resolver passes through.
        ("dns:///gaffer.svc:50051", "dns:///gaffer.svc:50051"),
        ("ipv4:127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("unix:/tmp/gaffer.sock", "unix:/tmp/gaffer.sock"),
    ],
)
def test_channel_target(server: str, target: str) -> None:
    assert channel_target(server, resolve=fake_resolve) == target


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        ("", "empty"),
        ("127.0.0.1:1,127.0.0.1", "HOST:PORT"),
        ("127.0.0.1:1,:2", "HOST:PORT"),
        ("127.0.0.1:1,127.0.0.1:x", "HOST:PORT"),
        ("127.0.0.1:1,127.0.0.1:70000", "HOST:PORT"),
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("127.0.0.1:1,nowhere:2", "no address"),
    ],
)
def test_channel_target_refuses(server: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        channel_target(server, resolve=fake_resolve)


def test_real_resolver_finds_localhost() -> None:
    target = channel_target("localhost:1,127.0.0.1:2")
    assert target.startswith(("ipv4:", "ipv6:")), target
    assert "127.0.0.1:2" in target or "[::1]" in target


def test_split_addresses() -> None:
    assert split_addresses(" a:1 ,b:2,, ") == ["a:1", "b:2"]
    with pytest.raises(ValueError):
        split_addresses(" , ")


def test_channel_options_pick_first() -> None:
    assert ("grpc.lb_policy_name", "pick_first") in CHANNEL_OPTIONS


def test_cli_server_accepts_a_list_and_refuses_a_bad_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(["--server", "127.0.0.1:1,127.0.0.1:2", "list"])
    assert args.server == "127.0.0.1:1,127.0.0.1:2"
    args = build_parser().parse_args(["list", "--server", "127.0.0.1:3,127.0.0.1:4"])
    assert args.server == "127.0.0.1:3,127.0.0.1:4"
    assert main(["--server", "127.0.0.1:1,127.0.0.1", "list"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    # GAFFER_SERVER is checked the same way.
    assert main(["list"], environ={"GAFFER_SERVER": "127.0.0.1:1,[::1]:2"}) == 2
    assert "mixes" in capsys.readouterr().err


def test_clients_and_agents_take_a_list() -> None:
    with SyncClient("127.0.0.1:1,127.0.0.1:2") as client:
        assert client.target == "127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(ValueError):
        SyncClient("127.0.0.1:1,oops")
    assert AgentConfig(server="127.0.0.1:1,127.0.0.1:2", name="a").server.count(",") == 1
