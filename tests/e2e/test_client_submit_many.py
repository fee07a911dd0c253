"""Client.submit_many: many exec jobs in SubmitJobs calls of at most 1,000, in order."""

from __future__ import annotations

import pytest

from gaffer import Client, InvalidSpecError, JobState
from tests.helpers import ServerProc

pytestmark = pytest.mark.e2e


async def test_jobs_beyond_one_call_are_all_stored_in_order(server: ServerProc) -> None:
    async with await Client.connect(server.address) as client:  # no agent: every job stays PENDING
        handles = await client.submit_many(
            (["echo", str(i)] for i in range(2500)), queue="bulk", labels={"run": "many"}
        )
        assert [h.job.spec.argv for h in handles if h.job] == [
            ("echo", str(i)) for i in range(2500)
        ]
        assert len({h.id for h in handles}) == 2500
        page = await client.list_jobs_page(queue="bulk", page_size=1000)
        assert len(page.jobs) == 1000 and page.next_page_token
        last = await handles[-1].get()
        assert (last.state, last.spec.labels) == (JobState.PENDING, {"run": "many"})


async def test_an_invalid_spec_names_its_job_and_stores_none_of_its_call(
    server: ServerProc,
) -> None:
    async with await Client.connect(server.address) as client:
        with pytest.raises(InvalidSpecError) as raised:
            await client.submit_many([["true"], []], queue="refused")
        assert [v.field for v in raised.value.violations] == ["jobs[1].spec.exec.argv"]
        page = await client.list_jobs_page(queue="refused")
        assert page.jobs == []
        with pytest.raises(TypeError, match="colour"):
            await client.submit_many([["true"]], colour="red")
