"""Many workers, few connections, and a database that restarts: the storage server and the waits.

Real PostgreSQL clusters (:mod:`evo_fpn.storage.testing_pg`), a real ``python -m evo_fpn.storage_server``
and real ``python -m evo_fpn.run`` workers on the synthetic objective.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState
from run_worker import load, start, start_server, states, stop, wait_for, write_study

from evo_fpn.storage import rdb as st
from evo_fpn.storage.retry import StorageUnavailable, Waiter, call_with_retry, is_transient
from evo_fpn.storage.testing_pg import PgCluster, PgUnavailable, free_port

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVO_FPN_STORAGE", raising=False)


def own_cluster(max_connections: int = 100) -> Iterator[PgCluster]:
    cluster = PgCluster(max_connections=max_connections)
    try:
        cluster.start()
    except PgUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def small_cluster() -> Iterator[PgCluster]:
    """A server with max_connections = 10: fewer than the workers below, even at one connection each."""
    yield from own_cluster(max_connections=10)


@pytest.fixture
def restart_cluster() -> Iterator[PgCluster]:
    """A cluster of the test's own, which it may restart."""
    yield from own_cluster()


def first_traceback(err: str) -> str:
    return err[err.find("Traceback") :][:4000]


def assert_clean_exit(proc, err: str) -> None:  # type: ignore[no-untyped-def]
    assert "Traceback" not in err, first_traceback(err)
    assert proc.returncode == 0, err[-3000:]


