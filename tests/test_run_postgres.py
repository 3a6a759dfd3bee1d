"""Many workers on a real PostgreSQL server (started by the ``pg_cluster`` fixture).

Worker processes are real ``python -m evo_fpn.run`` commands on the synthetic objective, so
these tests exercise the exact budget, trial numbering, heartbeats and the retry of a
SIGKILLed worker's trial end to end, in seconds.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import sqlalchemy
from optuna.trial import TrialState
from run_worker import load, run, start, states, wait_for, write_study

from evo_fpn.cli.run import main
from evo_fpn.storage.testing_pg import PgCluster, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("runner_env")]


def tables(url: str) -> list[str]:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return sqlalchemy.inspect(conn).get_table_names()
    finally:
        engine.dispose()


def test_two_workers_share_one_study_and_finish_exactly_its_budget(tmp_path: Path, pg_url: str) -> None:
    write_study(tmp_path, n_trials=12, sleep=0.2)
    procs = [start(["--study", "syn.toml", "--storage", pg_url, "--worker-index", str(i)], tmp_path) for i in (0, 1)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "evo-test-secret" not in out + err and "***" in err
    study = load(pg_url)
    trials = study.get_trials(deepcopy=False)
    assert states(study) == {"COMPLETE": 12}
    assert sorted(t.number for t in trials) == list(range(12))
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, workers  # both workers did trials
    # each worker had its own seed: their first proposals differ
    firsts = {}
    for t in sorted(trials, key=lambda t: t.number):
        firsts.setdefault(t.user_attrs["worker"], t.user_attrs["spec_hash"])
    assert len(set(firsts.values())) == 2


def test_a_sigkilled_worker_has_its_trial_failed_and_retried(tmp_path: Path, pg_url: str) -> None:
    write_study(tmp_path, n_trials=4, sleep=1.0, heartbeat_interval=1, grace_period=2)
    victim = start(["--study", "syn.toml", "--storage", pg_url, "--worker-index", "0"], tmp_path)
    survivor = None
    try:

        def victim_trial():  # type: ignore[no-untyped-def]
            try:
                trials = load(pg_url).get_trials(deepcopy=False)
            except Exception:  # study not created yet
                return None
            mine = [t for t in trials if t.state == TrialState.RUNNING and "spec_hash" in t.user_attrs]
            return mine[0] if mine else None

        killed = wait_for(victim_trial, 90, "the first worker to start a trial", poll=0.1)
        victim.send_signal(signal.SIGKILL)  # mid-trial: the trial sleeps 1 s after its spec hash is recorded
        victim.wait()
        survivor = start(["--study", "syn.toml", "--storage", pg_url, "--worker-index", "1"], tmp_path)
        out, err = survivor.communicate(timeout=180)
        assert survivor.returncode == 0, err
    finally:
        for p in (victim, survivor):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    study = load(pg_url)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[killed.number].state == TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params and retries[0].user_attrs["spec_hash"] == killed.user_attrs["spec_hash"]
    assert states(study) == {"COMPLETE": 4, "FAIL": 1}
    assert len(trials) == len(set(trials)) == 5


def test_local_workers_flag_spawns_processes_on_one_study(tmp_path: Path, pg_url: str) -> None:
    write_study(tmp_path, n_trials=6, sleep=0.3)
    proc = run(["--study", "syn.toml", "--storage", pg_url, "--workers", "2"], tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "6 of 6 trials finished" in proc.stdout and "evo-test-secret" not in proc.stdout + proc.stderr
    study = load(pg_url)
    assert states(study) == {"COMPLETE": 6}
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2


def test_wrong_password_is_one_line_and_writes_nothing(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str, capsys: pytest.CaptureFixture
) -> None:
    write_study(tmp_path, n_trials=2)
    bad = pg_url.replace(pg_cluster.password, "not-the-password")
    assert main(["--study", "syn.toml", "--storage", bad, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: PostgreSQL at 127.0.0.1:") and "wrong or missing password" in err
    assert "PGPASSWORD" in err and "\n" not in err and "not-the-password" not in err
    assert tables(pg_url) == [] and not (tmp_path / "studies").exists()


def test_unreachable_server_and_missing_database_are_one_line_errors(
    tmp_path: Path, pg_cluster: PgCluster, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_study(tmp_path, n_trials=2)
    monkeypatch.setenv("EVO_FPN_STORAGE_WAIT", "0")  # an unreachable server is waited for; not here
    dead = f"postgresql+psycopg://evo:pw@127.0.0.1:{free_port()}/evo"
    assert main(["--study", "syn.toml", "--storage", dead, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach PostgreSQL at 127.0.0.1:" in err and "start the server" in err and "\n" not in err
    assert "waited 0 s; $EVO_FPN_STORAGE_WAIT sets how long" in err
    assert ":pw@" not in err
    missing = pg_cluster.url("no_such_db")
    assert main(["--study", "syn.toml", "--storage", missing, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "database 'no_such_db' does not exist" in err and "createdb" in err
    assert pg_cluster.password not in err


def test_storage_from_environment_and_password_from_pgpassword(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_study(tmp_path, n_trials=2)
    monkeypatch.setenv("EVO_FPN_STORAGE", pg_url.replace(f":{pg_cluster.password}@", "@"))
    monkeypatch.setenv("PGPASSWORD", pg_cluster.password)
    assert main(["--study", "syn.toml", "--no-progress"]) == 0
    assert states(load(pg_url)) == {"COMPLETE": 2}
    assert not (tmp_path / "studies" / "syn.db").exists()


def _children(parent: int) -> list[int]:
    """Process ids whose parent is ``parent`` (Linux ``/proc``)."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:  # gone meanwhile
            continue
        if fields.get("PPid", "").strip() == str(parent):
            out.append(int(status.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_local_workers_get_the_storage_url_in_their_environment_not_their_argv(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    """What ``ps`` shows of a ``--workers`` child holds no password; the children still share the study."""
    write_study(tmp_path, n_trials=4, sleep=0.5)
    parent = start(["--study", "syn.toml", "--storage", pg_url, "--workers", "2"], tmp_path)
    try:
        pids = wait_for(lambda: len(_children(parent.pid)) == 2 and _children(parent.pid), 120, "two child workers")
        for pid in pids:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert b"--child" in argv and b"--storage" not in argv
            assert not any(pg_cluster.password.encode() in a for a in argv)
            assert f"EVO_FPN_STORAGE={pg_url}".encode() in environ
        out, err = parent.communicate(timeout=180)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.communicate()
    assert parent.returncode == 0, err
    assert states(load(pg_url)) == {"COMPLETE": 4}
    assert not (tmp_path / "studies" / "syn.db").exists()  # no child fell back to the SQLite default
