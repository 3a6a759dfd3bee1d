"""``--enqueue FILE.json`` and ``--enqueue-top STUDY:K`` through ``evo_fpn.cli.run.main``, on SQLite
with the synthetic objective: what is enqueued, what is skipped, and bad input (one line, exit
2, nothing written)."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from run_worker import load
from run_worker import write_study as _write_study

from evo_fpn.arch.space import NasFpnSpace, SpaceConfig
from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN, ArchSpec
from evo_fpn.cli.run import main
from evo_fpn.study import enqueue

SPACE = NasFpnSpace()


pytestmark = pytest.mark.usefixtures("runner_env")


def write_study(folder: Path, name: str = "syn", **kw: object) -> Path:
    """A synthetic study file whose trials are never declared stale (a loaded machine must not
    fail a running trial under these tests)."""
    return _write_study(folder, name, grace_period=60, **kw)  # type: ignore[arg-type]


def url_of(tmp_path: Path, name: str = "syn") -> str:
    return f"sqlite:///{tmp_path / 'studies' / (name + '.db')}"


def cli(*args: str) -> int:
    return main([*args, "--no-progress"])


def specs(n: int, seed: int = 0) -> list[ArchSpec]:
    """``n`` distinct random specs of the default space."""
    rng, out, seen = random.Random(seed), [], set()
    while len(out) < n:
        s = SPACE.sample(rng)
        if s.canonical_hash() not in seen:
            seen.add(s.canonical_hash())
            out.append(s)
    return out


def write_json(path: Path, data: object) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def hashes(study: optuna.Study) -> list[str]:
    return [t.user_attrs["spec_hash"] for t in sorted(study.trials, key=lambda t: t.number)]


def one_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


# -- --enqueue --------------------------------------------------------------------------------
def test_enqueue_runs_the_file_first_in_order_and_drops_duplicates(tmp_path: Path) -> None:
    """Specs, a trial's spec attr (a JSON string), a reference name and a duplicate in one file."""
    a, b = specs(2)
    entries = [a.to_dict(), b.to_json(), "published", a.to_dict(), json.loads(b.to_json())]
    path = write_json(tmp_path / "seeds.json", entries)
    write_study(tmp_path, n_trials=5)
    assert cli("--study", "syn.toml", "--enqueue", path) == 0
    study = load(url_of(tmp_path))
    got = sorted(study.trials, key=lambda t: t.number)
    assert hashes(study)[:3] == [a.canonical_hash(), b.canonical_hash(), PUBLISHED_NASFPN.canonical_hash()]
    assert [t.user_attrs.get("enqueued_from") for t in got[:3]] == ["seeds.json[0]", "seeds.json[1]", "seeds.json[2]"]
    assert all("enqueued_from" not in t.user_attrs for t in got[3:])  # then the sampler's own
    assert len(got) == 5


def test_enqueue_skips_what_the_study_has_and_a_restart_enqueues_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a, b, c = specs(3, seed=1)
    write_study(tmp_path, n_trials=2)
    assert cli("--study", "syn.toml", "--enqueue", write_json(tmp_path / "ab.json", [a.to_dict(), b.to_dict()])) == 0
    capsys.readouterr()
    # a then-evaluated a, b and a new c: only c is new; the budget is raised so they run
    path = write_json(tmp_path / "abc.json", [a.to_dict(), b.to_dict(), c.to_dict()])
    assert cli("--study", "syn.toml", "--enqueue", path, "--n-trials", "4") == 0
    assert "enqueued 1 architecture(s), 2 already in the study" in capsys.readouterr().err
    study = load(url_of(tmp_path))
    assert hashes(study)[:3] == [a.canonical_hash(), b.canonical_hash(), c.canonical_hash()]
    # the same flags again after the budget is spent: nothing enqueued, nothing run
    assert cli("--study", "syn.toml", "--enqueue", path, "--n-trials", "4") == 0
    study = load(url_of(tmp_path))
    assert len(study.trials) == 4 and not study.get_trials(states=(TrialState.WAITING,))


