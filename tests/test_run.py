"""The runner on SQLite: budget, resume after a crash, fingerprints, duplicates, failures, bad input.

Mechanics run on the synthetic objective (same plumbing, no training); bad inputs are run
both in-process (fast) and once as a real ``python -m evo_fpn.run`` process.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from run_worker import load, run, start, states, wait_for, write_study

from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN
from evo_fpn.cli.run import main
from evo_fpn.samplers.evolution import parent_of

pytestmark = pytest.mark.usefixtures("runner_env")


def url_of(tmp_path: Path, name: str = "syn") -> str:
    return f"sqlite:///{tmp_path / 'studies' / (name + '.db')}"


def cli(*args: str) -> int:
    return main([*args, "--no-progress"])


def test_fresh_run_finishes_the_budget_and_records_everything(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_study(tmp_path, n_trials=3)
    assert cli("--study", "syn.toml") == 0
    out = capsys.readouterr().out
    study = load(url_of(tmp_path))
    assert states(study) == {"COMPLETE": 3}
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    attrs = study.user_attrs
    assert len(attrs["fingerprint"]) == 16 and attrs["sampler"] == "random" and attrs["n_trials"] == 3
    assert attrs["config"]["objective"] == "synthetic" and attrs["code_version"].startswith("0.")
    assert study.metric_names == ["ap"]  # optuna-dashboard labels the value "ap", not "Objective 0"
    best = max(study.trials, key=lambda t: t.value)
    for t in study.trials:
        assert {"worker", "spec", "spec_hash", "ap", "ap50", "ap_small"} <= set(t.user_attrs)
        assert t.value == pytest.approx(t.user_attrs["ap"])
    # summary: best trial, its architecture table, AP breakdown, the dashboard command
    assert f"best trial #{best.number}: AP {best.value:.4f}" in out
    assert "cell   level  op" in out and "AP50" in out and "APs" in out
    assert "optuna-dashboard sqlite:///studies/syn.db --artifact-dir" in out
    assert (tmp_path / "studies" / "artifacts").is_dir()


def test_resume_after_a_crash_finishes_the_budget_and_no_more(tmp_path: Path) -> None:
    """SIGKILL a run mid-trial; the rerun fails the stale trial, retries it, and stops at the budget."""
    write_study(tmp_path, n_trials=4, sleep=1.5)
    url = url_of(tmp_path)
    proc = start(["--study", "syn.toml"], tmp_path)
    db = tmp_path / "studies" / "syn.db"

    def second_trial_evaluating() -> bool:
        # evaluating (spec decided), not half-way through suggesting its params; read-only SQL
        # so the poll never takes a write lock from the worker
        if not db.exists():
            return False
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                row = conn.execute(
                    "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                    "WHERE t.state = 'RUNNING' AND t.number >= 1 AND a.key = 'spec'"
                ).fetchone()
        except sqlite3.OperationalError:  # tables not created yet
            return False
        return bool(row and row[0])

    try:
        wait_for(second_trial_evaluating, 90, "the second trial to start", poll=0.1)
    except AssertionError:
        proc.kill()
        raise AssertionError(f"worker never reached trial 1: {proc.communicate()[1][-2000:]}") from None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = load(url)
    killed = [t for t in before.trials if t.state == TrialState.RUNNING]
    assert len(killed) == 1 and states(before).get("COMPLETE", 0) >= 1
    assert cli("--study", "syn.toml", "--set", "synthetic.sleep=0.0") == 0
    study = load(url)
    assert states(study) == {"COMPLETE": 4, "FAIL": 1}
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == killed[0].params
    # a third run has nothing left to do
    assert cli("--study", "syn.toml") == 0
    assert len(load(url).trials) == 5
    # a larger budget continues the same study to the new total
    assert cli("--study", "syn.toml", "--n-trials", "6") == 0
    assert states(load(url)) == {"COMPLETE": 6, "FAIL": 1}


def test_different_fingerprint_is_refused_and_new_study_starts_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_study(tmp_path, n_trials=2)
    assert cli("--study", "syn.toml") == 0
    capsys.readouterr()
    db = tmp_path / "studies" / "syn.db"
    size = db.stat().st_size
    assert cli("--study", "syn.toml", "--set", "synthetic.noise=0.2") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "different proxy task or search space" in err
    assert "synthetic.noise" in err and "--new-study" in err
    assert len(load(url_of(tmp_path)).trials) == 2 and db.stat().st_size == size
    assert cli("--study", "syn.toml", "--set", "synthetic.noise=0.2", "--new-study", "syn-b") == 0
    other = load(url_of(tmp_path, "syn-b"), "syn-b")
    assert (
        states(other) == {"COMPLETE": 2}
        and other.user_attrs["fingerprint"] != load(url_of(tmp_path)).user_attrs["fingerprint"]
    )


def test_duplicate_architectures_reuse_earlier_metrics(tmp_path: Path) -> None:
    # Two levels, sum only: at most 6 distinct networks, so 10 trials must repeat some.
    space = {"min_level": 3, "max_level": 4, "num_cells": 2, "num_intermediate": 0, "ops": ["sum"]}
    write_study(tmp_path, n_trials=10, space=space)
    assert cli("--study", "syn.toml") == 0
    study = load(url_of(tmp_path))
    by_number = {t.number: t for t in study.trials}
    cached = [t for t in study.trials if "cached_from" in t.user_attrs]
    assert cached and states(study) == {"COMPLETE": 10}
    for t in cached:
        src = by_number[t.user_attrs["cached_from"]]
        assert src.number < t.number and "cached_from" not in src.user_attrs
        assert src.user_attrs["spec_hash"] == t.user_attrs["spec_hash"] and src.value == t.value
        assert t.user_attrs["ap"] == src.user_attrs["ap"] and "train_seconds" not in t.user_attrs
    hashes = [t.user_attrs["spec_hash"] for t in study.trials if "cached_from" not in t.user_attrs]
    assert len(hashes) == len(set(hashes))
    # --no-dedup trains every duplicate again
    assert cli("--study", "syn.toml", "--new-study", "nodedup", "--no-dedup") == 0
    nd = load(url_of(tmp_path, "nodedup"), "nodedup")
    assert not any("cached_from" in t.user_attrs for t in nd.trials)
    assert len({t.user_attrs["spec_hash"] for t in nd.trials}) < 10


def test_failed_trials_are_recorded_and_the_worker_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_study(tmp_path, n_trials=4, synthetic={"fail_fraction": 0.4})
    assert cli("--study", "syn.toml") == 0
    study = load(url_of(tmp_path))
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert states(study)["COMPLETE"] == 4 and failed
    assert all(t.user_attrs["fail_reason"] == "synthetic failure (loss became NaN)" for t in failed)
    assert "Traceback" not in capsys.readouterr().err


def test_enqueue_references_puts_published_and_fpn_first(tmp_path: Path) -> None:
    write_study(tmp_path, n_trials=3)
    assert cli("--study", "syn.toml", "--enqueue-references") == 0
    study = load(url_of(tmp_path))
    first = sorted(study.trials, key=lambda t: t.number)[:2]
    assert [t.user_attrs["reference"] for t in first] == ["published", "fpn"]
    assert first[0].user_attrs["spec_hash"] == PUBLISHED_NASFPN.canonical_hash()
    assert first[1].user_attrs["spec_hash"] == FPN_LIKE.canonical_hash()
    assert study.user_attrs["references_enqueued"] is True


def test_pruned_trials_count_towards_the_budget(tmp_path: Path) -> None:
    write_study(tmp_path, n_trials=8, synthetic={"steps": 4}, extra='[pruner]\nname = "median"\n')
    text = (tmp_path / "syn.toml").read_text().replace('[pruner]\nname = "median"\n', "")
    (tmp_path / "syn.toml").write_text(text + '\n[pruner]\nname = "median"\n[pruner.median]\nn_startup_trials = 2\n')
    assert cli("--study", "syn.toml") == 0
    study = load(url_of(tmp_path))
    s = states(study)
    assert s.get("COMPLETE", 0) + s.get("PRUNED", 0) == 8 and s.get("PRUNED", 0) >= 1


def test_timeout_stops_starting_trials(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_study(tmp_path, n_trials=50, sleep=0.4)
    assert cli("--study", "syn.toml", "--timeout", "1") == 0
    done = states(load(url_of(tmp_path)))["COMPLETE"]
    assert 1 <= done < 10
    assert f"{done} of 50 trials finished" in capsys.readouterr().out


def test_a_run_of_failures_stops_the_worker_with_advice(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_study(tmp_path, n_trials=5, synthetic={"fail_fraction": 0.97}, extra="")
    path = tmp_path / "syn.toml"
    path.write_text(path.read_text().replace("[runner]\n", "[runner]\nmax_consecutive_failures = 3\n"))
    assert cli("--study", "syn.toml") == 2
    err = capsys.readouterr().err
    assert "3 trials in a row failed" in err and "Traceback" not in err
    assert states(load(url_of(tmp_path))).get("FAIL", 0) >= 3


@pytest.mark.slow
def test_quick_preset_end_to_end_with_the_real_proxy(tmp_path: Path) -> None:
    """The README's first command (budget cut to 3 trials): real training, real COCO AP."""
    proc = run(["--study", "quick", "--n-trials", "3", "--device", "cpu"], tmp_path, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(url_of(tmp_path, "quick"), "quick")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert states(study) == {"COMPLETE": 3}
    assert [t.user_attrs.get("reference") for t in trials[:2]] == ["published", "fpn"]
    assert parent_of(trials[2].user_attrs) in (0, 1), "the demo's third trial is an evolution child"
    for t in trials:
        attrs = t.user_attrs
        assert 0.0 <= t.value <= 1.0 and t.value == attrs["ap"]
        assert attrs["neck_params"] > 0 and attrs["total_flops"] > attrs["neck_flops"] > 0
        assert {"ap50", "ap75", "ap_small", "train_seconds", "spec", "spec_hash", "worker"} <= set(attrs)
    assert "best trial #" in proc.stdout and "optuna-dashboard sqlite:///studies/quick.db" in proc.stdout
    assert any((tmp_path / "studies" / "artifacts").rglob("*")), "architecture pictures were uploaded"
    again = run(["--study", "quick", "--n-trials", "3", "--device", "cpu"], tmp_path, timeout=600)
    assert again.returncode == 0 and len(load(url_of(tmp_path, "quick"), "quick").trials) == 3


def _sqlite_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in tmp_path.rglob("*") if p.suffix in (".db", ".sqlite3") or p.name.endswith("-wal"))


