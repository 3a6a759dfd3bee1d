"""optuna-dashboard integration and the plotly pages CLI, on real small studies.

The optuna-dashboard test starts the real ``optuna-dashboard`` command on 127.0.0.1 and reads
its HTTP API: the study with the user attrs, each trial's architecture artifact, and the
study-level plotly figures saved by :func:`evo_fpn.viz.refresh.refresh_study_figures`.
"""

from __future__ import annotations

import json
import re
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import download_artifact, get_all_artifact_meta
from study_factory import dashboard_server, get_json, shared_studies

from evo_fpn.arch.draw import spec_to_svg
from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.cli import dashboard
from evo_fpn.study import artifacts as report
from evo_fpn.viz import refresh

CONTRACT_ATTRS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "spec_hash", "worker")


@pytest.fixture(scope="module")
def studies():
    return shared_studies()


def test_attach_architecture_uploads_the_svg(studies, tmp_path: Path) -> None:
    study = studies.load("evo-0")
    store = report.make_artifact_store(studies.artifact_dir)
    for trial in study.trials[:3]:
        metas = get_all_artifact_meta(trial, storage=study._storage)
        assert len(metas) == 1 and metas[0].mimetype == "image/svg+xml"
        assert metas[0].filename == f"arch-trial{trial.number}-{trial.user_attrs['spec_hash']}.svg"
        out = tmp_path / f"{trial.number}.svg"
        download_artifact(artifact_store=store, artifact_id=metas[0].artifact_id, file_path=str(out))
        spec = ArchSpec.from_json(trial.user_attrs["spec"])
        title = f"trial {trial.number}  ·  {spec.canonical_hash()}"
        assert out.read_text(encoding="utf-8") == spec_to_svg(spec, title=title)


def test_attach_architecture_rejects_non_specs(tmp_path: Path) -> None:
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(TypeError, match="ArchSpec"):
        report.attach_architecture(trial, {"cells": []}, report.make_artifact_store(tmp_path))


def _plot_keys(study: optuna.Study) -> list[str]:
    attrs = study._storage.get_study_system_attrs(study._study_id)  # optuna 5: no public accessor
    return sorted(k for k in attrs if k.startswith("dashboard:plot_data:"))


def test_refresh_study_figures_overwrites_by_id(studies) -> None:
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    study = studies.load(studies.costed)
    assert refresh.refresh_study_figures(study) == list(refresh.FIGURE_IDS)
    keys = _plot_keys(study)
    refresh.refresh_study_figures(study)
    assert _plot_keys(study) == keys, "a refresh replaces, it does not pile up"
    # without FLOPs attrs (the runner's synthetic objective) the AP vs FLOPs figure is skipped
    assert "ap-vs-flops" not in refresh.refresh_study_figures(studies.load("random-1"))
    graphs = get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))
    assert set(graphs) == set(refresh.FIGURE_IDS)
    best = json.loads(graphs["best-so-far-ap"])
    assert max(v for v in best["data"][0]["y"] if v is not None) == pytest.approx(study.best_value)


def test_figures_callback_refreshes_as_the_study_grows(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'cb.db'}"
    study = optuna.create_study(storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    space = NasFpnSpace()

    def objective(trial: optuna.Trial) -> float:
        spec = space.suggest(trial)
        trial.set_user_attr("spec_hash", spec.canonical_hash())
        return sum(c.op == "sum" for c in spec.cells) / 7

    study.optimize(objective, n_trials=3, callbacks=[refresh.StudyFiguresCallback(every=4)])
    assert _plot_keys(study) == []
    study.optimize(objective, n_trials=1, callbacks=[refresh.StudyFiguresCallback(every=4)])
    assert any(k.startswith("dashboard:plot_data:unique-architectures:") for k in _plot_keys(study))
    with pytest.raises(ValueError):
        refresh.StudyFiguresCallback(every=0)


def test_dashboard_command_and_artifact_dir() -> None:
    cmd = report.dashboard_command("postgresql+psycopg://evo:s3cret@db.lab:5432/evo_fpn", "/shared/artifacts")
    assert cmd == "optuna-dashboard 'postgresql+psycopg://evo:***@db.lab:5432/evo_fpn' --artifact-dir /shared/artifacts"
    assert "s3cret" not in cmd
    assert report.dashboard_command("sqlite:///studies/evo.db", None) == "optuna-dashboard sqlite:///studies/evo.db"
    assert report.default_artifact_dir("sqlite:///studies/evo.db") == Path("studies").resolve() / "artifacts"
    assert report.default_artifact_dir("postgresql+psycopg://u@h/db") == Path("studies/artifacts")


def test_optuna_dashboard_serves_attrs_artifacts_and_figures(studies) -> None:
    study = studies.load("evo-0")
    refresh.refresh_study_figures(study)
    with dashboard_server(studies.storage, studies.artifact_dir) as base:
        summaries = get_json(base + "/api/studies")["study_summaries"]
        ids = {s["study_name"]: s["study_id"] for s in summaries}
        assert set(studies.names) <= set(ids)
        sid = ids["evo-0"]
        detail = get_json(f"{base}/api/studies/{sid}")
        assert len(detail["trials"]) == len(study.trials)
        assert {"sampler", "config", "fingerprint"} <= {a["key"] for a in detail["user_attrs"]}
        by_number = {t["number"]: t for t in detail["trials"]}
        for trial in study.trials:
            served = by_number[trial.number]
            attrs = {a["key"]: a["value"] for a in served["user_attrs"]}
            for key in CONTRACT_ATTRS:
                assert attrs[key] == str(trial.user_attrs[key])
            if "lineage" in trial.user_attrs:  # the evolution lineage record, one attr, mutation first
                rec = trial.user_attrs["lineage"]
                assert json.loads(attrs["lineage"]) == rec
                assert attrs["lineage"].startswith(json.dumps({"mutation": rec["mutation"]})[:-1])
            (art,) = served["artifacts"]
            assert art["mimetype"] == "image/svg+xml"
            if trial.number < 3:  # fetch a few pictures through the dashboard
                url = f"{base}/artifacts/{sid}/{served['trial_id']}/{art['artifact_id']}"
                with urllib.request.urlopen(url, timeout=30) as r:
                    assert r.headers["Content-Type"] == "image/svg+xml"
                    root = ET.fromstring(r.read())
                cells = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "cell"]
                assert len(cells) == len(ArchSpec.from_json(trial.user_attrs["spec"]).cells)
            if "cached_from" in trial.user_attrs:
                assert attrs["cached_from"] == str(trial.user_attrs["cached_from"])
        graphs = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
        assert set(graphs) == set(refresh.FIGURE_IDS) - {"ap-vs-flops"}  # no FLOPs in synthetic runs
        unique = graphs["unique-architectures"]["data"][0]["y"]
        assert unique[-1] == len({t.user_attrs["spec_hash"] for t in study.trials})


