"""Argument parsing of the `gaffer` CLI and its exit-status mapping; no server needed."""

from __future__ import annotations

import argparse

import pytest

from gaffer.cli import build_parser, main
from gaffer.cli._args import duration, exit_status_of, key_value
from gaffer.client import JobState

NOWHERE = "127.0.0.1:1"  # nothing listens: these commands must fail before any call


def test_label_pairs_are_parsed_and_repeatable() -> None:
    args = build_parser().parse_args(
        ["submit", "--label", "team=ml", "-l", "run=a=b", "--env", "EMPTY=", "--", "echo", "hi"]
    )
    assert args.label == [("team", "ml"), ("run", "a=b")]
    assert args.env == [("EMPTY", "")]
    assert args.argv[-2:] == ["echo", "hi"]


@pytest.mark.parametrize("bad", ["novalue", "=v", ""])
def test_key_value_refuses_missing_key_or_sign(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        key_value(bad)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30", 30.0), ("1.5", 1.5), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "--label", "bad", "--", "echo"],
        ["submit", "--timeout", "soon", "--", "echo"],
        ["submit", "--retries", "-1", "--", "echo"],
        ["submit", "--wait", "--follow", "--", "echo"],
        ["list", "--limit", "0"],
        ["agent", "--slots", "0"],
        ["frobnicate"],
        [],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", NOWHERE, *argv]) == 2
    assert "error" in capsys.readouterr().err


def test_submit_without_argv_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", NOWHERE, "submit", "--label", "a=b"]) == 2
    assert "nothing to run" in capsys.readouterr().err


def test_json_with_follow_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", NOWHERE, "submit", "--follow", "--json", "--", "true"]) == 2
    assert "--json and --follow" in capsys.readouterr().err


def test_unknown_state_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", NOWHERE, "list", "--state", "running,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_missing_input_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--server", NOWHERE, "submit", "--input", "a.txt=/no/such/file", "--", "cat"])
    assert code == 2
    assert "/no/such/file" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--help"]) == 0
    assert "exit status" in capsys.readouterr().out


def test_server_from_environment_flag_before_or_after_command() -> None:
    parser = build_parser("env-host:1")
    assert parser.parse_args(["list"]).server == "env-host:1"
    assert parser.parse_args(["--server", "a:1", "list"]).server == "a:1"
    assert parser.parse_args(["list", "--server", "b:2"]).server == "b:2"


def test_argv_after_double_dash_keeps_its_own_flags() -> None:
    args = build_parser().parse_args(["submit", "--wait", "--", "ls", "--json", "-l"])
    assert args.wait and not args.json
    assert args.argv[-3:] == ["ls", "--json", "-l"]


def test_agent_defaults() -> None:
    args = build_parser().parse_args(["agent", "--server", "h:1", "--queue", "a", "-q", "b"])
    assert args.server == "h:1" and args.slots == 1 and args.queue == ["a", "b"]
    assert args.name  # the host name


@pytest.mark.parametrize(
    ("state", "code", "status"),
    [
        (JobState.COMPLETED, 0, 0),
        (JobState.FAILED, 3, 3),
        (JobState.FAILED, None, 1),
        (JobState.FAILED, 0, 1),  # e.g. an upload failed after a clean exit
        (JobState.FAILED, -9, 137),  # killed by SIGKILL
        (JobState.FAILED, 256, 1),
        (JobState.CANCELED, None, 130),
    ],
)
def test_exit_status_mapping(state: JobState, code: int | None, status: int) -> None:
    assert exit_status_of(state, code) == status