BAD_INPUTS = [
    (["--study", "nonexistent"], "unknown study 'nonexistent'"),
    (["--study", "missing/file.toml"], "does not exist"),
    (["--study", "syn.toml", "--sampler", "annealing"], "invalid choice: 'annealing'"),
    (["--study", "syn.toml", "--pruner", "guess"], "invalid choice: 'guess'"),
    (["--study", "bad.toml"], "is not valid TOML"),
    (["--study", "badkey.toml"], "unknown key 'n_trial'"),
    (["--study", "syn.toml", "--storage", "not a url"], "invalid storage URL"),
    (["--study", "syn.toml", "--storage", "mysql://u:secret@h/db"], "unsupported storage 'mysql'"),
    (["--study", "syn.toml", "--storage", "sqlite://"], "in-memory SQLite"),
    (["--study", "syn.toml", "--n-trials", "0"], "n_trials must be an integer >= 1"),
    (["--study", "syn.toml", "--n-trials", "-2"], "n_trials must be an integer >= 1"),
    (["--study", "syn.toml", "--timeout", "0"], "timeout must be a positive number"),
    (["--study", "syn.toml", "--workers", "2"], "SQLite is for one process"),
    (["--study", "syn.toml", "--workers", "0"], "--workers must be >= 1"),
    (["--study", "syn.toml", "--set", "synthetic.fail_fraction=2"], "fail_fraction"),
    (["--study", "syn.toml", "--set", "nonsense"], "KEY=VALUE"),
    (["--study", "syn.toml", "--new-study", "../x"], "study name"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_INPUTS, ids=[n for _, n in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], needle: str
) -> None:
    write_study(tmp_path, n_trials=2)
    (tmp_path / "bad.toml").write_text("n_trials = = 3\n")
    (tmp_path / "badkey.toml").write_text("n_trial = 3\n")
    assert cli(*args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert "Traceback" not in captured.err and "secret" not in captured.err
    assert _sqlite_files(tmp_path) == [] and not (tmp_path / "studies").exists()


def _malformed_dataset(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    (root / "val").mkdir()
    (root / "annotations" / "instances_train.json").write_text('{"images": [ {"id": 1,, }')
    (root / "annotations" / "instances_val.json").write_text('{"images": [], "annotations": [], "categories": []}')
    return root


@pytest.mark.parametrize(
    ("data", "needle"),
    [("no/such/folder", "dataset folder"), ("coco_bad", "instances_train.json: not valid JSON")],
    ids=["missing dataset", "malformed annotations"],
)
def test_dataset_problems_with_the_real_proxy_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, data: str, needle: str
) -> None:
    _malformed_dataset(tmp_path / "coco_bad")
    assert cli("--study", "quick", "--data", data, "--device", "cpu") == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert "Traceback" not in captured.err
    assert _sqlite_files(tmp_path) == [] and not (tmp_path / "studies").exists()


def test_bad_input_as_a_real_command_has_no_traceback(tmp_path: Path) -> None:
    write_study(tmp_path, n_trials=2)
    proc = run(["--study", "syn.toml", "--storage", "postgresql+psycopg://u:hunter2@/"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "names no database" in proc.stderr
    assert "Traceback" not in proc.stderr and "hunter2" not in proc.stderr + proc.stdout


def test_existing_non_evo_fpn_study_is_not_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("evo_fpn.study.open.FINGERPRINT_WAIT_S", 0.5)
    write_study(tmp_path, n_trials=2)
    (tmp_path / "studies").mkdir()
    url = url_of(tmp_path)
    optuna.create_study(study_name="syn", storage=url, direction="maximize")
    assert cli("--study", "syn.toml") == 2
    assert "not made by evo_fpn.run" in capsys.readouterr().err
    assert load(url).trials == []


def test_study_attrs_are_plain_json(tmp_path: Path) -> None:
    write_study(tmp_path, n_trials=1)
    assert cli("--study", "syn.toml") == 0
    db = sqlite3.connect(tmp_path / "studies" / "syn.db")
    rows = dict(db.execute("SELECT key, value_json FROM study_user_attributes").fetchall())
    db.close()
    config = json.loads(rows["config"])
    assert config["synthetic"]["sleep"] == 0.0 and config["space"]["num_cells"] == 7
    assert json.loads(rows["fingerprint_parts"])["objective"] == "synthetic"
    assert os.path.basename(config["source"]) == "syn.toml"


def test_resumed_evolution_study_continues_exactly_as_an_uninterrupted_one(tmp_path: Path) -> None:
    """Our samplers derive each trial's randomness from (seed, trial number): no re-seed on resume."""
    for name in ("whole", "split"):
        path = write_study(tmp_path, name, n_trials=10, sampler="evolution", extra="seed = 3")
        path.write_text(path.read_text() + "[sampler.evolution]\npopulation_size = 4\nsample_size = 2\n")
    assert cli("--study", "whole.toml", "--no-dedup") == 0
    assert cli("--study", "split.toml", "--no-dedup", "--n-trials", "6") == 0
    assert cli("--study", "split.toml", "--no-dedup") == 0
    whole = load(url_of(tmp_path, "whole"), "whole").trials
    split = load(url_of(tmp_path, "split"), "split").trials
    assert [t.params for t in whole] == [t.params for t in split]
    assert [parent_of(t.user_attrs) for t in whole] == [parent_of(t.user_attrs) for t in split]
    assert any(parent_of(t.user_attrs) is not None for t in whole[4:])  # evolution really mutated


def test_busy_cpu_hint_only_for_cpu_training_with_default_threads_on_a_loaded_machine(tmp_path: Path) -> None:
    from evo_fpn.cli.run import build_parser, busy_cpu_hint, prepare

    def prepared(*extra: str):  # validation only: prepare() writes nothing
        argv = ["--study", "quick", "--storage", f"sqlite:///{tmp_path}/s.db", *extra]
        return prepare(build_parser().parse_args(argv))

    cpu = prepared("--device", "cpu")
    hint = busy_cpu_hint(cpu, threads=None, load=3.1, cores=2)
    assert hint is not None and "load 3.1 on 2 cores" in hint and "--threads 1" in hint
    assert busy_cpu_hint(cpu, threads=1, load=3.1, cores=2) is None  # the user chose
    assert busy_cpu_hint(cpu, threads=None, load=0.4, cores=2) is None  # idle machine
    synthetic = prepared("--device", "cpu", "--objective", "synthetic")
    assert busy_cpu_hint(synthetic, threads=None, load=3.1, cores=2) is None  # no training
    assert not (tmp_path / "s.db").exists()


def test_summary_names_the_best_trial_in_the_studys_direction() -> None:
    from optuna.trial import create_trial

    from evo_fpn.study.summary import summary

    for direction, best in (("maximize", 2), ("minimize", 0)):
        study = optuna.create_study(study_name="s", direction=direction)
        for v in (0.1, 0.3, 0.5, 0.5):
            study.add_trial(create_trial(value=v, user_attrs={"ap": v, "ap50": 2 * v}))
        text = summary(
            study,
            n_trials=4,
            url="postgresql://u:s3cret@h/db",
            sampler="random",
            fingerprint="f" * 16,
            artifact_dir=None,
            elapsed=61,
        )
        assert "study s: 4 of 4 trials finished (4 complete" in text and "in 1m01s" in text
        assert f"best trial #{best}: AP {study.best_value:.4f}" in text
        assert "s3cret" not in text
        assert "storage: postgresql://u:***@h/db" in text and "optuna-dashboard 'postgresql" in text
