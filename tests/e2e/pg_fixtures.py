"""Gaffer replicas on PostgreSQL for end-to-end tests.

A module imports the fixtures it uses (``from tests.e2e.pg_fixtures import replicas_fixture``;
each is registered under the name without ``_fixture``). It gets one throwaway database
(``pg_database``, dropped at the end of the module even when a test failed) and a fresh schema
in it per test (``pg_url``), so tests never see each other's jobs. ``replicas`` starts
``gaffer server`` processes on that schema and one shared ``--data-dir`` (artifact bytes live
there), and stops every one of them.

``server_both_stores`` and ``shared_server_both_stores`` override the ``server`` and
``shared_server`` fixtures of the importing module: its tests run once on SQLite and once on
PostgreSQL.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.procs import hard_kill
from tests.helpers import ServerProc
from tests.unit.pg_support import new_schema, temporary_database

STORES = ("sqlite", "postgres")


@pytest.fixture(scope="module", name="pg_database")
def pg_database_fixture() -> Iterator[str]:
    """A fresh PostgreSQL database for this module; dropped at its end, even after a failure."""
    yield from temporary_database()


@pytest.fixture(name="pg_url")
def pg_url_fixture(pg_database: str) -> str:
    """A DSN on a new empty schema of the module's database (one per test)."""
    return new_schema(pg_database)


class Replicas:
    """Replicas of one Gaffer: ``gaffer server`` processes on one database and one data dir."""

    def __init__(self, database_url: str, data_dir: Path, *flags: str) -> None:
        self.database_url = database_url
        self.data_dir = data_dir
        self.flags = flags
        self.procs: list[ServerProc] = []

    def start(self, count: int = 1, *flags: str) -> list[ServerProc]:
        """Starts ``count`` more replicas (each with the common flags plus ``flags``)."""
        started = []
        for _ in range(count):
            proc = ServerProc.launch(
                self.data_dir, "--database-url", self.database_url, *self.flags, *flags
            )
            self.procs.append(proc)
            started.append(proc)
        return started

    def __getitem__(self, index: int) -> ServerProc:
        return self.procs[index]

    def addresses(self, *indexes: int) -> str:
        """``host:port,host:port`` of the replicas named (all when none are)."""
        chosen = [self.procs[i] for i in indexes] if indexes else self.procs
        return ",".join(proc.address for proc in chosen)

    def kill(self, index: int) -> None:
        """SIGKILL one replica: no graceful shutdown, its connections just drop."""
        hard_kill(self.procs[index])

    def stop(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.signal(signal.SIGCONT)
                proc.stop()


@pytest.fixture(name="replicas")
def replicas_fixture(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., Replicas]]:
    """``replicas(n, *flags)``: n replicas on this test's schema and data dir, stopped after it."""
    made: list[Replicas] = []

    def make(count: int, *flags: str) -> Replicas:
        group = Replicas(pg_url, tmp_path / "data", *flags)
        made.append(group)
        try:
            group.start(count)
        except BaseException:
            group.stop()
            raise
        return group

    yield make
    for group in made:
        group.stop()


def _launch(request: pytest.FixtureRequest, data_dir: Path) -> ServerProc:
    if request.param == "postgres":
        url = new_schema(request.getfixturevalue("pg_database"))
        return ServerProc.launch(data_dir, "--database-url", url)
    return ServerProc.launch(data_dir)


@pytest.fixture(name="server", params=STORES)
def server_both_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProc]:
    """A `gaffer server` on a fresh SQLite data dir, or on a fresh PostgreSQL schema."""
    proc = _launch(request, tmp_path / "data")
    yield proc
    proc.stop()


@pytest.fixture(name="shared_server", scope="module", params=STORES)
def shared_server_both_stores(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProc]:
    """One server per module and store, for tests that do not depend on each other's jobs."""
    proc = _launch(request, tmp_path_factory.mktemp("shared") / "data")
    yield proc
    proc.stop()