def test_transient_errors_are_told_from_mistakes() -> None:
    import psycopg

    assert is_transient(psycopg.OperationalError("FATAL:  sorry, too many clients already"))
    assert is_transient(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert is_transient(psycopg.OperationalError("FATAL:  the database system is starting up"))
    assert not is_transient(psycopg.OperationalError('FATAL:  password authentication failed for user "evo"'))
    assert not is_transient(psycopg.OperationalError('FATAL:  database "x" does not exist'))
    assert not is_transient(ValueError("bad value"))


def test_a_waiter_gives_up_after_its_time_in_one_line(capsys: pytest.CaptureFixture) -> None:
    import psycopg

    calls = []

    def refuse() -> None:
        calls.append(time.monotonic())
        raise psycopg.OperationalError("connection to server failed: Connection refused")

    with pytest.raises(StorageUnavailable) as exc:
        call_with_retry(refuse, Waiter("PostgreSQL at h:1", wait_s=1.2))
    assert len(calls) >= 2  # it did retry
    assert "PostgreSQL at h:1 unavailable for" in str(exc.value) and "EVO_FPN_STORAGE_WAIT" in str(exc.value)
    err = capsys.readouterr().err
    assert err.count("waiting for PostgreSQL at h:1 (connection to server failed: Connection refused)") == 1


def test_a_worker_waits_for_a_database_that_comes_up_late(tmp_path: Path) -> None:
    """A job array may start before the database: the worker waits, says so, and then runs."""
    write_study(tmp_path, n_trials=2, sleep=0.0)
    cluster = PgCluster()
    try:
        cluster.port = free_port()  # the URL is known before the server is up
        worker = None
        try:
            url = f"postgresql+psycopg://{cluster.user}:{cluster.password}@127.0.0.1:{cluster.port}/postgres"
            worker = start(["--study", "syn.toml", "--storage", url], tmp_path)
            time.sleep(2.0)
            assert worker.poll() is None  # still waiting, not dead
            _start_on_port(cluster, cluster.port)
            out, err = worker.communicate(timeout=120)
            assert_clean_exit(worker, err)
            assert "waiting for PostgreSQL at 127.0.0.1:" in err and "is back after" in err
            assert states(load(url)) == {"COMPLETE": 2}
        finally:
            stop(worker)
    except PgUnavailable as exc:
        pytest.skip(str(exc))
    finally:
        cluster.stop()


def _start_on_port(cluster: PgCluster, port: int) -> None:
    import evo_fpn.storage.testing_pg as tp

    real = tp.free_port
    tp.free_port = lambda: port  # type: ignore[assignment]
    try:
        cluster.start()
    finally:
        tp.free_port = real  # type: ignore[assignment]


@pytest.mark.slow
def test_through_the_server_more_workers_than_max_connections_all_finish(
    tmp_path: Path, small_cluster: PgCluster
) -> None:
    """12 workers on a server that takes 10 connections: direct, they cannot all connect even at
    one connection each; through the storage server none dies and the budget is exact."""
    url = small_cluster.new_database("few")
    write_study(tmp_path, n_trials=24, sleep=0.3, sampler="evolution")
    server, grpc_url = start_server(url, tmp_path, pool_size=4)
    peak = {"n": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak["n"] = max(peak["n"], small_cluster.connections())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    procs = []
    try:
        procs = [
            start(["--study", "syn.toml", "--storage", grpc_url, "--worker-index", str(i)], tmp_path) for i in range(12)
        ]
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        done.set()
        for p in procs:
            stop(p)
        server_err = stop(server)
    for p, (_, err) in zip(procs, outs, strict=True):
        assert_clean_exit(p, err)
    study = load(url)
    trials = study.get_trials(deepcopy=False)
    assert states(study) == {"COMPLETE": 24}
    assert sorted(t.number for t in trials) == list(range(24))
    assert len({t.user_attrs["worker"] for t in trials}) >= 6  # many workers really shared the study
    assert 0 < peak["n"] <= 4 + 1 + 2, peak  # pool + lock connection (+ start-up checks), not per worker
    assert "Traceback" not in server_err


@pytest.mark.parametrize("route", ["direct", "server"])
def test_a_killed_workers_trial_is_retried_within_the_grace_period_not_at_a_trial_boundary(
    tmp_path: Path, pg_url: str, route: str
) -> None:
    """The survivor is inside a 12 s trial when the victim is killed: the victim's trial must be
    failed and re-queued by the survivor's stale-trial watch (grace 2 s + interval 1 s), long
    before the survivor's next trial boundary."""
    write_study(tmp_path, n_trials=4, sleep=12.0, heartbeat_interval=1, grace_period=2)
    server = None
    storage = pg_url
    procs: list = []
    try:
        if route == "server":
            server, storage = start_server(pg_url, tmp_path)
        procs = [
            start(["--study", "syn.toml", "--storage", storage, "--worker-index", str(i)], tmp_path) for i in (0, 1)
        ]

        def two_running():  # type: ignore[no-untyped-def]
            if not st.study_exists(pg_url, "syn"):  # load() would create the tables, racing the workers
                return None
            running = [t for t in load(pg_url).get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
            return (
                running if len({t.user_attrs.get("worker") for t in running if "spec" in t.user_attrs}) == 2 else None
            )

        running = wait_for(two_running, 120, "both workers to run a trial", poll=0.1)
        victim_pid = procs[0].pid
        victim = next(t for t in running if t.user_attrs["worker"].endswith(f":{victim_pid}"))
        procs[0].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()

        def failed():  # type: ignore[no-untyped-def]
            t = load(pg_url).get_trials(deepcopy=False)[victim.number]
            return t.state == TrialState.FAIL

        wait_for(failed, 30, "the killed worker's trial to be failed", poll=0.1)
        blind = time.monotonic() - killed_at
        survivor_trial = next(t for t in running if t is not victim)
        assert load(pg_url).get_trials(deepcopy=False)[survivor_trial.number].state == TrialState.RUNNING
        assert blind < 8.0, blind  # grace 2 + interval 1 + a check; the survivor's boundary is ~12 s away
        retries = [
            t for t in load(pg_url).get_trials(deepcopy=False) if t.system_attrs.get("failed_trial") == victim.number
        ]
        assert len(retries) == 1 and retries[0].state in (TrialState.WAITING, TrialState.RUNNING)
    finally:
        for p in procs:
            stop(p)
        stop(server)


def run_through_a_restart(tmp_path: Path, cluster: PgCluster, *, route: str) -> None:
    url = cluster.new_database(f"restart_{route}")
    write_study(tmp_path, n_trials=16, sleep=0.5, heartbeat_interval=1, grace_period=10)
    server = None
    storage = url
    procs: list = []
    try:
        if route == "server":
            server, storage = start_server(url, tmp_path)
        procs = [
            start(["--study", "syn.toml", "--storage", storage, "--worker-index", str(i)], tmp_path) for i in range(4)
        ]

        def some_finished():  # type: ignore[no-untyped-def]
            # not load() before the study exists: load_study would create the tables, racing the workers
            return st.study_exists(url, "syn") and states(load(url)).get("COMPLETE", 0) >= 3

        wait_for(some_finished, 120, "a few finished trials", poll=0.2)
        before = states(load(url)).get("COMPLETE", 0)
        cluster.restart()  # fast mode: every connection, of workers and server, is cut
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            stop(p)
        server_err = stop(server)
    errs = [err for _, err in outs]
    for p, err in zip(procs, errs, strict=True):
        assert "Traceback" not in err, first_traceback(err)
        if p.returncode != 0:  # allowed: an exit with one line that names the problem
            assert err.strip().splitlines()[-1].startswith("error: "), err[-3000:]
    assert "Traceback" not in server_err, server_err[-3000:]
    assert before < 16  # the restart came mid-search
    waited = sum("waiting for" in e for e in errs) + ("waiting for" in server_err)
    assert waited >= 1, errs  # somebody met the restart and waited
    study = load(url)
    trials = study.get_trials(deepcopy=False)
    counts = states(study)
    assert counts.get("COMPLETE", 0) == 16, counts  # exact budget: nothing lost, nothing beyond
    assert set(counts) <= {"COMPLETE", "FAIL"}, counts
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    for t in trials:  # a trial failed over the restart was retried
        if t.state == TrialState.FAIL:
            assert any(r.system_attrs.get("failed_trial") == t.number for r in trials), t.number


@pytest.mark.slow
@pytest.mark.parametrize("route", ["direct", "server"])
def test_workers_survive_a_database_restart_mid_search(tmp_path: Path, restart_cluster: PgCluster, route: str) -> None:
    run_through_a_restart(tmp_path, restart_cluster, route=route)


def test_grpc_urls_are_parsed_and_bad_ones_named(tmp_path: Path) -> None:
    assert st.is_grpc("grpc://db.lab:13000") and not st.is_sqlite("grpc://db.lab:13000")
    for bad in ("grpc://db.lab", "grpc://db.lab:13000/db", "grpc://u:pw@db.lab:1"):
        with pytest.raises(st.StorageError) as exc:
            st.parse_url(bad)
        assert "grpc://HOST:PORT" in str(exc.value) and "pw" not in str(exc.value)


def test_a_missing_server_is_one_line_after_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from evo_fpn.cli.run import main

    write_study(tmp_path, n_trials=2)
    monkeypatch.setenv("EVO_FPN_STORAGE_WAIT", "1")
    assert main(["--study", "syn.toml", "--storage", f"grpc://127.0.0.1:{free_port()}", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the storage server at 127.0.0.1:") and "evo_fpn.storage_server" in err[-1]
    assert any(line.startswith("waiting for the storage server at 127.0.0.1:") for line in err[:-1])
