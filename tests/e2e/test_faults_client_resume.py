"""A client following a job across a server SIGKILL and restart misses and repeats nothing.

The Python client resumes a broken event stream after the last sequence it saw, and a broken
log stream from the offsets it reached; this proves it against a real restart.
"""

from __future__ import annotations

import threading
from pathlib import Path

from gaffer import JobState, LogChunk, LogStream, SyncClient
from tests.chaos.rig import Rig
from tests.helpers import wait_until

LINES = 40
SCRIPT = f"for i in $(seq {LINES}); do echo line $i; echo err $i >&2; sleep 0.05; done"


def test_event_and_log_followers_resume_across_a_server_restart(tmp_path: Path) -> None:
    with Rig(tmp_path) as rig:
        rig.agent()
        job = rig.submit(["sh", "-c", SCRIPT])
        chunks: list[LogChunk] = []
        sequences: list[int] = []
        states: list[JobState] = []
        errors: list[BaseException] = []

        def follow_logs() -> None:
            try:
                with SyncClient(rig.server.address) as client:
                    chunks.extend(client.logs(job.id, follow=True))
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        def follow_events() -> None:
            try:
                with SyncClient(rig.server.address) as client:
                    for event in client.events(job.id):
                        sequences.append(event.sequence)
                        states.append(event.state)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=f) for f in (follow_logs, follow_events)]
        for thread in threads:
            thread.start()
        # Kill the server mid-output, once both followers have seen something.
        wait_until(lambda: len(chunks) >= 3 and sequences, timeout=20, what="output flowing")
        seen_before_kill = sum(len(c.data) for c in list(chunks))
        rig.restart_server()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a follower never finished"
        assert not errors, errors

        final = rig.get(job.id)
        assert final.state == JobState.COMPLETED
        for stream, word in ((LogStream.STDOUT, "line"), (LogStream.STDERR, "err")):
            mine = [c for c in chunks if c.stream is stream]
            offset = 0
            for chunk in mine:  # contiguous: no gap, no overlap
                assert chunk.offset == offset
                offset += len(chunk.data)
            text = b"".join(c.data for c in mine).decode()
            assert text == "".join(f"{word} {i}\n" for i in range(1, LINES + 1))
        total = sum(len(c.data) for c in chunks)
        assert seen_before_kill < total, "the restart came after all output: nothing resumed"
        assert sequences == sorted(set(sequences)), "events repeated or out of order"
        with SyncClient(rig.server.address) as client:
            stored = [e.sequence for e in client.events(job.id)]
        assert sequences == stored, "the follower missed events the server stored"
        assert states[-1] == JobState.COMPLETED
