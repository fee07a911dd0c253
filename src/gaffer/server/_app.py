"""Assembling and running a Gaffer server: store, core, servicers, health, reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from gaffer.core import Agents, CoreSettings, Jobs, run_sweeper
from gaffer.domain import StoreUnavailable
from gaffer.server._agent_servicer import AgentServicer
from gaffer.server._config import ServerConfig, check_listen
from gaffer.server._handlers import Guard, GuardedRegistry
from gaffer.server._job_servicer import JobServicer
from gaffer.server._metrics import Metrics, serve_metrics
from gaffer.store import BlobStore, Notifier, SqliteStore, Store
from gaffer.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
)

log = logging.getLogger(__name__)

JOB_SERVICE = job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
AGENT_SERVICE = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
HEALTH_SERVICES = ("", JOB_SERVICE, AGENT_SERVICE)
STORE_CHECK_INTERVAL = 2.0


def grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    limit = config.limits.max_message_bytes
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_time_ms", int(config.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]
    if config.max_connection_age:
        options.append(("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", 30_000))
    return options


@dataclass
class RunningServer:
    """A started server: its bound address, and how to stop it."""

    address: str
    server: grpc.aio.Server
    store: Store
    notifier: Notifier
    health: health.aio.HealthServicer
    grace: float
    jobs: Jobs | None = None
    metrics: Metrics = field(default_factory=Metrics)
    metrics_address: str = ""
    _metrics_server: asyncio.Server | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self) -> None:
        """Graceful: NOT_SERVING, streams end UNAVAILABLE, unary calls get ``grace`` to finish."""
        if self._stop.is_set():
            return
        self._stop.set()
        await self.health.enter_graceful_shutdown()
        self.notifier.close()
        if self.jobs is not None:
            await self.jobs.close()
        await self.server.stop(self.grace)
        if self._metrics_server is not None:
            self._metrics_server.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def _probe(store: Store) -> None:
    """Raises StoreUnavailable unless the store answers a read and can begin a write.

    The empty write transaction catches what a read cannot: a database locked by another
    process, a read-only file system, a primary that refuses writes.
    """
    await store.ping()
    async with store.transaction():
        pass


async def _watch_store(
    store: Store, servicer: health.aio.HealthServicer, stop: asyncio.Event, metrics: Metrics
) -> None:
    """Keeps health in step with the store: NOT_SERVING while it cannot answer."""
    serving: bool | None = None
    while not stop.is_set():
        try:
            await _probe(store)
            ok = True
        except StoreUnavailable as exc:
            ok = False
            if serving is not False:
                log.warning("health NOT_SERVING: %s", exc)
        if ok != serving:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            if stop.is_set():
                return  # shutting down: health stays NOT_SERVING
            for service in HEALTH_SERVICES:
                await servicer.set(service, status)
            serving = ok
            metrics.store_up = int(ok)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STORE_CHECK_INTERVAL)


def open_store(config: ServerConfig, notifier: Notifier) -> Store:
    """The store the config names: PostgreSQL for ``database_url``, else SQLite in data_dir.

    The store gets the server's own notifier, so wake-ups from other replicas reach the
    streams and long polls of this one.
    """
    if config.database_url:
        from gaffer.store import PostgresStore

        return PostgresStore(
            config.database_url,
            notifier,
            blob_dir=config.data_dir / "blobs",
            notify=config.pg_notify,
        )
    return SqliteStore(config.data_dir, notifier, synchronous=config.sqlite_synchronous)


async def start_server(config: ServerConfig) -> RunningServer:
    """Opens the store, binds ``config.listen`` and starts serving.

    Raises:
        ValueError: the listen address is refused (non-loopback without auth) or unusable.
    """
    check_listen(config)
    notifier = Notifier()
    store = open_store(config, notifier)
    await store.open()
    settings = CoreSettings(
        lease_ttl=config.lease_ttl,
        heartbeat_interval=config.heartbeat_interval,
        timeout_grace=config.timeout_grace,
        sweep_interval=config.sweep_interval,
        limits=config.limits,
    )
    blobs = BlobStore(store.blob_dir)
    agents = Agents(store, notifier, blobs, settings)
    jobs = Jobs(store, notifier, blobs, settings, hand_off=agents.hand_off)
    # Only the embedded store: its one server was down, so every agent lost touch at once.
    # Replicas on PostgreSQL restart one at a time while the others keep leases current.
    extended = 0 if config.database_url else await agents.recover()
    if extended:
        log.info("kept %d held attempts for one lease ttl while their agents reconnect", extended)

    metrics = Metrics()
    metrics.extra["gaffer_notifier_subscriptions"] = (
        "Readers waiting on store changes (streams, long polls).",
        notifier.subscriber_count,
    )
    metrics.extra["gaffer_claims_waiting"] = (
        "Agents' claims waiting on this server for work (a job submitted here goes straight"
        " to one that can take it).",
        agents.claims_waiting,
    )
    metrics.extra_counters["gaffer_jobs_handed_off_total"] = (
        "Jobs claimed for a waiting claim by the transaction that submitted them.",
        agents.jobs_handed_off,
    )
    server = grpc.aio.server(options=grpc_options(config))
    registry = GuardedRegistry(server, Guard(metrics, config.max_concurrent_rpcs))
    job_service_pb2_grpc.add_JobServiceServicer_to_server(
        JobServicer(jobs, config.limits, settings.keepalive_default), registry
    )
    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(
        AgentServicer(
            agents,
            notifier,
            config.limits,
            config.lease_ttl,
            config.heartbeat_interval,
            metrics,
        ),
        registry,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registry)
    # What reflection.enable_server_reflection does for a grpc.aio server (it would take the
    # registry for a sync server).
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(
            (JOB_SERVICE, AGENT_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        ),
        registry,
    )
    try:
        port = server.add_insecure_port(config.listen)
    except RuntimeError as exc:
        await store.close()
        raise ValueError(f"cannot listen on {config.listen}: {exc}") from exc
    metrics_server, metrics_address = None, ""
    if config.metrics_listen:
        try:
            metrics_server, metrics_address = await serve_metrics(config.metrics_listen, metrics)
        except ValueError:
            await store.close()
            raise
    host = config.listen.rpartition(":")[0]
    await server.start()
    running = RunningServer(
        address=f"{host}:{port}",
        server=server,
        store=store,
        notifier=notifier,
        health=health_servicer,
        grace=config.shutdown_grace,
        jobs=jobs,
        metrics=metrics,
        metrics_address=metrics_address,
        _metrics_server=metrics_server,
    )
    for service in HEALTH_SERVICES:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    running._tasks.append(
        asyncio.create_task(run_sweeper(agents, config.sweep_interval, running._stop))
    )
    running._tasks.append(
        asyncio.create_task(_watch_store(store, health_servicer, running._stop, metrics))
    )
    log.info("gaffer server listening on %s (data dir %s)", running.address, config.data_dir)
    return running


async def run_server(
    config: ServerConfig,
    *,
    on_ready: Callable[[str], None] | None = None,
    on_metrics: Callable[[str], None] | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully."""
    running = await start_server(config)
    if on_metrics is not None and running.metrics_address:
        on_metrics(running.metrics_address)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready(running.address)
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await running.stop()
