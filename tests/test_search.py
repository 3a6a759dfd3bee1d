"""``python -m evo_fpn.search``: the whole flow in one command, its resume, its bad inputs and its report.

The bad inputs run in-process on a fresh cache (milliseconds: every stage is checked before
anything is built). The full runs are slow: the issue's own command on the quick preset, and a
kill-and-rerun on the quick preset made tiny with ``--set`` (1 backbone epoch, 1 supernet
epoch, 64 training images), because a kill test needs several runs.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from run_worker import sigint_default, wait_for

from evo_fpn.arch.spec import PUBLISHED_NASFPN
from evo_fpn.cli.search import main
from evo_fpn.study import pipeline
from evo_fpn.viz.report import ReportData, report_html, report_md

TINY = [
    "--set", "proxy.backbone_epochs=1", "--set", "proxy.epochs=1", "--set", "proxy.digits_train=64",
    "--set", "proxy.digits_val=32", "--set", "supernet.epochs=1",
]  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVO_FPN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EVO_FPN_STORAGE", raising=False)


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- bad input: one line, exit 2, nothing written ------------------------------------------
def _refused(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str) -> str:
    before = _listing(tmp_path)
    url = f"sqlite:///{tmp_path / 'db' / 's.db'}"
    code = main(["mine", "--storage", url, "--out", str(tmp_path / "out"), "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err
    assert _listing(tmp_path) == before  # no storage, no out folder, no cache
    return err


def test_missing_data_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _refused(tmp_path, capsys, "--data", str(tmp_path / "nowhere"))
    assert "--data" in err and "no such folder" in err


def test_more_finalists_than_screened_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _refused(tmp_path, capsys, "--screen", "3", "--finalists", "5")
    assert "--finalists 5" in err and "--screen 3" in err


def test_out_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "out").write_text("not a folder")
    err = _refused(tmp_path, capsys)
    assert "is a file" in err


def test_screen_of_other_settings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A storage already holding mine-screen measured with other settings (another fingerprint)."""
    (tmp_path / "db").mkdir()
    url = f"sqlite:///{tmp_path / 'db' / 's.db'}"
    study = optuna.create_study(study_name="mine-screen", storage=url, direction="maximize")
    study.set_user_attr("fingerprint", "0123456789abcdef")
    study.set_user_attr("config", {"proxy": {"epochs": 3.0}})
    del study
    size = (tmp_path / "db" / "s.db").stat().st_size
    err = _refused(tmp_path, capsys, "--preset", "quick")
    assert "'mine-screen'" in err and "different proxy task or search space" in err
    assert (tmp_path / "db" / "s.db").stat().st_size == size


# -- the stages as data --------------------------------------------------------------------
def test_stages_name_three_studies_and_the_runner_flags() -> None:
    s = pipeline.Settings(name="mine", url="sqlite:///x.db", preset="quick", data="/d", screen=40, finalists=3,
                          retrain_epochs=2, seeds=2, sets=("proxy.epochs=1",))  # fmt: skip
    screen, finalists, retrain = pipeline.stages(s)
    assert (screen.study, finalists.study, retrain.study) == ("mine-screen", "mine-finalists", "mine-retrain")
    assert (screen.n_trials, finalists.n_trials, retrain.n_trials) == (40, 3, 4)
    assert screen.argv[:6] == ("--study", "screen", "--new-study", "mine-screen", "--n-trials", "40")
    assert "--enqueue-top" in finalists.argv and "mine-screen:3" in finalists.argv
    for argv in (screen.argv, finalists.argv):
        assert {"--data", "/d", "--preset", "quick", "proxy.epochs=1"} <= set(argv)
    est = pipeline.estimate(s, [screen, finalists, retrain], backbone_cached=False, supernet_cached=True,
                            train_images=None)  # fmt: skip
    assert [e.stage for e in est] == ["build", "screen", "finalists", "retrain"]
    assert not any(e.measured for e in est) and est[3].seconds is None  # your data: no guess for its size


