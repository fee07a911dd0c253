"""Durability: a submit the server answered survives `kill -9` of the server.

500 submits are acknowledged one by one (their ids recorded) while a second client keeps
submitting as fast as it can; the server is SIGKILLed with that client's call in flight and
restarted on the same port and data dir. Every acknowledged job is there, from both clients;
the call the kill cut off is retried with its request_id and gives exactly one job.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc

from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.chaos.rig import Rig
from tests.e2e.conftest import CALL_TIMEOUT, Api
from tests.helpers import wait_until

S = job_pb2.JobState
ACKNOWLEDGED = 500


class Submitter:
    """Submits back to back on its own channel until the server goes away."""

    def __init__(self, rig: Rig) -> None:
        self.api = Api.connect(rig.server.address)
        self.spec = rig.spec(["true"], labels={"client": "background"})
        self.acked: dict[str, str] = {}  # request_id -> job id
        self.cut_off: str | None = None  # the request_id whose call the kill interrupted
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while True:
            n += 1
            request_id = f"background-{n}"
            request = jpb.SubmitJobRequest(spec=self.spec, request_id=request_id)
            try:
                response = self.api.jobs.SubmitJob(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as error:
                self.cut_off, self.error = request_id, error
                return
            self.acked[request_id] = response.job.id

    def join(self) -> None:
        self._thread.join(CALL_TIMEOUT)
        assert not self._thread.is_alive()
        self.api.close()


def test_acknowledged_submits_survive_kill_9(tmp_path: Path) -> None:
    with Rig(tmp_path) as rig:
        background = Submitter(rig)
        wait_until(lambda: len(background.acked) >= 10, timeout=10, what="background submits")
        spec = rig.spec(["true"], labels={"client": "counted"})
        acked = [
            rig.api.jobs.SubmitJob(jpb.SubmitJobRequest(spec=spec), timeout=CALL_TIMEOUT).job.id
            for _ in range(ACKNOWLEDGED)
        ]
        assert background.cut_off is None, "the background client must still be submitting"
        rig.restart_server()  # SIGKILL, then the same port and data dir
        background.join()
        assert background.error is not None
        assert background.error.code() == grpc.StatusCode.UNAVAILABLE, background.error

        stored = {job.id: job for job in rig.api.all_jobs()}
        missing = [job_id for job_id in acked if job_id not in stored]
        assert not missing, f"{len(missing)} acknowledged jobs lost, e.g. {missing[:3]}"
        lost_background = [j for j in background.acked.values() if j not in stored]
        assert not lost_background, f"{len(lost_background)} background jobs lost"
        for job_id in acked:
            assert stored[job_id].state == S.JOB_STATE_PENDING
            assert stored[job_id].spec.labels["client"] == "counted"
        for request_id, job_id in background.acked.items():
            assert stored[job_id].request_id == request_id

        # The cut-off call may or may not have committed; its retry settles it as one job.
        retried = rig.api.jobs.SubmitJob(
            jpb.SubmitJobRequest(spec=background.spec, request_id=background.cut_off),
            timeout=CALL_TIMEOUT,
        )
        if retried.existing:
            assert retried.job.id in stored
        matching = [j for j in rig.api.all_jobs() if j.request_id == background.cut_off]
        assert [j.id for j in matching] == [retried.job.id]
        print(
            f"{len(acked)} + {len(background.acked)} acknowledged before the kill, all stored; "
            f"the cut-off submit had {'' if retried.existing else 'not '}committed"
        )
