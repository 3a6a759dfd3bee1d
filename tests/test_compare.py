"""``python -m evo_fpn.compare``: one row per comparable study; mixed fingerprints refused."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from run_worker import load, write_study

from evo_fpn.cli.compare import format_table, study_row
from evo_fpn.cli.compare import main as compare
from evo_fpn.cli.run import main as run


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVO_FPN_STORAGE", raising=False)


def test_table_of_comparable_studies(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_study(tmp_path, "syn", n_trials=4)
    assert run(["--study", "syn.toml", "--new-study", "by-random", "--no-progress"]) == 0
    assert run(["--study", "syn.toml", "--new-study", "by-evolution", "--sampler", "evolution", "--n-trials", "6",
                "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    assert compare(["by-random", "by-evolution"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["study", "sampler", "trials", "failed", "best", "AP", "best", "AP", "@4", "time"]
    rows = {line.split()[0]: line.split() for line in out[2:4]}
    for name, sampler, n in (("by-random", "random", 4), ("by-evolution", "evolution", 6)):
        study = load(f"sqlite:///{tmp_path / 'studies' / (name + '.db')}", name)
        best = max(t.value for t in study.trials)
        first4 = sorted(study.trials, key=lambda t: t.datetime_complete)[:4]
        assert rows[name][1] == sampler and rows[name][2] == f"{n}/{n}" and rows[name][3] == "0"
        assert rows[name][4] == f"{best:.4f}" and rows[name][5] == f"{max(t.value for t in first4):.4f}"
    assert out[-1].startswith(f"fingerprint {study.user_attrs['fingerprint']}")


def test_one_storage_holding_several_studies(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_study(tmp_path, "syn", n_trials=2)
    url = f"sqlite:///{tmp_path / 'all.db'}"
    for name in ("a", "b"):
        assert run(["--study", "syn.toml", "--new-study", name, "--storage", url, "--no-progress"]) == 0
    capsys.readouterr()
    assert compare(["a", "b", "--storage", url]) == 0
    assert {line.split()[0] for line in capsys.readouterr().out.splitlines()[2:4]} == {"a", "b"}


def test_mixed_fingerprints_and_missing_studies_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_study(tmp_path, "syn", n_trials=2)
    assert run(["--study", "syn.toml", "--new-study", "x", "--no-progress"]) == 0
    assert run(["--study", "syn.toml", "--new-study", "y", "--set", "synthetic.noise=0.2", "--no-progress"]) == 0
    capsys.readouterr()
    assert compare(["x", "y"]) == 2
    err = capsys.readouterr().err.strip()
    assert "measured different things" in err and "\n" not in err
    assert compare(["x", "zzz"]) == 2
    assert "no study 'zzz'" in capsys.readouterr().err
    assert not (tmp_path / "studies" / "zzz.db").exists()
    assert compare(["x", "x"]) == 2
    assert compare([]) == 2


def test_rows_follow_each_studys_direction() -> None:
    rows = []
    for name, values in (("low", [0.5, 0.2, 0.4]), ("lower", [0.3, 0.1, 0.6])):
        study = optuna.create_study(study_name=name, direction="minimize")
        for v in values:
            study.add_trial(create_trial(value=v))
        study.add_trial(create_trial(state=TrialState.PRUNED, value=0.0, intermediate_values={0: 0.0}))
        study.set_user_attr("fingerprint", "f")
        rows.append(study_row(study))
    low, lower = rows
    assert low.curve == (0.5, 0.2, 0.2, 0.2) and low.best_ap == 0.2  # the pruned 0.0 is an early value
    assert lower.best_after(1) == 0.3 and lower.best_ap == 0.1
    table = format_table(rows).splitlines()
    assert [line.split()[0] for line in table[2:4]] == ["lower", "low"]  # best (lowest) first
