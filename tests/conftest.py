"""Shared fixtures: a real, throwaway PostgreSQL server for the ``postgres`` tests.

The cluster is started once per test session with Debian's server binaries
(``apt-get install postgresql``), on a free loopback port with password authentication, and
every test gets its own empty database. Without the binaries the tests skip with the install
command as the reason, unless ``EVO_FPN_REQUIRE_SERVICES=1`` (CI), where they fail instead.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from evo_fpn.storage.testing_pg import PgCluster, PgUnavailable

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster()
    try:
        cluster.start()
    except PgUnavailable as exc:
        if os.environ.get("EVO_FPN_REQUIRE_SERVICES") == "1":
            pytest.fail(f"PostgreSQL required (EVO_FPN_REQUIRE_SERVICES=1): {exc}")
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """URL (with password) of a fresh, empty database on the session's cluster."""
    return pg_cluster.new_database(f"t{os.getpid()}_{next(_counter)}")


@pytest.fixture
def runner_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner test's clean slate: the working folder is ``tmp_path`` and no storage URL or
    worker index leaks in from the environment (use with ``pytest.mark.usefixtures``)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVO_FPN_STORAGE", raising=False)
    for name in ("EVO_FPN_WORKER_INDEX", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