def test_report_renders_the_comparison_offline() -> None:
    run = lambda seed, ap: {"seed": seed, "ap": ap, "ap50": ap + 0.2, "ap75": ap, "ap_small": None,  # noqa: E731
                            "ap_medium": ap, "ap_large": ap}  # fmt: skip
    data = ReportData(
        name="mine",
        spec=PUBLISHED_NASFPN,
        runs={"found": [run(0, 0.31), run(1, 0.29)], "torchvision_fpn": [run(0, 0.25), run(1, 0.27)]},
        costs={
            "found": {"neck_flops": 2.0e7, "neck_params": 300_000, "total_flops": 5e8, "total_params": 5_000_000},
            "torchvision_fpn": {
                "neck_flops": 1.8e7,
                "neck_params": 240_000,
                "total_flops": 4.9e8,
                "total_params": 4_900_000,
            },
        },  # fmt: skip
        latency={
            "found": {"latency_ms": 20.0, "latency_std_ms": 1.0, "latency_device": "cpu"},
            "torchvision_fpn": {"latency_ms": 18.0, "latency_std_ms": 1.0},
        },  # fmt: skip
        finalists=[
            {
                "trial": 0,
                "origin": "mine-screen#7",
                "ap": 0.2,
                "ap50": 0.4,
                "neck_flops": 2e7,
                "neck_params": 300_000,
                "screen_ap": 0.1,
                "winner": True,
            }
        ],  # fmt: skip
        settings={"preset": "quick"},
        command="python -m evo_fpn.search mine",
    )
    md = report_md(data)
    assert "AP 0.3000 against torchvision FPN's 0.2600 (+0.0400, above FPN)" in md
    assert "| AP | 0.3000 ± 0.0141 | 0.2600 ± 0.0141 | +0.0400 |" in md
    assert "| neck MFLOPs / image | 20.0 | 18.0 | x1.11 |" in md and "| 1 | #0 | mine-screen#7 |" in md
    page = report_html(data)
    assert "<script" in page and 'src="http' not in page  # plotly inlined: readable offline
    assert "data:image/svg+xml;base64," in page and "End-to-end AP per seed" in page


# -- whole runs (slow) -------------------------------------------------------------------------
def _search(tmp_path: Path, *args: str) -> list[str]:
    url = f"sqlite:///{tmp_path / 'db' / 's.db'}"
    return [sys.executable, "-m", "evo_fpn.search", "mine", "--storage", url, "--out", str(tmp_path / "out"),
            "--threads", "1", "--no-progress", *args]  # fmt: skip


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "EVO_FPN_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}


@pytest.mark.slow  # the issue's command on the quick preset: ~8 min on 2 busy cores (backbone, supernet, 30+2+2 trials)
def test_the_issue_command_leaves_a_report_and_an_onnx_neck(tmp_path: Path) -> None:
    import onnx

    args = ["--preset", "quick", "--screen", "30", "--finalists", "2", "--retrain-epochs", "1", "--seeds", "1"]
    done = subprocess.run(_search(tmp_path, *args), cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=3600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    assert {"best.json", "report.html", "report.md", "neck.onnx", "model.pt", "metrics.json"} <= set(os.listdir(out))
    onnx.checker.check_model(onnx.load(str(out / "neck.onnx")))
    assert "cells" in json.loads((out / "best.json").read_text())
    assert "torchvision FPN" in (out / "report.md").read_text()
    assert "1. backbone stage + supernet" in done.stderr and "[4/5] retrain" in done.stderr


def _running_in(db: Path, study: str, state: str = "RUNNING", at_least: int = 1) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = ? AND t.state = ?",
                (study, state),
            ).fetchone()
    except sqlite3.OperationalError:
        return False
    return bool(row and row[0] >= at_least)


def _complete(url: str, study: str) -> dict[int, object]:
    s = optuna.load_study(study_name=study, storage=url)
    return {t.number: t.datetime_complete for t in s.get_trials(states=(TrialState.COMPLETE,))}


@pytest.mark.slow  # two tiny searches, each interrupted and rerun: 10.5 min measured on 2 heavily loaded cores
@pytest.mark.parametrize(("stage", "sig"), [("screen", signal.SIGINT), ("retrain", signal.SIGKILL)])
def test_killed_in_a_stage_the_rerun_finishes_without_redoing_trials(tmp_path: Path, stage: str, sig: int) -> None:
    args = ["--preset", "quick", "--screen", "12", "--finalists", "2", "--retrain-epochs", "2", "--seeds", "1", *TINY]
    db = tmp_path / "db" / "s.db"
    url = f"sqlite:///{db}"
    proc = subprocess.Popen(_search(tmp_path, *args), cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)  # fmt: skip
    try:
        if stage == "screen":  # a few screened, one running
            wait_for(lambda: _running_in(db, "mine-screen", "COMPLETE", 3) and _running_in(db, "mine-screen"), 600,
                     "the screen to be under way", poll=0.05)  # fmt: skip
        else:
            wait_for(lambda: _running_in(db, "mine-retrain"), 600, "a retrain trial to run", poll=0.05)
    except AssertionError:
        proc.kill()
        raise AssertionError(proc.communicate()[1][-3000:]) from None
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err[-2000:]
    before = {name: _complete(url, name) for name in ("mine-screen", "mine-finalists", "mine-retrain")
              if _running_in(db, name, "COMPLETE")}  # fmt: skip
    assert before
    done = subprocess.run(_search(tmp_path, *args), cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for name, trials in before.items():
        after = _complete(url, name)
        assert {n: after.get(n) for n in trials} == trials  # finished trials kept, not run again
    assert (len(_complete(url, "mine-screen")), len(_complete(url, "mine-finalists"))) == (12, 2)
    assert len(_complete(url, "mine-retrain")) == 2
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "neck.onnx").is_file()
