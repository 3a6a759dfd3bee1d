"""Every figure, built from real small studies made by the project (tests/study_factory.py).

Each test recomputes what the figure should show straight from the Optuna trials and
compares it with the numbers inside the plotly figure.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from study_factory import shared_studies

from evo_fpn.arch.spec import OPS
from evo_fpn.samplers.evolution import LINEAGE_ATTR, parent_of
from evo_fpn.viz import figures, pages, study_data
from evo_fpn.viz.study_data import StudyData


@pytest.fixture(scope="module")
def studies():
    return shared_studies()


@pytest.fixture(scope="module")
def evo(studies) -> StudyData:
    return StudyData.from_study(studies.load("evo-0"))


def _complete_ap(study: optuna.Study) -> dict[int, float]:
    return {t.number: t.user_attrs["ap"] for t in study.trials if t.state == TrialState.COMPLETE}


def test_study_data_reads_the_study(studies, evo: StudyData) -> None:
    study = studies.load("evo-0")
    assert [t.number for t in evo.trials] == [t.number for t in study.trials]
    assert evo.sampler == "evolution" and evo.seed == 0
    assert {t.number: t.ap for t in evo.complete} == _complete_ap(study)
    # the spec attr and the params give the same architecture
    t = evo.trials[5]
    assert evo.spec(t).canonical_hash() == t.user_attrs["spec_hash"]


def test_best_so_far_by_trial_excludes_pruned(studies) -> None:
    for name in studies.names:
        study = studies.load(name)
        xs, ys = figures.best_so_far_by_trial(StudyData.from_study(study))
        aps = _complete_ap(study)
        for n, y in zip(xs, ys, strict=True):
            seen = [ap for k, ap in aps.items() if k <= n]
            assert (math.isnan(y) and not seen) or y == max(seen)
    # A pruned trial with a high early value must not lift the curve.
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.30, user_attrs={"ap": 0.30}))
    pruned = optuna.trial.create_trial(state=TrialState.PRUNED, value=0.9, intermediate_values={0: 0.9})
    study.add_trial(pruned)
    study.add_trial(optuna.trial.create_trial(value=0.35, user_attrs={"ap": 0.35}))
    _, ys = figures.best_so_far_by_trial(StudyData.from_study(study))
    assert list(ys) == [0.30, 0.30, 0.35]


def test_best_so_far_by_time_is_in_completion_order(studies) -> None:
    study = studies.load("random-1")
    hours, best = figures.best_so_far_by_time(StudyData.from_study(study))
    done = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.datetime_complete)
    t0 = min(t.datetime_start for t in study.trials)
    assert np.allclose(hours, [(t.datetime_complete - t0).total_seconds() / 3600 for t in done])
    assert list(best) == list(np.maximum.accumulate([t.value for t in done]))


def test_grouped_curves_mean_and_band_over_seeds(studies) -> None:
    datas = [StudyData.from_study(studies.load(n)) for n in studies.names]
    fig = figures.best_so_far_figure(datas, x="trial", group=True)
    means = {t.legendgroup: t for t in fig.data if t.mode == "lines"}
    bands = {t.legendgroup: t for t in fig.data if t.fill == "toself"}
    assert set(means) == set(bands) == {"evolution", "random"}
    assert means["evolution"].name == "evolution (n=2)"
    for sampler, names in (("evolution", studies.evolution), ("random", studies.random)):
        curves = [figures.best_so_far_by_trial(StudyData.from_study(studies.load(n)))[1] for n in names]
        n = min(len(c) for c in curves)
        stack = np.vstack([c[:n] for c in curves])
        x = np.asarray(means[sampler].x, dtype=int)
        with np.errstate(all="ignore"):
            want = np.nanmean(stack, axis=0)[x]
        assert np.allclose(np.asarray(means[sampler].y, dtype=float), want)
        band_y = np.asarray(bands[sampler].y, dtype=float)
        hi, lo = band_y[: len(x)], band_y[len(x) :][::-1]
        assert np.all(lo <= np.asarray(means[sampler].y) + 1e-12)
        assert np.all(np.asarray(means[sampler].y) <= hi + 1e-12)
        assert np.allclose(hi, np.nanmax(stack, axis=0)[x])
    time_fig = figures.best_so_far_figure(datas, x="time", group=True)
    assert {t.legendgroup for t in time_fig.data if t.mode == "lines"} == {"evolution", "random"}
    assert "seconds" in time_fig.layout.xaxis.title.text  # a few-second study gets a seconds axis


def test_constant_best_ap_is_drawn_at_its_value() -> None:
    """Issue 30: one AP over every trial was a flat line at about 0 on plotly's -1..1 axis."""
    study = optuna.create_study(direction="maximize")
    for flops in (1e9, 2e9, 3e9, 4e9):
        study.add_trial(optuna.trial.create_trial(value=0.0247, user_attrs={"ap": 0.0247, "neck_flops": flops}))
    data = StudyData.from_study(study)
    for fig in (
        figures.best_so_far_figure([data], x="trial"),
        figures.best_so_far_figure([data], x="time"),
        figures.best_so_far_figure([data], x="trial", group=True),
        figures.ap_vs_flops_figure(data),
    ):
        lo, hi = fig.layout.yaxis.range
        assert lo < 0.0247 < hi, fig.layout.title.text
        assert 0 < lo and hi - lo <= 0.05, f"{fig.layout.title.text}: {lo}..{hi} hides the value"


