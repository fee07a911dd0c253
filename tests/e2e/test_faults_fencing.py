"""Fencing: an agent frozen past its lease comes back to find its attempt superseded.

Agent A runs attempt 1 and is frozen with SIGSTOP; its job process keeps running and writing
(it lives in a session of its own). Once the server's sweeper has handed the job to agent B as
attempt 2 and B has finished it, A is thawed with SIGCONT: whatever A still reports about
attempt 1 (status, logs, completion) is refused, so B's result stands.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc

from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.chaos.procs import frozen
from tests.chaos.rig import FAST_LEASES, Rig, claims, finals
from tests.e2e.conftest import CALL_TIMEOUT, STDOUT, HandAgent, failure, without_timings
from tests.helpers import wait_until

S = job_pb2.JobState
# Attempt 1 writes a line every 50 ms for a minute; later attempts write 5 lines and exit 0.
# Every line names its attempt, so a late line of attempt 1 could not hide in attempt 2's log.
WRITER = (
    "sh",
    "-c",
    'n=5; [ "$GAFFER_ATTEMPT" = 1 ] && n=1200; i=1; while [ $i -le $n ]; do '
    'echo "attempt $GAFFER_ATTEMPT line $i"; i=$((i+1)); sleep 0.05; done',
)


def test_frozen_agent_is_fenced_when_it_resumes(tmp_path: Path) -> None:
    with Rig(tmp_path, *FAST_LEASES) as rig:
        a = rig.agent("--slots", "1", name="frozen-a")
        job = rig.submit(WRITER, retry_policy=job_pb2.RetryPolicy(max_attempts=3))
        wait_until(
            lambda: (
                rig.get(job.id).state == S.JOB_STATE_RUNNING
                and rig.stdout(job.id).count(b"\n") >= 3
            ),
            timeout=15,
            what="attempt 1 running and its logs arriving",
        )
        a_id = rig.get(job.id).agent_id
        b = rig.agent("--slots", "1", name="standby-b")

        with frozen(a):
            # "Past its lease" is the server's view: the sweeper gave the job to B.
            wait_until(lambda: rig.get(job.id).attempt == 2, timeout=10, what="attempt 2")
            first_log = rig.stdout(job.id, attempt=1)
            done = wait_until(
                lambda: (j := rig.get(job.id)).state == S.JOB_STATE_COMPLETED and j,
                timeout=15,
                what="B to complete attempt 2",
            )
            # Attempt 1's process is still running and writing: only A could stop it.
            assert rig.pids(job.id, 1), "attempt 1's process should still be running"

        # A is thawed: its heartbeat or its next write tells it the attempt is gone; it kills
        # attempt 1's process. Nothing it sent on the way may have changed the job.
        wait_until(lambda: not rig.pids(job.id, 1), timeout=10, what="A to stop attempt 1")
        wait_until(
            lambda: re.search(r"lease lost|no longer ours|refused", a.output()),
            timeout=10,
            what="A to log that attempt 1 is no longer its own",
        )
        after = rig.get(job.id)
        assert without_timings(after) == without_timings(done), "a late write changed the job"
        assert after.state == S.JOB_STATE_COMPLETED and after.attempt == 2
        assert after.agent_id != a_id
        assert [c.attempt for c in claims(after)] == [1, 2]
        assert len(finals(after)) == 1, [S.Name(s.state) for s in after.history]
        assert finals(after)[0].attempt == 2

        expected = "".join(f"attempt 2 line {i}\n" for i in range(1, 6)).encode()
        assert rig.stdout(job.id) == expected
        # Attempt 1 kept writing while A was frozen; none of it was stored after the hand-over.
        assert rig.stdout(job.id, attempt=1) == first_log
        assert first_log.startswith(b"attempt 1 line 1\n")
        assert b"attempt 2" not in first_log
        assert b.popen.poll() is None


def test_every_late_write_of_a_superseded_attempt_is_refused(tmp_path: Path) -> None:
    """The same, on the wire: a hand-driven agent goes silent, then tries every write."""
    with Rig(tmp_path, *FAST_LEASES) as rig:
        job = rig.submit(WRITER, retry_policy=job_pb2.RetryPolicy(max_attempts=3))
        silent = HandAgent.register(rig.api, "silent", ["default"], 1)
        late = silent.claim_one()
        silent.start(late)
        silent.push(late, [(STDOUT, 0, b"attempt 1 line 1\n")])
        rig.agent("--slots", "1", name="successor")
        done = wait_until(
            lambda: (j := rig.get(job.id)).state == S.JOB_STATE_COMPLETED and j,
            timeout=15,
            what="the successor to complete attempt 2",
        )
        assert done.attempt == 2

        fence = HandAgent.fence(late)
        writes = {
            "UpdateJobStatus": lambda: silent.update(late, S.JOB_STATE_UPLOADING),
            "PushLogs": lambda: silent.push(late, [(STDOUT, 17, b"attempt 1 line 2\n")]),
            "UploadArtifact": lambda: rig.api.agents.UploadArtifact(
                iter(
                    [
                        apb.UploadArtifactRequest(
                            header=apb.ArtifactHeader(
                                **fence,
                                name="late.txt",
                                size_bytes=0,
                                digest="sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                            )
                        )
                    ]
                ),
                timeout=CALL_TIMEOUT,
            ),
            "CompleteJob": lambda: silent.complete(late, S.JOB_STATE_FAILED, 1, "late"),
            "ReleaseJob": lambda: rig.api.agents.ReleaseJob(
                apb.ReleaseJobRequest(**fence, reason="late"), timeout=CALL_TIMEOUT
            ),
        }
        for name, write in writes.items():
            refused = failure(write)
            assert refused.code == grpc.StatusCode.FAILED_PRECONDITION, (name, refused)
            assert refused.reason == "STALE_ATTEMPT", (name, refused)

        after = rig.get(job.id)
        assert without_timings(after) == without_timings(done)
        assert len(finals(after)) == 1
        assert rig.stdout(job.id, attempt=1) == b"attempt 1 line 1\n"
        assert b"attempt 1" not in rig.stdout(job.id)
        listed = rig.api.jobs.ListArtifacts(
            jpb.ListArtifactsRequest(job_id=job.id), timeout=CALL_TIMEOUT
        )
        assert not listed.artifacts


def test_late_complete_of_a_lapsed_attempt_is_not_accepted(tmp_path: Path) -> None:
    with Rig(tmp_path, *FAST_LEASES) as rig:
        job = rig.submit(WRITER, retry_policy=job_pb2.RetryPolicy(max_attempts=2))
        silent = HandAgent.register(rig.api, "silent", ["default"], 1)
        late = silent.claim_one()
        silent.start(late)
        requeued = wait_until(
            lambda: (j := rig.get(job.id)).state == S.JOB_STATE_PENDING and j,
            timeout=10,
            what="the lease to lapse",
        )
        try:
            accepted = silent.complete(late, S.JOB_STATE_COMPLETED, 0, "exit code 0").accepted
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
            accepted = False
        assert without_timings(rig.get(job.id)) == without_timings(requeued)  # holds today
        assert not accepted, "the agent is told its COMPLETED was recorded; the job will rerun"
