"""The chaos run: jobs with known output, agents killed and restarted, the server killed twice.

Faults are paced by progress (a fault fires once so many jobs have finished), not by timers, so
a slow machine gets the same faults at the same points of the run. On PostgreSQL
(``database_url``) it runs ``replicas`` servers on one database; agents are spread over them and
given every address, and the server kills go round the replicas, so agents move between them.
At the end the run checks, from the server and from its database:

- lost: an acknowledged job that is missing or did not finish;
- duplicated: a job with more than one final status, an attempt claimed twice, or a COMPLETED
  job whose stdout (latest attempt) is not exactly its lines once;
- late writes: an attempt whose log chunks were stored after its successor's first chunk.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.chaos.procs import frozen
from tests.chaos.rig import FINISHED, Rig, claims, finals
from tests.e2e.conftest import CALL_TIMEOUT
from tests.helpers import AgentProc, wait_until

S = job_pb2.JobState
AGENT_ID = re.compile(r"registered as (\S+)")
FENCED = re.compile(r": (lease lost|logs refused, no longer ours|no longer ours)")
HELD = (S.JOB_STATE_CLAIMED, S.JOB_STATE_VALIDATING, S.JOB_STATE_RUNNING, S.JOB_STATE_UPLOADING)


@dataclass(frozen=True)
class ChaosConfig:
    """How big and how rough a run is."""

    jobs: int = 150
    agents: int = 3
    slots: int = 4
    lines: int = 50
    agent_kills: int = 5
    agent_freezes: int = 1
    server_kills: int = 2
    lease_ttl: float = 2.0
    heartbeat_interval: float = 0.5
    max_attempts: int = 25
    budget: float = 90.0  # seconds for every job to finish
    seed: int | None = None
    # Restart killed agents under their old name (as a host would); see the report's bugs.
    same_names: bool = False
    # PostgreSQL (a DSN) instead of SQLite, with this many replicas on it.
    database_url: str = ""
    replicas: int = 1


@dataclass
class ChaosReport:
    jobs: int = 0
    completed: int = 0
    failed: int = 0
    agent_kills: int = 0
    agent_freezes: int = 0
    server_kills: int = 0
    retries: int = 0
    lost: int = 0
    duplicated: int = 0
    late_writes: int = 0
    superseded_writers: int = 0  # attempts that wrote output and were then replaced
    fenced: int = 0  # times an agent was told an attempt was no longer its own
    seconds: float = 0.0
    seed: int = 0
    store: str = "sqlite"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (
            f"chaos: jobs={self.jobs} completed={self.completed} failed={self.failed} "
            f"agent_kills={self.agent_kills} agent_freezes={self.agent_freezes} "
            f"server_kills={self.server_kills} retries={self.retries} lost={self.lost} "
            f"duplicated={self.duplicated} late_writes={self.late_writes} "
            f"superseded_writers={self.superseded_writers} fenced={self.fenced} "
            f"seconds={self.seconds:.1f} seed={self.seed} store={self.store}"
        )


def job_argv(lines: int) -> list[str]:
    """Prints "$JOB_TAG 1" .. "$JOB_TAG <lines>", pausing a little every 10 lines."""
    script = (
        f'i=1; while [ $i -le {lines} ]; do echo "$JOB_TAG $i"; '
        "if [ $((i % 10)) -eq 0 ]; then sleep 0.1; fi; i=$((i+1)); done"
    )
    return ["sh", "-c", script]


def expected_output(tag: str, lines: int) -> bytes:
    return "".join(f"{tag} {i}\n" for i in range(1, lines + 1)).encode()


class _Chaos:
    def __init__(self, rig: Rig, config: ChaosConfig, rng: random.Random) -> None:
        self.rig = rig
        self.config = config
        self.rng = rng
        self.report = ChaosReport(jobs=config.jobs)
        self.live: dict[int, AgentProc] = {}  # slot number -> agent process
        self.restarts = Counter[int]()

    def log(self, message: str) -> None:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)

    # --- agents -------------------------------------------------------------------------------

    def start_agent(self, slot: int) -> None:
        self.restarts[slot] += 1
        name = f"chaos-{slot}"
        if not self.config.same_names and self.restarts[slot] > 1:
            name += f"-r{self.restarts[slot]}"
        self.live[slot] = self.rig.agent("--slots", str(self.config.slots), name=name)

    def kill_agent(self) -> None:
        slot = self.rng.choice(sorted(self.live))
        proc = self.live.pop(slot)
        self.rig.kill_agent(proc)
        self.report.agent_kills += 1
        self.log(f"SIGKILL agent {proc.name}; restarting it")
        self.start_agent(slot)

    def freeze_agent(self) -> None:
        """SIGSTOP an agent until the server has moved every attempt it held to another."""
        proc = self.live[self.rng.choice(sorted(self.live))]
        match = AGENT_ID.search(proc.output())
        assert match, proc.output()
        agent_id = match.group(1)
        with frozen(proc):
            held = self._held_by(agent_id)
            self.log(f"SIGSTOP agent {proc.name} holding {len(held)} attempts")
            wait_until(
                lambda: all(self._moved_on(job_id, attempt) for job_id, attempt in held),
                timeout=self.config.lease_ttl + 15,
                interval=0.1,
                what="the frozen agent's attempts to be taken over",
            )
        self.report.agent_freezes += 1
        self.log(f"SIGCONT agent {proc.name}")

    def _held_by(self, agent_id: str) -> list[tuple[str, int]]:
        response = self.rig.api.agents.ListAgents(
            apb.ListAgentsRequest(page_size=1000), timeout=CALL_TIMEOUT
        )
        for agent in response.agents:
            if agent.id == agent_id:
                return [(ref.job_id, ref.attempt) for ref in agent.running]
        return []

    def _moved_on(self, job_id: str, attempt: int) -> bool:
        """The attempt no longer holds its job (lapsed: PENDING again, taken, or finished)."""
        job = self.rig.get(job_id)
        return job.attempt > attempt or job.state not in HELD

    # --- the run ------------------------------------------------------------------------------

    def finished(self) -> int:
        """Jobs finished so far, or -1 while the server cannot say."""
        try:
            flt = jpb.JobFilter(states=list(FINISHED))
            return len(self.rig.api.list_ids(flt))
        except grpc.RpcError:
            return -1

    def run(self) -> dict[str, str]:
        config = self.config
        for slot in range(config.agents):
            self.start_agent(slot)
        tags: dict[str, str] = {}  # job id -> tag
        policy = job_pb2.RetryPolicy(max_attempts=config.max_attempts)
        for n in range(config.jobs):
            tag = f"job-{n:05d}"
            job = self.rig.submit(
                job_argv(config.lines), {"JOB_TAG": tag}, retry_policy=policy, labels={"tag": tag}
            )
            tags[job.id] = tag
        self.log(f"{config.jobs} jobs submitted to {config.agents} agents")

        events: list[tuple[int, Callable[[], None]]] = []
        for _ in range(config.agent_kills):
            events.append(
                (self.rng.randint(config.jobs // 20, config.jobs * 9 // 10), self.kill_agent)
            )
        for _ in range(config.agent_freezes):
            events.append(
                (self.rng.randint(config.jobs // 10, config.jobs * 8 // 10), self.freeze_agent)
            )
        for k in range(config.server_kills):
            events.append(((k + 1) * config.jobs // (config.server_kills + 1), self.kill_server))
        deadline = time.monotonic() + config.budget
        try:
            for threshold, fault in sorted(events, key=lambda e: e[0]):
                wait_until(
                    lambda t=threshold: self.finished() >= t,
                    timeout=max(1.0, deadline - time.monotonic()),
                    interval=0.05,
                    what=f"{threshold} jobs to finish",
                )
                fault()
            wait_until(
                lambda: self.finished() == config.jobs,
                timeout=max(1.0, deadline - time.monotonic()),
                interval=0.2,
                what="every job to finish",
            )
        except AssertionError as error:  # a stuck run: the checks say which jobs
            self.report.problems.append(str(error))
            self.log(f"gave up waiting: {error}")
        return tags

    def kill_server(self) -> None:
        """SIGKILL a server and restart it; with replicas, each kill takes the next one."""
        index = self.report.server_kills % len(self.rig.servers)
        name = f"replica {index}" if len(self.rig.servers) > 1 else "server"
        self.log(f"SIGKILL {name} ({self.finished()} jobs finished); restarting it")
        self.rig.restart_server(index)
        self.report.server_kills += 1

    # --- the checks ---------------------------------------------------------------------------

    def check(self, tags: dict[str, str]) -> None:
        report, config = self.report, self.config
        stored: dict[str, job_pb2.Job] = {}
        token = ""
        while True:
            response = self.rig.api.jobs.ListJobs(
                jpb.ListJobsRequest(page_size=1000, page_token=token), timeout=CALL_TIMEOUT
            )
            stored.update((job.id, job) for job in response.jobs)
            token = response.next_page_token
            if not token:
                break
        for job_id, tag in tags.items():
            job = stored.get(job_id)
            if job is None or not finals(job):
                report.lost += 1
                state = "missing" if job is None else S.Name(job.state)
                report.problems.append(f"lost: {job_id} ({tag}) is {state}")
                continue
            report.retries += job.attempt - 1
            attempts = [c.attempt for c in claims(job)]
            duplicate = None
            if len(finals(job)) != 1:
                duplicate = f"{len(finals(job))} final statuses"
            elif attempts != list(range(1, job.attempt + 1)):
                duplicate = f"claims of attempts {attempts}"
            elif job.state == S.JOB_STATE_COMPLETED:
                report.completed += 1
                if self.rig.stdout(job_id) != expected_output(tag, config.lines):
                    duplicate = "stdout is not its lines exactly once"
            else:
                report.failed += 1
                report.problems.append(f"{job_id} ({tag}) ended {S.Name(job.state)}: {job.message}")
            if duplicate:
                report.duplicated += 1
                report.problems.append(f"duplicated: {job_id} ({tag}): {duplicate}")


def late_writes(db: Path | str) -> tuple[list[str], int]:
    """Attempts with a log chunk stored after the first chunk of a later attempt of their job,
    and how many attempts that wrote output were superseded (what the check had to look at).

    Chunks are rows of one table whose id grows with every insert (nothing is ever deleted):
    SQLite's rowid, PostgreSQL's bigserial ``id`` (``db`` a DSN). Id order is the order in
    which the server(s) stored them.
    """
    if isinstance(db, str):
        from tests.unit.pg_support import fetch

        rows = fetch(
            db,
            "SELECT job_id, attempt, MIN(id), MAX(id) FROM log_chunks"
            " GROUP BY job_id, attempt ORDER BY job_id, attempt",
        )
    else:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT job_id, attempt, MIN(rowid), MAX(rowid) FROM log_chunks"
                " GROUP BY job_id, attempt ORDER BY job_id, attempt"
            ).fetchall()
        finally:
            conn.close()
    by_job: dict[str, list[tuple[int, int, int]]] = {}
    for job_id, attempt, first, last in rows:
        by_job.setdefault(job_id, []).append((attempt, first, last))
    found = []
    superseded = sum(len(attempts) - 1 for attempts in by_job.values())
    for job_id, attempts in by_job.items():
        for i, (attempt, _first, last) in enumerate(attempts):
            for later, first, _last in attempts[i + 1 :]:
                if last > first:
                    found.append(f"{job_id}: attempt {attempt} wrote after attempt {later} began")
    return found, superseded


def run_chaos(root: Path, config: ChaosConfig) -> ChaosReport:
    """Runs one chaos run under ``root`` (a fresh directory) and returns what it found."""
    seed = config.seed if config.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    started = time.monotonic()
    flags = (
        "--lease-ttl",
        str(config.lease_ttl),
        "--heartbeat-interval",
        str(config.heartbeat_interval),
        "--sweep-interval",
        "0.5",
    )
    rig = Rig(root, *flags, database_url=config.database_url, replicas=config.replicas)
    with rig:
        chaos = _Chaos(rig, config, rng)
        chaos.report.seed = seed
        if config.database_url:
            chaos.report.store = f"postgres replicas={config.replicas}"
        tags = chaos.run()
        chaos.check(tags)
        report = chaos.report
        report.fenced = sum(len(FENCED.findall(agent.output())) for agent in rig.agents)
    # The servers are stopped: their database is quiet and complete.
    db = config.database_url or rig.server.data_dir / "gaffer.db"
    problems, report.superseded_writers = late_writes(db)
    report.late_writes = len(problems)
    report.problems.extend(problems)
    report.seconds = time.monotonic() - started
    return report
