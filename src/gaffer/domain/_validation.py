"""Validation of what clients and agents send: every problem becomes a FieldViolation."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath

from google.protobuf import duration_pb2

from gaffer.domain._errors import FieldViolation, InvalidArgument
from gaffer.domain._limits import Limits
from gaffer.v1 import job_pb2

_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.\-/]*[A-Za-z0-9])?$")
_QUEUE = re.compile(r"^[a-z0-9]([a-z0-9_.\-]*[a-z0-9])?$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def require_id(value: str, field: str, limits: Limits) -> None:
    """An id field must be present and of sane length."""
    if not value:
        raise InvalidArgument.single(field, "is required")
    if len(value) > limits.max_id_chars:
        raise InvalidArgument.single(field, f"is longer than {limits.max_id_chars} characters")


def check_page_size(page_size: int, limits: Limits, field: str = "page_size") -> int:
    """The page size to use; INVALID_ARGUMENT when negative or over the maximum."""
    if page_size < 0:
        raise InvalidArgument.single(field, "must not be negative")
    if page_size > limits.max_page_size:
        raise InvalidArgument.single(
            field, f"is {page_size}, over the maximum of {limits.max_page_size}"
        )
    return page_size or limits.default_page_size


def check_enum_values(
    values: Iterable[int], enum: object, field: str, *, allow_unspecified: bool = False
) -> list[FieldViolation]:
    """Violations for UNSPECIFIED (unless allowed) or unknown numbers of a proto enum."""
    known = set(enum.values())  # type: ignore[attr-defined]
    violations = []
    for i, value in enumerate(values):
        name = f"{field}[{i}]"
        if value == 0 and not allow_unspecified:
            violations.append(FieldViolation(name, "must not be UNSPECIFIED"))
        elif value not in known:
            violations.append(FieldViolation(name, f"{value} is not a known value"))
    return violations


_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.\-]*[A-Za-z0-9])?$")


def validate_name(value: str, field: str, limits: Limits) -> list[FieldViolation]:
    """Agent names and queue names: 1-63 letters, digits or _.- ."""
    if not value:
        return [FieldViolation(field, "is required")]
    if len(value) > limits.max_queue_chars or not _NAME.match(value):
        return [
            FieldViolation(
                field,
                f"must be 1-{limits.max_queue_chars} letters, digits or _.-, starting and "
                "ending with a letter or digit",
            )
        ]
    return []


def _check_duration(
    value: duration_pb2.Duration, field: str, max_seconds: int, out: list[FieldViolation]
) -> None:
    if value.seconds < 0 or value.nanos < 0:
        out.append(FieldViolation(field, "must not be negative"))
    elif not 0 <= value.nanos < 1_000_000_000:
        out.append(FieldViolation(field, "has nanos out of range"))
    elif value.seconds > max_seconds:
        out.append(FieldViolation(field, f"must be at most {max_seconds} s"))


def check_labels(
    labels: Mapping[str, str], field: str, limits: Limits, out: list[FieldViolation]
) -> None:
    if len(labels) > limits.max_labels:
        out.append(FieldViolation(field, f"has {len(labels)} entries, over {limits.max_labels}"))
        return
    for key, value in labels.items():
        if len(key) > limits.max_label_key_chars or not _LABEL_KEY.match(key):
            out.append(
                FieldViolation(
                    f"{field}[{key[:64]!r}]",
                    f"key must be 1-{limits.max_label_key_chars} letters, digits or _.-/, "
                    "starting and ending with a letter or digit",
                )
            )
        elif len(value) > limits.max_label_value_chars:
            out.append(
                FieldViolation(
                    f"{field}[{key!r}]",
                    f"value is longer than {limits.max_label_value_chars} characters",
                )
            )


def stays_inside(path: str) -> bool:
    """Whether ``path`` names something inside a directory: relative, no "..", not "." itself.

    The server refuses other paths at submit; the agent checks again before touching disk.
    """
    pure = PurePosixPath(path)
    return (
        bool(path)
        and "\0" not in path
        and not pure.is_absolute()
        and ".." not in pure.parts
        and pure != PurePosixPath(".")
    )


def check_relative_path(path: str, field: str, limits: Limits, out: list[FieldViolation]) -> None:
    if not path:
        out.append(FieldViolation(field, "must not be empty"))
    elif len(path) > limits.max_path_chars:
        out.append(FieldViolation(field, f"is longer than {limits.max_path_chars} characters"))
    elif not stays_inside(path):
        out.append(FieldViolation(field, "must be a relative path inside the working directory"))


def _check_exec(exec_: job_pb2.ExecExecutor, limits: Limits, out: list[FieldViolation]) -> None:
    argv = list(exec_.argv)
    if not argv:
        out.append(FieldViolation("spec.exec.argv", "must name a program to run"))
    elif len(argv) > limits.max_argv_entries:
        out.append(
            FieldViolation(
                "spec.exec.argv", f"has {len(argv)} entries, over {limits.max_argv_entries}"
            )
        )
    elif sum(len(a.encode()) + 1 for a in argv) > limits.max_argv_bytes:
        out.append(FieldViolation("spec.exec.argv", f"is over {limits.max_argv_bytes} bytes"))
    elif not argv[0]:
        out.append(FieldViolation("spec.exec.argv[0]", "must not be empty"))
    elif any("\0" in a for a in argv):
        out.append(FieldViolation("spec.exec.argv", "must not contain NUL characters"))
    env = dict(exec_.env)
    if len(env) > limits.max_env_entries:
        out.append(
            FieldViolation(
                "spec.exec.env", f"has {len(env)} entries, over {limits.max_env_entries}"
            )
        )
    elif sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items()) > limits.max_env_bytes:
        out.append(FieldViolation("spec.exec.env", f"is over {limits.max_env_bytes} bytes"))
    else:
        for key, value in env.items():
            if not _ENV_KEY.match(key):
                out.append(
                    FieldViolation(f"spec.exec.env[{key[:64]!r}]", "is not a valid variable name")
                )
            elif "\0" in value:
                out.append(
                    FieldViolation(f"spec.exec.env[{key!r}]", "must not contain NUL characters")
                )
    if len(exec_.stdin) > limits.max_stdin_bytes:
        out.append(FieldViolation("spec.exec.stdin", f"is over {limits.max_stdin_bytes} bytes"))


_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]*$")


def _check_function(
    fn: job_pb2.FunctionExecutor, limits: Limits, out: list[FieldViolation]
) -> None:
    if not fn.name:
        out.append(FieldViolation("spec.function.name", "is required"))
    elif len(fn.name) > limits.max_queue_chars * 2 or not _FUNCTION_NAME.match(fn.name):
        out.append(
            FieldViolation(
                "spec.function.name",
                "must be a name like 'module.task': letters, digits and _.:-",
            )
        )
    if len(fn.args_json.encode()) > limits.max_stdin_bytes:
        out.append(
            FieldViolation("spec.function.args_json", f"is over {limits.max_stdin_bytes} bytes")
        )
    elif fn.args_json:
        try:
            args = json.loads(fn.args_json)
        except ValueError as exc:
            out.append(FieldViolation("spec.function.args_json", f"is not JSON: {exc}"))
        else:
            if not isinstance(args, (list, dict)):
                out.append(
                    FieldViolation(
                        "spec.function.args_json", "must be an array or an object of arguments"
                    )
                )


def validate_spec(spec: job_pb2.JobSpec, limits: Limits, field: str = "spec") -> None:
    """Raises InvalidArgument listing every problem of a submitted spec."""
    out: list[FieldViolation] = []
    size = spec.ByteSize()
    if size > limits.max_spec_bytes:
        raise InvalidArgument.single(field, f"is {size} bytes, over {limits.max_spec_bytes}")
    executor = spec.WhichOneof("executor")
    if executor is None:
        out.append(FieldViolation("spec.exec", "an executor is required"))
    elif executor == "exec":
        _check_exec(spec.exec, limits, out)
    elif executor == "function":
        _check_function(spec.function, limits, out)
    check_labels(spec.labels, "spec.labels", limits, out)
    check_labels(spec.node_selector, "spec.node_selector", limits, out)
    if spec.queue and (len(spec.queue) > limits.max_queue_chars or not _QUEUE.match(spec.queue)):
        out.append(
            FieldViolation(
                "spec.queue",
                f"must be 1-{limits.max_queue_chars} lower-case letters, digits or _.-",
            )
        )
    if abs(spec.priority) > limits.max_priority:
        out.append(
            FieldViolation(
                "spec.priority", f"must be between -{limits.max_priority} and {limits.max_priority}"
            )
        )
    if spec.HasField("timeout"):
        _check_duration(spec.timeout, "spec.timeout", limits.max_timeout_seconds, out)
        if spec.timeout.seconds == 0 and spec.timeout.nanos == 0:
            out.append(FieldViolation("spec.timeout", "must be positive when set"))
    _check_retry(spec.retry_policy, limits, out)
    res = spec.resources
    for name in ("cpu", "memory_bytes", "gpu"):
        if getattr(res, name) < 0:
            out.append(FieldViolation(f"spec.resources.{name}", "must not be negative"))
    _check_inputs(spec, limits, out)
    if len(spec.outputs) > limits.max_outputs:
        out.append(FieldViolation("spec.outputs", f"has more than {limits.max_outputs} patterns"))
    for i, pattern in enumerate(spec.outputs):
        check_relative_path(pattern, f"spec.outputs[{i}]", limits, out)
    if out:
        raise InvalidArgument(out, reason="INVALID_SPEC")


def _check_retry(policy: job_pb2.RetryPolicy, limits: Limits, out: list[FieldViolation]) -> None:
    if not 0 <= policy.max_attempts <= limits.max_attempts:
        out.append(
            FieldViolation(
                "spec.retry_policy.max_attempts", f"must be between 0 and {limits.max_attempts}"
            )
        )
    for name in ("initial_backoff", "max_backoff"):
        if policy.HasField(name):
            _check_duration(
                getattr(policy, name),
                f"spec.retry_policy.{name}",
                limits.max_backoff_seconds,
                out,
            )
    if policy.backoff_multiplier and not 1.0 <= policy.backoff_multiplier <= 10.0:
        out.append(
            FieldViolation("spec.retry_policy.backoff_multiplier", "must be between 1 and 10")
        )


def _check_inputs(spec: job_pb2.JobSpec, limits: Limits, out: list[FieldViolation]) -> None:
    if len(spec.inputs) > limits.max_inputs:
        out.append(FieldViolation("spec.inputs", f"has more than {limits.max_inputs} files"))
        return
    total = sum(len(f.content) for f in spec.inputs)
    if total > limits.max_inputs_bytes:
        out.append(FieldViolation("spec.inputs", f"is over {limits.max_inputs_bytes} bytes"))
    seen: set[str] = set()
    for i, item in enumerate(spec.inputs):
        check_relative_path(item.path, f"spec.inputs[{i}].path", limits, out)
        if item.path in seen:
            out.append(FieldViolation(f"spec.inputs[{i}].path", "is given twice"))
        seen.add(item.path)
        if item.mode > 0o7777:
            out.append(FieldViolation(f"spec.inputs[{i}].mode", "must be permission bits"))
