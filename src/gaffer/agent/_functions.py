"""Function jobs: Python callables registered under a name, called with JSON arguments.

A function job is Gaffer's answer to a Celery task: the spec names a callable the agent knows
(``FunctionExecutor.name``) and carries its arguments as JSON; what it returns goes back as JSON
in ``CompleteJobRequest.result_json``. Register callables with :func:`function` (on the default
registry, which ``gaffer agent --functions MODULE`` collects) or with your own
:class:`FunctionRegistry` passed as ``AgentConfig.functions``.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import json
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


#: The running function job's work dir (set only for jobs with inputs or outputs).
work_dir_var: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "gaffer_work_dir", default=None
)


def work_dir() -> Path | None:
    """Inside a function job: its work dir (inputs written, outputs collected), else None.

    Only jobs with inputs or outputs get one; the others skip the directory to stay fast.
    """
    return work_dir_var.get()


class NotRetryable(Exception):
    """Raise it from a function job to fail the job for good, whatever its retry policy."""


class FunctionRegistry(Mapping[str, Callable[..., Any]]):
    """Callables by name; a read-only mapping once filled, so it can be ``AgentConfig.functions``.

    ::

        tasks = FunctionRegistry()

        @tasks.register("billing.invoice")
        async def invoice(customer: str, amount: int) -> dict: ...
    """

    def __init__(self) -> None:
        self._functions: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable[[F], F]:
        """A decorator registering a callable under ``name`` (default: ``module.qualname``).

        Raises:
            ValueError: another callable already has that name.
        """

        def decorate(fn: F) -> F:
            self.add(name or f"{fn.__module__}.{fn.__qualname__}", fn)
            return fn

        return decorate

    def add(self, name: str, fn: Callable[..., Any]) -> None:
        """Registers ``fn`` under ``name``; registering the same callable again is harmless.

        Raises:
            ValueError: another callable already has that name.
        """
        known = self._functions.get(name)
        if known is not None and known is not fn:
            raise ValueError(f"a function named {name!r} is already registered ({known!r})")
        self._functions[name] = fn

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return self._functions[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._functions)

    def __len__(self) -> int:
        return len(self._functions)


#: What :func:`function` registers into, and what ``--functions MODULE`` collects.
default_registry = FunctionRegistry()


def function(name: str | None = None) -> Callable[[F], F]:
    """Registers a callable on the default registry under ``name`` (default: module.qualname)."""
    return default_registry.register(name)


def load_function_modules(modules: Iterable[str]) -> dict[str, Callable[..., Any]]:
    """Imports ``modules`` (which register with :func:`function`) and returns what they registered.

    Raises:
        ImportError: a module cannot be imported.
    """
    for module in modules:
        importlib.import_module(module)
    return dict(default_registry)


def builtin_functions() -> dict[str, Callable[..., Any]]:
    """The functions every agent has (``gaffer.noop``, ``gaffer.echo``, ``gaffer.sleep``)."""
    from gaffer.agent import builtin_functions as module

    return dict(module.registry)


@dataclass(frozen=True)
class CallOutcome:
    """How a call ended: a JSON result, or an error message (with a traceback for the log)."""

    result_json: str = ""
    error: str | None = None
    not_retryable: bool = False
    traceback: str = ""


def parse_arguments(args_json: str) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments from ``args_json``: empty, an array or an object.

    Raises:
        ValueError: not JSON, or neither an array nor an object.
    """
    if not args_json:
        return [], {}
    value = json.loads(args_json)
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    raise ValueError("arguments must be a JSON array or object")


async def call_function(fn: Callable[..., Any], args_json: str) -> CallOutcome:
    """Calls ``fn`` with the JSON arguments and encodes what it returns.

    Coroutine functions are awaited on the running loop; plain callables run in a thread, so
    a blocking function does not stop the agent's heartbeats and log shipping.
    """
    try:
        args, kwargs = parse_arguments(args_json)
    except ValueError as error:
        return CallOutcome(error=f"bad arguments: {error}", not_retryable=True)
    try:
        if inspect.iscoroutinefunction(fn):
            value = await fn(*args, **kwargs)
        else:
            value = await asyncio.to_thread(fn, *args, **kwargs)
            if inspect.isawaitable(value):  # e.g. a functools.partial of a coroutine function
                value = await value
    except Exception as error:
        return CallOutcome(
            error=f"{type(error).__qualname__}: {error}",
            not_retryable=isinstance(error, NotRetryable),
            traceback="".join(traceback.format_exception(error)),
        )
    if value is None:
        return CallOutcome()
    try:
        return CallOutcome(result_json=json.dumps(value, separators=(",", ":")))
    except (TypeError, ValueError) as error:
        return CallOutcome(
            error=f"the result is not JSON-serialisable: {error}", not_retryable=True
        )