def _finite_y(fig) -> list[float]:
    return [float(v) for t in fig.data if t.y is not None for v in t.y if v is not None and math.isfinite(v)]


def test_y_axes_fit_the_data(studies, evo: StudyData) -> None:
    datas = [StudyData.from_study(studies.load(n)) for n in studies.names]
    costed = StudyData.from_study(studies.load(studies.costed))
    for fig in (
        figures.best_so_far_figure(datas, x="trial"),
        figures.best_so_far_figure(datas, x="time", group=True),
        figures.ap_vs_flops_figure(costed),
        figures.unique_architectures_figure(datas),
        figures.lineage_figure(evo),
    ):
        ys = _finite_y(fig)
        lo, hi = fig.layout.yaxis.range
        span = max(ys) - min(ys)
        assert span > 0
        # every point on the axis, with a margin of a few percent of the data's span, no more
        assert min(ys) - 0.1 * span <= lo < min(ys) and max(ys) < hi <= max(ys) + 0.1 * span, fig.layout.title.text


def _minimised_study() -> optuna.Study:
    """A study whose objective is better downwards, with FLOPs attrs and a repeated point."""
    study = optuna.create_study(direction="minimize")
    for ap, flops in ((0.30, 1e9), (0.20, 2e9), (0.50, 0.5e9), (0.10, 3e9), (0.20, 2e9), (0.40, 4e9)):
        study.add_trial(optuna.trial.create_trial(value=ap, user_attrs={"ap": ap, "neck_flops": flops}))
    return study


def test_figures_follow_the_study_direction() -> None:
    data = StudyData.from_study(_minimised_study())
    _, ys = figures.best_so_far_by_trial(data)
    assert list(ys) == [0.30, 0.20, 0.20, 0.10, 0.10, 0.10]
    _, ys = figures.best_so_far_by_time(data)
    assert list(ys) == [0.30, 0.20, 0.20, 0.10, 0.10, 0.10]
    assert [t.number for t in data.best(3)] == [3, 1, 4]  # lowest first, ties by trial number
    fig = figures.ap_vs_flops_figure(data)
    front = next(t for t in fig.data if t.name.startswith("Pareto front"))
    # fewer FLOPs and a lower value are better here: (0.5 G, 0.50) and (1 G, 0.30), (2 G, 0.20), (3 G, 0.10)
    assert list(front.x) == [0.5, 1.0, 2.0, 3.0] and list(front.y) == [0.50, 0.30, 0.20, 0.10]
    assert list(front.text) == ["trial 2", "trial 0", "trial 1", "trial 3"]  # the repeat (trial 4) once


def test_ap_vs_flops_marks_the_front_and_pruned(studies) -> None:
    study = studies.load(studies.costed)
    assert any(t.state == TrialState.PRUNED for t in study.trials)
    fig = figures.ap_vs_flops_figure(StudyData.from_study(study))
    traces = {t.name.split(" (")[0]: t for t in fig.data}
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert sorted(traces["complete"].y) == sorted(t.value for t in complete)
    assert sorted(traces["pruned"].y) == sorted(t.value for t in pruned)
    front = list(zip(traces["Pareto front"].x, traces["Pareto front"].y, strict=True))
    points = [(t.user_attrs["neck_flops"] / 1e9, t.value) for t in complete]
    for fx, fy in front:  # no complete trial dominates a front point
        assert not any((x <= fx and y > fy) or (x < fx and y >= fy) for x, y in points)
    for x, y in points:  # every complete trial is on or behind the front
        assert any(fx <= x and fy >= y for fx, fy in front)


def test_unique_architectures_counts_canonical_hashes(studies) -> None:
    datas = [StudyData.from_study(studies.load(n)) for n in studies.names]
    fig = figures.unique_architectures_figure(datas)
    duplicates = 0
    for name, curve in zip(studies.names, fig.data, strict=False):
        study = studies.load(name)
        assert curve.name.startswith(name)
        hashes = [t.user_attrs["spec_hash"] for t in study.trials]
        assert list(curve.y) == [len(set(hashes[: i + 1])) for i in range(len(hashes))]
        for t in study.trials:
            if "cached_from" in t.user_attrs:  # the runner re-used an earlier result
                duplicates += 1
                assert hashes[t.user_attrs["cached_from"]] == hashes[t.number]
                assert curve.y[t.number] == curve.y[t.number - 1]
    assert duplicates > 0, "evolution proposes some architectures twice in these small studies"
    assert fig.data[-1].name == "all distinct"