def test_enqueue_says_when_the_budget_cannot_run_the_queue(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_study(tmp_path, n_trials=1)
    assert (
        cli("--study", "syn.toml", "--enqueue", write_json(tmp_path / "s.json", [s.to_dict() for s in specs(3)])) == 0
    )
    err = capsys.readouterr().err
    assert "enqueued 3 architecture(s); note: 3 trials wait in the queue and the budget of 1 has room for 1" in err


def test_enqueue_skips_architectures_waiting_in_the_queue(tmp_path: Path) -> None:
    """Trials enqueued but not yet run (here by --enqueue-references) count as present."""
    write_study(tmp_path, n_trials=1)  # only the first reference runs; fpn waits in the queue
    assert cli("--study", "syn.toml", "--enqueue-references") == 0
    study = load(url_of(tmp_path))
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    assert enqueue.known_hashes(study, SPACE) >= {PUBLISHED_NASFPN.canonical_hash(), FPN_LIKE.canonical_hash()}
    path = write_json(tmp_path / "refs.json", ["fpn", "published", FPN_LIKE.to_json()])
    assert cli("--study", "syn.toml", "--enqueue", path, "--n-trials", "2") == 0
    study = load(url_of(tmp_path))
    assert len(study.trials) == 2 and hashes(study)[1] == FPN_LIKE.canonical_hash()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_workers_with_the_same_enqueue_never_enqueue_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, backend: str
) -> None:
    """The study lock serialises "read the trials, then enqueue": two workers racing on the
    same study (threads here, each with its own storage and lock as two processes would have)
    enqueue each architecture once; without the lock this test enqueues 24."""
    url = url_of(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    many = specs(12, seed=2)
    write_study(tmp_path, n_trials=1)
    assert cli("--study", "syn.toml", "--storage", url) == 0  # the study exists, so both workers only load it
    path = write_json(tmp_path / "many.json", [s.to_dict() for s in many])
    barrier = threading.Barrier(2)
    candidates = enqueue.read_file(path, SPACE)
    slow_read = enqueue.known_hashes

    def known_hashes(study: optuna.Study, space: NasFpnSpace) -> set[str]:
        out = slow_read(study, space)
        time.sleep(0.3)  # without the lock, both workers would now see nothing queued
        return out

    monkeypatch.setattr(enqueue, "known_hashes", known_hashes)

    def worker() -> None:
        study = optuna.load_study(study_name="syn", storage=url)
        barrier.wait()
        enqueue.apply(study, candidates, url=url, space=SPACE)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    monkeypatch.setattr(enqueue, "known_hashes", slow_read)
    study = load(url)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 12
    assert len(enqueue.known_hashes(study, SPACE)) == 13
    # and two runs with the flag: the second finds them all (queued or evaluated)
    for _ in range(2):
        assert cli("--study", "syn.toml", "--storage", url, "--enqueue", path, "--n-trials", "3") == 0
    assert len(load(url).trials) == 13


def test_enqueue_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_study(tmp_path, n_trials=2)
    other = NasFpnSpace(SpaceConfig(num_cells=8, num_intermediate=3))
    foreign = other.sample(random.Random(0))
    cases = {
        "not valid JSON": str(tmp_path / "bad.json"),
        "not a list": write_json(tmp_path / "obj.json", {"a": 1}),
        "entry 1 (counting from 0) does not fit this study's search space": write_json(
            tmp_path / "foreign.json", [PUBLISHED_NASFPN.to_dict(), foreign.to_dict()]
        ),
        "entry 0 (counting from 0) is not a valid architecture": write_json(tmp_path / "junk.json", ["nasnet"]),
        "entry 2 (counting from 0) is not a valid architecture": write_json(tmp_path / "num.json", ["fpn", "fpn", 3]),
        "cannot read the file": str(tmp_path / "missing.json"),
    }
    (tmp_path / "bad.json").write_text("[{")
    for expected, path in cases.items():
        assert cli("--study", "syn.toml", "--enqueue", path) == 2, expected
        err = one_error(capsys)
        assert expected in err and "--enqueue" in err, err
        if "fit" in expected:
            assert "spec has 8 cells, the space 7" in err
    assert not (tmp_path / "studies").exists()  # not even the study was created


# -- --enqueue-top ----------------------------------------------------------------------------
def screen_study(
    tmp_path: Path, rows: list[tuple[ArchSpec, float | list[float], TrialState]], directions: list[str]
) -> str:
    """A finished source study made directly (as the runner records trials: spec and hash attrs);
    returns its storage URL."""
    (tmp_path / "studies").mkdir(exist_ok=True)
    url = url_of(tmp_path, "screen")
    study = optuna.create_study(study_name="screen", storage=url, directions=directions)
    for spec, values, state in rows:
        attrs = {"spec": spec.to_json(), "spec_hash": spec.canonical_hash()}
        study.add_trial(
            optuna.trial.create_trial(
                state=state, values=values if isinstance(values, list) else [values], user_attrs=attrs
            )
        )
    return url


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_enqueue_top_takes_the_k_best_distinct_of_another_study(
    tmp_path: Path, capsys: pytest.CaptureFixture, direction: str
) -> None:
    """Best first in the source's direction, each architecture once (a duplicate with another
    value counts at its best), pruned trials ignored; a rerun enqueues none of them again."""
    s = specs(6, seed=3)
    good = 1.0 if direction == "maximize" else -1.0
    done = TrialState.COMPLETE
    rows = [(s[0], 0.3 * good, done), (s[1], 0.1 * good, done), (s[2], 0.5 * good, done), (s[1], 0.6 * good, done),
            (s[3], 0.2 * good, done), (s[4], 0.9 * good, TrialState.PRUNED), (s[5], 0.05 * good, done)]  # fmt: skip
    url = screen_study(tmp_path, rows, [direction])
    write_study(tmp_path, "proxy", n_trials=4)
    args = ["--study", "proxy.toml", "--storage", url]
    assert cli(*args, "--enqueue-top", "screen:4") == 0
    assert "enqueued 4 architecture(s)" in capsys.readouterr().err
    proxy = load(url, "proxy")
    assert hashes(proxy) == [x.canonical_hash() for x in (s[1], s[2], s[0], s[3])]
    assert [t.user_attrs["enqueued_from"] for t in sorted(proxy.trials, key=lambda t: t.number)] == [
        "screen#3", "screen#2", "screen#0", "screen#4"
    ]  # fmt: skip
    # again, with a larger K and budget: the 4 are skipped, the 5th best is new
    assert cli(*args, "--enqueue-top", "screen:5", "--n-trials", "5") == 0
    assert "enqueued 1 architecture(s), 4 already in the study" in capsys.readouterr().err
    assert hashes(load(url, "proxy"))[4] == s[5].canonical_hash()


def test_enqueue_top_of_a_multi_objective_study_takes_its_pareto_front_first(tmp_path: Path) -> None:
    """AP up, FLOPs down: the front (a, b, d) by AP, then the next fronts (e, then c)."""
    a, b, c, d, e = specs(5, seed=4)
    done = TrialState.COMPLETE
    rows = [(a, [0.5, 10.0], done), (b, [0.4, 5.0], done), (c, [0.3, 20.0], done), (d, [0.2, 1.0], done),
            (e, [0.35, 12.0], done)]  # fmt: skip
    url = screen_study(tmp_path, rows, ["maximize", "minimize"])
    write_study(tmp_path, "proxy", n_trials=4)
    assert cli("--study", "proxy.toml", "--storage", url, "--enqueue-top", "screen:4") == 0
    assert hashes(load(url, "proxy")) == [x.canonical_hash() for x in (a, b, d, e)]


def test_enqueue_top_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_study(tmp_path, "screen", n_trials=2)
    assert cli("--study", "screen.toml") == 0
    write_study(tmp_path, "proxy", n_trials=2)
    write_study(tmp_path, "wide", n_trials=2, space={"num_cells": 8, "num_intermediate": 3})
    url = url_of(tmp_path, "screen")
    capsys.readouterr()
    cases = {
        "nothere:3": "there is no study 'nothere'",
        "screen:0": "K must be >= 1",
        "screen:x": "K must be a whole number",
        "screen": "expected STUDY:K",
        ":3": "expected STUDY:K",
    }
    for arg, expected in cases.items():
        assert cli("--study", "proxy.toml", "--storage", url, "--enqueue-top", arg) == 2, arg
        assert expected in one_error(capsys)
    # a study of another space cannot take the screen's architectures
    assert cli("--study", "wide.toml", "--storage", url, "--enqueue-top", "screen:1") == 2
    assert "does not fit this study's search space" in one_error(capsys)
    # a missing study in a storage that does not exist yet creates nothing
    assert cli("--study", "proxy.toml", "--enqueue-top", "screen:1") == 2
    assert "there is no study 'screen'" in one_error(capsys)
    assert not (tmp_path / "studies" / "proxy.db").exists()
    assert optuna.get_all_study_names(url) == ["screen"]


def test_the_shipped_screen_study_feeds_the_default_study() -> None:
    """studies/screen.toml screens with the supernet on the default study's data and space, so
    ``--enqueue-top screen:20`` into a default-proxy study fits."""
    from evo_fpn.study.config import load_config

    root = Path(__file__).resolve().parent.parent / "studies"
    screen, default = load_config(str(root / "screen.toml")), load_config(str(root / "default.toml"))
    assert (screen.objective, screen.sampler, default.objective) == ("supernet", "evolution", "proxy")
    assert screen.n_trials >= 1000 and screen.preset == default.preset and screen.space == default.space
