"""UploadArtifact, ListArtifacts, ReadArtifact: digests checked, bytes back exactly, in chunks."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import grpc
import pytest

from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.e2e.conftest import CALL_TIMEOUT, Api, HandAgent, failure

pytestmark = pytest.mark.e2e

S = job_pb2.JobState
MiB = 1024 * 1024
CONTENT = random.Random(2).randbytes(5 * MiB // 2)  # 2.5 MiB
DIGEST = "sha256:" + hashlib.sha256(CONTENT).hexdigest()


def upload(
    agent: HandAgent,
    a: apb.JobAssignment,
    name: str,
    data: bytes,
    *,
    digest: str | None = None,
    chunk: int = MiB,
) -> apb.UploadArtifactResponse:
    def requests() -> Iterator[apb.UploadArtifactRequest]:
        yield apb.UploadArtifactRequest(
            header=apb.ArtifactHeader(
                **agent.fence(a),
                name=name,
                size_bytes=len(data),
                digest=digest or "sha256:" + hashlib.sha256(data).hexdigest(),
            )
        )
        for offset in range(0, len(data), chunk):
            yield apb.UploadArtifactRequest(chunk=data[offset : offset + chunk])

    return agent.api.agents.UploadArtifact(requests(), timeout=CALL_TIMEOUT)


def read(api: Api, job_id: str, name: str, **fields: object) -> list[jpb.ReadArtifactResponse]:
    request = jpb.ReadArtifactRequest(job_id=job_id, name=name, **fields)  # type: ignore[arg-type]
    return list(api.jobs.ReadArtifact(request, timeout=CALL_TIMEOUT))


def reassemble(parts: list[jpb.ReadArtifactResponse], start: int, max_chunk: int) -> bytes:
    out = b""
    for part in parts:
        assert part.offset == start + len(out), (part.offset, start + len(out))
        assert 0 < len(part.data) <= max_chunk, len(part.data)
        out += part.data
    return out


def listed(api: Api, job_id: str) -> list[job_pb2.Artifact]:
    return list(
        api.jobs.ListArtifacts(
            jpb.ListArtifactsRequest(job_id=job_id), timeout=CALL_TIMEOUT
        ).artifacts
    )


@pytest.fixture
def uploading(api: Api) -> tuple[HandAgent, apb.JobAssignment]:
    agent = api.agent("art")
    api.submit(["sh", "-c", "make things"], queue="art", outputs=["out/*"])
    a = agent.claim_one()
    agent.start(a)
    agent.update(a, S.JOB_STATE_UPLOADING)
    return agent, a


def test_upload_list_and_read_back_byte_for_byte(
    api: Api, uploading: tuple[HandAgent, apb.JobAssignment]
) -> None:
    agent, a = uploading
    stored = upload(agent, a, "out/data.bin", CONTENT).artifact
    assert (stored.name, stored.digest, stored.size_bytes) == ("out/data.bin", DIGEST, len(CONTENT))
    small = upload(agent, a, "out/empty.txt", b"").artifact
    assert small.size_bytes == 0
    assert agent.complete(a, S.JOB_STATE_COMPLETED, 0).accepted

    artifacts = {x.name: x for x in listed(api, a.job.id)}
    assert set(artifacts) == {"out/data.bin", "out/empty.txt"}
    data = artifacts["out/data.bin"]
    assert (data.digest, data.size_bytes, data.attempt) == (DIGEST, len(CONTENT), 1)
    assert data.HasField("create_time")
    assert artifacts["out/empty.txt"].digest == "sha256:" + hashlib.sha256(b"").hexdigest()

    whole = read(api, a.job.id, "out/data.bin")
    assert len(whole) == 3, "2.5 MiB in chunks of at most 1 MiB"
    assert reassemble(whole, 0, MiB) == CONTENT
    assert b"".join(p.data for p in read(api, a.job.id, "out/empty.txt")) == b""

    for offset in (1, MiB - 1, MiB, 2 * MiB + 12345, len(CONTENT) - 1, len(CONTENT)):
        parts = read(api, a.job.id, "out/data.bin", offset=offset)
        assert reassemble(parts, offset, MiB) == CONTENT[offset:], offset
    parts = read(api, a.job.id, "out/data.bin", offset=1000, chunk_size=100_000)
    assert reassemble(parts, 1000, 100_000) == CONTENT[1000:]


def test_read_artifact_bad_requests(
    api: Api, uploading: tuple[HandAgent, apb.JobAssignment]
) -> None:
    agent, a = uploading
    upload(agent, a, "out/x", b"hello")
    cases = [
        ({"name": "out/missing"}, grpc.StatusCode.NOT_FOUND),
        ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"name": "out/x", "offset": -1}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"name": "out/x", "offset": 6}, grpc.StatusCode.OUT_OF_RANGE),
        ({"name": "out/x", "chunk_size": MiB + 1}, grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for fields, code in cases:
        fail = failure(lambda f=fields: read(api, a.job.id, **f))  # type: ignore[misc]
        assert fail.code == code, (fields, fail)


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("wrong digest", "header.digest"),
        ("malformed digest", "header.digest"),
        ("fewer bytes than announced", "header.size_bytes"),
        ("more bytes than announced", "header.size_bytes"),
        ("absolute name", "header.name"),
        ("name escaping the work dir", "header.name"),
    ],
)
def test_bad_upload_is_invalid_and_lists_nothing(
    api: Api, uploading: tuple[HandAgent, apb.JobAssignment], case: str, field: str
) -> None:
    agent, a = uploading
    fence = agent.fence(a)
    header = apb.ArtifactHeader(
        **fence, name="out/data.bin", size_bytes=len(CONTENT), digest=DIGEST
    )
    body = CONTENT
    if case == "wrong digest":
        header.digest = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    elif case == "malformed digest":
        header.digest = "md5:1234"
    elif case == "fewer bytes than announced":
        body = CONTENT[:-1]
    elif case == "more bytes than announced":
        body = CONTENT + b"!"
    elif case == "absolute name":
        header.name = "/etc/passwd"
    else:
        header.name = "out/../../escape"

    def requests() -> Iterator[apb.UploadArtifactRequest]:
        yield apb.UploadArtifactRequest(header=header)
        for offset in range(0, len(body), MiB):
            yield apb.UploadArtifactRequest(chunk=body[offset : offset + MiB])

    fail = failure(lambda: api.agents.UploadArtifact(requests(), timeout=CALL_TIMEOUT))
    assert fail.code == grpc.StatusCode.INVALID_ARGUMENT, fail
    assert fail.names(field), fail.fields
    assert listed(api, a.job.id) == []
    # The attempt is unharmed: a correct upload still works and is the only one listed.
    assert upload(agent, a, "out/data.bin", CONTENT).artifact.digest == DIGEST
    assert [x.name for x in listed(api, a.job.id)] == ["out/data.bin"]
    assert api.get(a.job.id).state == S.JOB_STATE_UPLOADING