def test_decision_frequencies_are_shares_per_window(studies, evo: StudyData) -> None:
    fig = figures.decision_frequency_figure(evo, windows=4)
    study = studies.load("evo-0")
    names = list(study.trials[0].params)
    assert len(fig.data) == 1 + len(names)
    assert [t.visible for t in fig.data].count(True) == 1
    assert len(fig.layout.updatemenus[0].buttons) == len(fig.data)
    ops = fig.data[0]
    assert set(ops.y) <= set(OPS)
    for trace in fig.data:
        z = np.array(trace.z, dtype=float)
        assert z.shape == (len(trace.y), 4)
        assert np.allclose(z.sum(axis=0), 1.0)
    # check one decision against a direct count
    trace = next(t for t in fig.data if t.name == "cell3.op")
    first = [t.params["cell3.op"] for t in study.trials[:6]]
    for choice, row in zip(trace.y, trace.z, strict=True):
        assert row[0] == pytest.approx(first.count(choice) / len(first))


def _svgs(fragment: str) -> list[ET.Element]:
    uris = re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', fragment)
    return [ET.fromstring(base64.b64decode(u)) for u in uris]


def test_best_architectures_side_by_side(studies, evo: StudyData) -> None:
    html = pages.best_architectures_html(evo, k=3)
    shown = [int(n) for n in re.findall(r'data-trial="(\d+)"', html)]
    study = studies.load("evo-0")
    ranked = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number))
    distinct, seen = [], set()
    for t in ranked:
        if t.user_attrs["spec_hash"] not in seen:
            seen.add(t.user_attrs["spec_hash"])
            distinct.append(t.number)
    assert shown == distinct[:3]
    assert len(_svgs(html)) == 3
    assert f"AP {study.best_value:.4f}" in html


def test_lineage_follows_parent_trial(studies, evo: StudyData) -> None:
    study = studies.load("evo-0")
    chain = study_data.lineage(evo)
    assert chain[-1].number == evo.best(1)[0].number
    by_number = {t.number: t for t in study.trials}
    for parent, child in zip(chain, chain[1:], strict=False):
        assert by_number[child.number].user_attrs[LINEAGE_ATTR]["parent"] == parent.number
    assert parent_of(by_number[chain[0].number].user_attrs) is None
    assert len(chain) >= 3, "24 trials of evolution with a population of 8 build a lineage"
    fig = figures.lineage_figure(evo)
    assert [int(s.lstrip("#")) for s in fig.layout.xaxis.ticktext] == [t.number for t in chain]
    assert list(fig.data[0].y) == [by_number[t.number].value for t in chain]
    table = pages.lineage_html(evo)
    assert by_number[chain[-1].number].user_attrs[LINEAGE_ATTR]["mutation"].split(":")[0] in table
    assert len(_svgs(table)) == len(chain)


def test_lineage_of_a_study_from_an_earlier_version(evo: StudyData) -> None:
    """Studies written before the single ``lineage`` attr: user attrs ``parent_trial`` and ``mutation``."""

    def legacy(attrs: dict) -> dict:
        out = {k: v for k, v in attrs.items() if k != LINEAGE_ATTR}
        rec = attrs.get(LINEAGE_ATTR)
        if rec is not None:
            out["mutation"] = rec["mutation"]
            if "parent" in rec:
                out["parent_trial"] = rec["parent"]
        return out

    old = dataclasses.replace(evo, trials=[dataclasses.replace(t, user_attrs=legacy(t.user_attrs)) for t in evo.trials])
    assert all(LINEAGE_ATTR not in t.user_attrs for t in old.trials)
    assert [t.number for t in study_data.lineage(old)] == [t.number for t in study_data.lineage(evo)]
    assert pages.lineage_html(old) == pages.lineage_html(evo)
    assert list(figures.lineage_figure(old).data[0].text) == list(figures.lineage_figure(evo).data[0].text)


def test_lineage_absent_for_random_search(studies) -> None:
    data = StudyData.from_study(studies.load("random-0"))
    assert figures.lineage_figure(data) is None and pages.lineage_html(data) == ""


def test_sampler_name_from_recorded_config() -> None:
    assert study_data.sampler_name({"sampler": "rl"}) == "rl"
    assert study_data.sampler_name({"config": {"sampler": {"name": "tpe", "seed": 3}}}) == "tpe"
    assert study_data.sampler_name({"config": '{"sampler": "nsga2"}'}) == "nsga2"
    assert study_data.sampler_name({}) == "unknown"
