"""The CLI's function-job flags: --args decoding, --functions loading, --slots defaults."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gaffer.cli import build_parser
from gaffer.cli._args import UsageError
from gaffer.cli._job_cmds import function_arguments
from gaffer.cli._server_cmds import FUNCTION_SLOTS, _functions, agent_slots


def test_args_json_is_an_array_or_an_object() -> None:
    assert function_arguments(None) == ([], {})
    assert function_arguments("[1, 2]") == ([1, 2], {})
    assert function_arguments('{"a": 1}') == ([], {"a": 1})
    for bad in ("3", "{nope"):
        with pytest.raises(UsageError):
            function_arguments(bad)


def test_agent_flags_and_their_defaults() -> None:
    args = build_parser().parse_args(["agent", "--server", "h:1"])
    assert (args.slots, args.stop_grace, args.functions) == (1, 30.0, None)
    args = build_parser().parse_args(["dev", "--stop-grace", "2", "--functions", "a.b"])
    assert (args.stop_grace, args.functions) == (2.0, ["a.b"])


def test_functions_raise_the_default_slots_only() -> None:
    parse = build_parser().parse_args
    assert agent_slots(parse(["agent"])) == 1
    assert agent_slots(parse(["agent", "--functions", "m"])) == FUNCTION_SLOTS == 16
    assert agent_slots(parse(["agent", "--functions", "m", "--slots", "1"])) == 1
    assert agent_slots(parse(["agent", "--slots", "3"])) == 3


def test_a_functions_module_that_cannot_be_imported_is_a_usage_error() -> None:
    args = build_parser().parse_args(["agent", "--functions", "no_such_module_for_gaffer_tests"])
    with pytest.raises(UsageError, match="no_such_module_for_gaffer_tests"):
        _functions(args)


def test_a_functions_module_in_the_current_directory_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with `python -m`, even when `gaffer` runs as a console script (cwd not on sys.path)."""
    (tmp_path / "cwd_tasks_for_test.py").write_text(
        "from gaffer.agent import function\n\n@function('cwd.test')\ndef f():\n    return 1\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    args = build_parser().parse_args(["agent", "--functions", "cwd_tasks_for_test"])
    assert "cwd.test" in _functions(args)
