"""Outputs a job writes come back through the client byte for byte, with the right digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

from gaffer import JobState, SyncClient
from tests.helpers import AgentProc, ServerProc

SCRIPT = (
    "mkdir -p out && head -c 2500000 /dev/urandom > out/data.bin && "
    "printf '{\"ok\": true}' > out/result.json && echo ignored > notes.txt && "
    "sha256sum out/data.bin"
)


def test_outputs_are_listed_and_read_back(
    server: ServerProc, agent: AgentProc, tmp_path: Path
) -> None:
    with SyncClient(server.address) as client:
        handle = client.submit(["sh", "-c", SCRIPT], outputs=["out/*"])
        job = handle.wait(timeout=60)
        assert job.state == JobState.COMPLETED, job.message
        printed = "".join(c.text for c in handle.logs()).split()[0]

        artifacts = {a.name: a for a in handle.artifacts()}
        assert set(artifacts) == {"out/data.bin", "out/result.json"}
        data = artifacts["out/data.bin"]
        assert data.size_bytes == 2_500_000
        assert data.digest == "sha256:" + printed
        content = data.read_bytes()
        assert hashlib.sha256(content).hexdigest() == printed
        assert artifacts["out/result.json"].read_json() == {"ok": True}

        copied = data.copy_to(tmp_path / "copy.bin")
        assert copied.read_bytes() == content
        assert JobState.UPLOADING in [s.state for s in job.history]


def test_inputs_are_written_into_the_work_dir(server: ServerProc, agent: AgentProc) -> None:
    with SyncClient(server.address) as client:
        handle = client.submit(
            ["sh", "-c", "cat conf/settings.txt; cat"],
            inputs={"conf/settings.txt": "from input\n"},
            stdin=b"from stdin\n",
        )
        assert handle.wait(timeout=30).state == JobState.COMPLETED
        assert "".join(c.text for c in handle.logs()) == "from input\nfrom stdin\n"