# -- the plotly pages CLI ------------------------------------------------------------------
def _figure_json(page: str, div_id: str) -> dict:
    """The data plotly.newPlot receives for ``div_id`` in a page written by the CLI."""
    m = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{', page, re.S)
    assert m, f"no figure {div_id}"
    return {"data": json.loads(m.group(1))}


def test_cli_writes_study_and_compare_pages(studies, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pages"
    code = dashboard.main(["--study", "evo-0", "--compare", "evo-*", "random-*", "--storage", studies.storage,
                           "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out.split()
    study_page, compare_page = out / "evo-0.html", out / "compare-evo-0-evo-1-random-0-random-1.html"
    assert printed == [str(study_page), str(compare_page)]
    page = study_page.read_text(encoding="utf-8")
    assert "<script src=" not in page and "cdn.plot.ly" not in page.split("</script>", 1)[1]
    assert len(page) > 3_000_000, "plotly.js is inlined: the page works offline"
    for div in ("best-vs-trials", "best-vs-time", "ap-vs-flops", "unique-archs", "decision-freq", "lineage"):
        assert f'id="{div}"' in page
    study = studies.load("evo-0")
    best = _figure_json(page, "best-vs-trials")["data"][0]
    assert best["y"][-1] == pytest.approx(study.best_value)
    assert page.count('src="data:image/svg+xml;base64,') >= 4 + 3  # best four + lineage pictures
    compare = compare_page.read_text(encoding="utf-8")
    groups = _figure_json(compare, "group-best-vs-trials")["data"]
    assert {t["name"] for t in groups if t.get("mode") == "lines"} == {"evolution (n=2)", "random (n=2)"}


def test_cli_user_errors_are_one_line(studies, tmp_path: Path, capsys) -> None:
    assert dashboard.main(["--storage", studies.storage]) == 2
    assert dashboard.main(["--study", "nope", "--storage", studies.storage, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no study matches 'nope'" in err and "evo-0" in err and "Traceback" not in err
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    assert dashboard.main(["--study", "x", "--storage", missing]) == 2
    assert "no storage file" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.postgres
def test_optuna_dashboard_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    """The README's PostgreSQL route: the runner writes there, optuna-dashboard reads it."""
    from study_factory import run_study

    artifacts = tmp_path / "artifacts"
    study = run_study(pg_url, "pg-evo", sampler="evolution", seed=0, n_trials=6, artifact_dir=artifacts)
    cmd = report.dashboard_command(pg_url, artifacts)
    assert "***" in cmd and cmd.endswith(f"--artifact-dir {artifacts}")
    with dashboard_server(pg_url, artifacts) as base:
        (summary,) = get_json(base + "/api/studies")["study_summaries"]
        detail = get_json(f"{base}/api/studies/{summary['study_id']}")
        assert [t["number"] for t in detail["trials"]] == [t.number for t in study.trials]
        assert all(t["artifacts"][0]["mimetype"] == "image/svg+xml" for t in detail["trials"])
        assert {g["id"] for g in detail["plotly_graph_objects"]} >= {"best-so-far-ap", "unique-architectures"}


def test_cli_default_storage_is_each_studys_own_file(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Without --storage, studies are found where the runner puts them: studies/NAME.db."""
    from study_factory import _scratch_dir, run_study

    work = _scratch_dir()  # in RAM: SQLite commits on disk are slow on shared machines
    monkeypatch.chdir(work)
    monkeypatch.delenv("EVO_FPN_STORAGE", raising=False)
    for name in ("demo-a", "demo-b"):
        run_study(f"sqlite:///studies/{name}.db", name, sampler="random", seed=0, n_trials=3,
                  artifact_dir=work / "studies" / "artifacts")  # fmt: skip
    assert dashboard.main(["--study", "demo-a", "--compare", "demo-*"]) == 0
    written = ["dashboards/out/demo-a.html", "dashboards/out/compare-demo-a-demo-b.html"]
    assert capsys.readouterr().out.split() == written
    assert dashboard.main(["--study", "demo-c"]) == 2
    assert "studies/*.db" in capsys.readouterr().err
