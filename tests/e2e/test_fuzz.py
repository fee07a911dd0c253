"""Issue 3, test 9: random and mutated requests to every RPC of JobService and AgentService
never crash the server and never end INTERNAL or UNKNOWN: every status is a deliberate one.

Requests are raw bytes sent through generic calls (no serializer), so the server sees exactly
what a buggy or hostile client in any language could send: messages built by hypothesis from
the descriptors (huge and negative numbers, unknown enum values, long strings, deep nesting),
valid requests with some fields replaced, valid bytes mutated, and plain random bytes.

``make test`` runs a derandomized, bounded version; ``GAFFER_FUZZ_EXAMPLES=2000
GAFFER_FUZZ_RANDOM=1`` runs a longer, random one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gaffer.v1 import agent_service_pb2, job_pb2, job_service_pb2
from tests.e2e.conftest import CALL_TIMEOUT, Api
from tests.helpers import ServerProc

apb = agent_service_pb2
jpb = job_service_pb2
F = FieldDescriptor

EXAMPLES = int(os.environ.get("GAFFER_FUZZ_EXAMPLES", "200"))
RANDOM = bool(os.environ.get("GAFFER_FUZZ_RANDOM"))
CALL_DEADLINE = 0.4  # long polls and following streams are cut here (DEADLINE_EXCEEDED is fine)
STREAM_FRAMES = 3
DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # our own deadline on a long poll or a live stream
}

METHODS: list[MethodDescriptor] = [
    *job_service_pb2.DESCRIPTOR.services_by_name["JobService"].methods,
    *agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].methods,
]

_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)  # type: ignore[no-any-return]


def scalars(field: FieldDescriptor, words: list[str]) -> st.SearchStrategy[Any]:
    """Values for one scalar field, edge cases first."""
    if field.type in _INT_RANGES:
        lo, hi = _INT_RANGES[field.type]
        edges = sorted({0, 1, 2, lo, hi, max(lo, -1), 1000, 2**31 - 1, 86_400 * 365})
        return st.one_of(st.sampled_from([e for e in edges if lo <= e <= hi]), st.integers(lo, hi))
    if field.type == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_DOUBLE:
        return st.floats()
    if field.type == F.TYPE_FLOAT:
        return st.floats(width=32)
    if field.type == F.TYPE_STRING:
        return st.one_of(
            st.text(max_size=24),
            st.sampled_from(words),
            st.sampled_from(["", " ", "\x00", "a" * 300, "é" * 70_000, "../../etc/passwd"]),
        )
    if field.type == F.TYPE_BYTES:
        return st.one_of(st.binary(max_size=48), st.just(b"\x00" * 300_000))
    raise AssertionError(f"no strategy for {field.full_name}")


@st.composite
def messages(
    draw: st.DrawFn, descriptor: Descriptor, words: list[str], depth: int = 0, base: Any = None
) -> Message:
    """A message of ``descriptor`` with random fields; from ``base``, some fields replaced."""
    msg = message_class(descriptor)()
    if base is not None:
        msg.CopyFrom(base)
    for field in descriptor.fields:
        if not draw(st.booleans()) or (base is not None and draw(st.booleans())):
            continue
        msg.ClearField(field.name)
        value_field = field
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            for _ in range(draw(st.integers(0, 3))):
                key = draw(scalars(key_field, words))
                target = getattr(msg, field.name)
                if value_field.message_type is not None:
                    if depth < 2:
                        target[key].CopyFrom(
                            draw(messages(value_field.message_type, words, depth + 1))
                        )
                else:
                    _set(
                        lambda v, t=target, k=key: t.__setitem__(k, v),
                        draw(scalars(value_field, words)),
                    )
            continue
        if field.message_type is not None:
            if depth >= 3:
                continue
            count = draw(st.integers(0, 3)) if field.is_repeated else 1
            for _ in range(count):
                value = draw(messages(field.message_type, words, depth + 1))
                if field.is_repeated:
                    getattr(msg, field.name).add().CopyFrom(value)
                else:
                    getattr(msg, field.name).CopyFrom(value)
        elif field.is_repeated:
            values = draw(st.lists(scalars(field, words), max_size=4))
            _set(getattr(msg, field.name).extend, values)
        else:
            _set(lambda v, f=field.name: setattr(msg, f, v), draw(scalars(field, words)))
    return msg


def _set(assign: Any, value: Any) -> None:
    # The Python runtime may refuse a value (a closed enum, a float for an int): skip it.
    with contextlib.suppress(ValueError, TypeError):
        assign(value)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """Valid bytes with a byte flipped, a piece cut or cloned, or random bytes inserted."""
    if not data:
        return draw(st.binary(min_size=1, max_size=16))
    i = draw(st.integers(0, len(data) - 1))
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "clone"]))
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    if kind == "truncate":
        return data[:i]
    if kind == "insert":
        return data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
    j = draw(st.integers(i, len(data)))
    return data[:j] + data[i:j] + data[j:]


@dataclass
class Seeds:
    """Valid requests for every method, naming real jobs, agents and leases."""

    requests: dict[str, list[Message]]
    words: list[str]
    job_id: str


@pytest.fixture(scope="module")
def seeds(shared_api: Api) -> Seeds:
    api = shared_api
    agent = api.agent("fuzz")
    done = api.submit(("true",), queue="fuzz")
    running = api.submit(("sleep", "600"), queue="fuzz", labels={"k": "v"})
    first = agent.claim_one()
    agent.finish(first)
    a = agent.claim_one()
    agent.start(a)
    agent.push(a, [(job_pb2.LOG_STREAM_STDOUT, 0, b"out\n"), (job_pb2.LOG_STREAM_STDERR, 0, b"e")])
    fence = {"job_id": a.job.id, "attempt": a.attempt, "lease_token": a.lease_token}
    chunk = job_pb2.LogChunk(stream=job_pb2.LOG_STREAM_STDOUT, offset=4, data=b"more\n")
    digest = "sha256:" + hashlib.sha256(b"abc").hexdigest()
    upload = [
        apb.UploadArtifactRequest(
            header=apb.ArtifactHeader(**fence, name="out.txt", size_bytes=3, digest=digest)  # type: ignore[arg-type]
        ),
        apb.UploadArtifactRequest(chunk=b"abc"),
    ]
    requests: dict[str, list[Message]] = {
        "SubmitJob": [jpb.SubmitJobRequest(spec=api.spec(("echo", "hi")), request_id="fuzz-1")],
        "GetJob": [jpb.GetJobRequest(job_id=running.id)],
        "ListJobs": [jpb.ListJobsRequest(page_size=2, filter=jpb.JobFilter(labels={"k": "v"}))],
        "CancelJob": [jpb.CancelJobRequest(job_id=done.id, reason="fuzz")],
        "WaitJob": [jpb.WaitJobRequest(job_id=done.id)],
        "StreamJobEvents": [jpb.StreamJobEventsRequest(job_id=running.id)],
        "StreamLogs": [jpb.StreamLogsRequest(job_id=running.id, follow=True)],
        "ListArtifacts": [jpb.ListArtifactsRequest(job_id=done.id)],
        "ReadArtifact": [jpb.ReadArtifactRequest(job_id=done.id, name="out.txt")],
        "RegisterAgent": [apb.RegisterAgentRequest(name="fuzz-agent", queues=["fuzz"])],
        "ClaimJob": [apb.ClaimJobRequest(agent_id=agent.id, max_jobs=1)],
        "Heartbeat": [
            apb.HeartbeatRequest(
                agent_id=agent.id, running=[apb.AttemptRef(job_id=a.job.id, attempt=a.attempt)]
            )
        ],
        "UpdateJobStatus": [
            apb.UpdateJobStatusRequest(**fence, state=job_pb2.JOB_STATE_RUNNING)  # type: ignore[arg-type]
        ],
        "PushLogs": [apb.PushLogsRequest(**fence, chunk=chunk)],  # type: ignore[arg-type]
        "UploadArtifact": upload,
        "CompleteJob": [apb.CompleteJobRequest(**fence, state=job_pb2.JOB_STATE_COMPLETED)],  # type: ignore[arg-type]
        "ReleaseJob": [apb.ReleaseJobRequest(**fence, reason="fuzz")],  # type: ignore[arg-type]
        "ListAgents": [apb.ListAgentsRequest(page_size=1)],
        "DrainAgent": [apb.DrainAgentRequest(agent_id=agent.id)],
    }
    words = [done.id, running.id, agent.id, a.lease_token, "fuzz", "default", "out.txt", "k"]
    return Seeds(requests, words, running.id)


def payloads(method: MethodDescriptor, seeds: Seeds) -> st.SearchStrategy[bytes]:
    descriptor = method.input_type
    seed = seeds.requests.get(method.name) or [message_class(descriptor)()]
    seed_bytes = [s.SerializeToString() for s in seed]
    return st.one_of(
        messages(descriptor, seeds.words).map(lambda m: m.SerializeToString()),
        st.sampled_from(seed)
        .flatmap(lambda s: messages(descriptor, seeds.words, base=s))
        .map(lambda m: m.SerializeToString()),
        st.sampled_from(seed_bytes).flatmap(mutated),
        st.binary(max_size=64),
    )


def call(channel: grpc.Channel, method: MethodDescriptor, payload: list[bytes]) -> grpc.StatusCode:
    """Sends the raw request(s); the call's final status (reading a few frames of a stream)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming and not method.server_streaming:
            channel.stream_unary(path)(iter(payload), timeout=CALL_DEADLINE)
        elif method.server_streaming:
            # A bidi method (Session) as a stream, not stream_unary: grpcio's blocking
            # stream_unary call then hung past its deadline on the second answer.
            stream = (
                channel.stream_stream(path)(iter(payload), timeout=CALL_DEADLINE)
                if method.client_streaming
                else channel.unary_stream(path)(payload[0], timeout=CALL_DEADLINE)
            )
            for i, _ in enumerate(stream):
                if i + 1 >= STREAM_FRAMES:
                    stream.cancel()
                    break
        else:
            channel.unary_unary(path)(payload[0], timeout=CALL_DEADLINE)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def channel(shared_server: ServerProc) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        shared_server.address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ) as ch:
        yield ch


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_fuzzed_requests_get_deliberate_statuses(
    method: MethodDescriptor, seeds: Seeds, channel: grpc.Channel, shared_server: ServerProc
) -> None:
    strategy = payloads(method, seeds)
    batch = (
        st.lists(strategy, min_size=1, max_size=3)
        if method.client_streaming
        else (strategy.map(lambda p: [p]))
    )

    @settings(
        max_examples=EXAMPLES,
        derandomize=not RANDOM,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(batch)
    def fuzz(payload: list[bytes]) -> None:
        code = call(channel, method, payload)
        assert code in DELIBERATE, f"{method.name} answered {code.name}"
        assert shared_server.popen.poll() is None, "the server died"

    fuzz()


def test_the_server_still_answers_normally_after_the_fuzzing(
    shared_api: Api, shared_server: ServerProc, seeds: Seeds
) -> None:
    assert shared_server.popen.poll() is None
    assert shared_api.get(seeds.job_id).id == seeds.job_id
    job = shared_api.submit(("true",))
    got = shared_api.jobs.GetJob(jpb.GetJobRequest(job_id=job.id), timeout=CALL_TIMEOUT)
    assert got.job.state == job_pb2.JOB_STATE_PENDING
