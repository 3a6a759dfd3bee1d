"""Fault drills: what a Ctrl-C, a damaged cache or bad settings leave behind.

Workers are real ``python -m evo_fpn.run`` processes on the synthetic objective, interrupted
with a real SIGINT while a trial runs, then resumed: the study must end with its exact budget,
the interrupted architecture evaluated and nothing trained twice.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from run_worker import load, run, start, wait_for, write_study

from evo_fpn import record
from evo_fpn.study.objective import INTERRUPTED

pytestmark = pytest.mark.usefixtures("runner_env")


def running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]


def interrupt_mid_trial(proc: subprocess.Popen, url: str, *, at: int) -> list[int]:
    """SIGINT ``proc`` once ``at`` trials finished and one runs; the numbers that were running."""

    def busy() -> list[int]:
        try:
            study = load(url)
        except KeyError:  # not created yet
            return []
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        started = [t.number for t in running(study) if record.SPEC in t.user_attrs]  # past suggest: mid-trial
        return started if len(done) >= at else []

    numbers = wait_for(busy, 120, f"a running trial after {at} finished")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    return numbers


def check_resumed(url: str, n_trials: int, interrupted: list[int]) -> None:
    trials = load(url).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for number in interrupted:
        stopped = trials[number]
        assert stopped.state == TrialState.FAIL and stopped.user_attrs[record.FAIL_REASON] == INTERRUPTED
        again = [t for t in complete if t.system_attrs.get("failed_trial") == number]
        assert len(again) == 1 and again[0].params == stopped.params  # the same architecture, evaluated
        assert again[0].user_attrs[record.SPEC_HASH] == stopped.user_attrs[record.SPEC_HASH]
    trained = [t.user_attrs[record.SPEC_HASH] for t in complete if record.CACHED_FROM not in t.user_attrs]
    assert len(trained) == len(set(trained))  # nothing trained twice


def test_ctrl_c_queues_the_interrupted_reference_again_on_sqlite(tmp_path: Path) -> None:
    write_study(tmp_path, n_trials=5, sleep=4.0)
    url = f"sqlite:///{tmp_path}/syn.db"
    proc = start(["--study", "syn.toml", "--storage", url, "--enqueue-references"], tmp_path)
    interrupted = interrupt_mid_trial(proc, url, at=1)  # #1, the enqueued FPN-like reference, runs
    assert interrupted == [1]
    study = load(url)
    assert [t.number for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING] == [2]
    done = run(["--study", "syn.toml", "--storage", url, "--enqueue-references"], tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr
    check_resumed(url, 5, interrupted)


@pytest.mark.postgres
def test_ctrl_c_with_two_workers_on_postgresql_loses_nothing(tmp_path: Path, pg_url: str) -> None:
    write_study(tmp_path, n_trials=6, sleep=4.0)
    args = ["--study", "syn.toml", "--storage", pg_url, "--enqueue-references", "--workers", "2"]
    proc = start(args, tmp_path)
    interrupted = interrupt_mid_trial(proc, pg_url, at=0)
    assert interrupted
    done = run(args, tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr
    check_resumed(pg_url, 6, interrupted)


@pytest.mark.parametrize(
    ("setting", "named"),
    [("proxy.epochz=2", "'epochz'"), ("proxy.epochs=abc", "proxy"), ("supernet.foo=1", "'foo'")],
)
def test_a_typo_in_another_objectives_table_is_refused(tmp_path: Path, setting: str, named: str) -> None:
    write_study(tmp_path, n_trials=2)
    url = f"sqlite:///{tmp_path}/syn.db"
    done = run(["--study", "syn.toml", "--storage", url, "--set", setting], tmp_path)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], done.stderr
    assert not (tmp_path / "syn.db").exists()


def test_a_changed_setting_is_refused_before_any_stage_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy study re-run with another preset: one line at once, no dataset, no backbone stage."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EVO_FPN_CACHE", str(cache))
    url = f"sqlite:///{tmp_path}/quick.db"
    study = optuna.create_study(study_name="quick", storage=url, direction="maximize")
    study.set_user_attr("fingerprint", "0123456789abcdef")  # as a quick study made elsewhere records it
    study.set_user_attr("config", {"proxy": {"epochs": 1.0}})
    quick = Path(__file__).resolve().parents[1] / "studies" / "quick.toml"
    done = run(["--study", str(quick), "--storage", url, "--preset", "default", "--n-trials", "5"], tmp_path)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "fingerprint 0123456789abcdef != " in err[0] and "--new-study" in err[0], done.stderr
    assert not cache.exists() or not any(cache.rglob("*.pt"))
    assert load(url, "quick").trials == []


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1 MB tmpfs as the study folder (root only; skipped where mounting is not allowed)."""
    folder = tmp_path / "studies"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_is_one_line_and_the_rerun_loses_nothing(tmp_path: Path, small_disk: Path) -> None:
    write_study(tmp_path, n_trials=400)
    full = run(["--study", "syn.toml"], tmp_path, timeout=240)
    assert full.returncode == 1
    err = full.stderr.strip().splitlines()
    assert err[-1].startswith("error: the disk is full (database or disk is full)") and "Traceback" not in full.stderr
    assert len([line for line in err if line.startswith("error:")]) == 1
    url = f"sqlite:///{small_disk}/syn.db"
    before = [t for t in load(url).get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert before  # trials finished before the disk filled
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    n = len(before) + 5
    done = run(["--study", "syn.toml", "--n-trials", str(n)], tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr
    trials = load(url).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n and [t.params for t in before] == [t.params for t in complete[: len(before)]]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    cut = [t for t in trials if t.state == TrialState.FAIL]  # the trial the full disk interrupted
    assert len(cut) == 1 and [t.system_attrs.get("failed_trial") for t in complete].count(cut[0].number) == 1


def test_an_architecture_running_on_another_worker_is_waited_for_not_trained_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 29 item 7: two workers proposing one architecture 0.15 s apart. The second sees
    the first's hash (written under the budget lock), waits for it and re-uses its metrics."""
    import threading

    from evo_fpn.arch.space import NasFpnSpace
    from evo_fpn.arch.spec import PUBLISHED_NASFPN
    from evo_fpn.study import objective as objective_module
    from evo_fpn.tasks.synthetic import SyntheticTask

    monkeypatch.setattr(objective_module, "DUPLICATE_POLL_S", 0.05)
    space = NasFpnSpace()
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/d.db", direction="maximize")
    params = space.encode(PUBLISHED_NASFPN)
    study.enqueue_trial(params)
    study.enqueue_trial(params)
    first = study.ask()  # worker A's trial, mid-training
    for name in params:
        first.suggest_categorical(name, space.distributions[name].choices)
    first.set_user_attr(record.SPEC_HASH, PUBLISHED_NASFPN.canonical_hash())
    lock_released = threading.Event()
    objective = objective_module.Objective(space=space, task=SyntheticTask(), dedup=True, on_start=lock_released.set)
    worker_b = threading.Thread(target=lambda: study.optimize(objective, n_trials=1))
    worker_b.start()
    assert lock_released.wait(30)
    assert study.get_trials(deepcopy=False)[1].user_attrs[record.SPEC_HASH] == PUBLISHED_NASFPN.canonical_hash()
    worker_b.join(0.5)
    assert worker_b.is_alive()  # waiting for A, not training
    first.set_user_attr("ap", 0.5)
    study.tell(first, 0.5)
    worker_b.join(30)
    second = study.get_trials(deepcopy=False)[1]
    assert second.state == TrialState.COMPLETE and second.user_attrs[record.CACHED_FROM] == 0 and second.value == 0.5
