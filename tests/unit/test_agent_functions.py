"""Function jobs without a server: the registry, argument decoding, and how a call ends."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from gaffer.agent import FunctionRegistry, NotRetryable, load_function_modules
from gaffer.agent._functions import builtin_functions, call_function, parse_arguments


def test_registry_names_functions_and_refuses_a_second_callable_under_one_name() -> None:
    registry = FunctionRegistry()

    @registry.register("billing.invoice")
    def invoice() -> None: ...

    @registry.register()
    def unnamed() -> None: ...

    registry.add("billing.invoice", invoice)  # the same callable again is harmless
    assert registry["billing.invoice"] is invoice
    assert f"{__name__}.{unnamed.__qualname__}" in registry
    assert len(registry) == 2
    with pytest.raises(ValueError, match="already registered"):
        registry.add("billing.invoice", unnamed)


def test_builtins_are_there_and_modules_load() -> None:
    assert {"gaffer.noop", "gaffer.echo", "gaffer.sleep"} <= set(builtin_functions())
    with pytest.raises(ImportError):
        load_function_modules(["no_such_module_for_gaffer_tests"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", ([], {})), ('[1, "a"]', ([1, "a"], {})), ('{"x": 2}', ([], {"x": 2}))],
)
def test_arguments_are_empty_an_array_or_an_object(
    text: str, expected: tuple[list[Any], dict[str, Any]]
) -> None:
    assert parse_arguments(text) == expected


@pytest.mark.parametrize("text", ["3", '"x"', "not json"])
def test_other_arguments_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_arguments(text)


async def test_async_functions_are_awaited_and_results_encoded() -> None:
    async def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    outcome = await call_function(add, "[2, 3]")
    assert (outcome.error, json.loads(outcome.result_json)) == (None, {"sum": 5})


async def test_plain_functions_run_in_a_thread_not_on_the_loop() -> None:
    loop_thread = threading.get_ident()

    def where(**kwargs: Any) -> Any:
        return {"same_thread": threading.get_ident() == loop_thread, **kwargs}

    outcome = await call_function(where, '{"k": "v"}')
    assert json.loads(outcome.result_json) == {"same_thread": False, "k": "v"}


async def test_none_is_an_empty_result() -> None:
    assert (await call_function(lambda: None, "")).result_json == ""


async def test_an_exception_is_a_retryable_failure_with_its_traceback() -> None:
    def boom() -> None:
        raise KeyError("missing")

    outcome = await call_function(boom, "")
    assert outcome.error == "KeyError: 'missing'"
    assert not outcome.not_retryable
    assert "Traceback" in outcome.traceback and "in boom" in outcome.traceback


async def test_not_retryable_marks_the_failure() -> None:
    def refuse() -> None:
        raise NotRetryable("bad input")

    outcome = await call_function(refuse, "")
    assert (outcome.error, outcome.not_retryable) == ("NotRetryable: bad input", True)


async def test_a_result_that_is_not_json_fails_clearly() -> None:
    outcome = await call_function(lambda: object(), "")
    assert outcome.error is not None and "not JSON-serialisable" in outcome.error
    assert outcome.result_json == ""


async def test_wrong_arguments_fail_like_any_exception() -> None:
    outcome = await call_function(lambda: None, "[1]")
    assert outcome.error is not None and outcome.error.startswith("TypeError:")
