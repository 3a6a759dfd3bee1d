"""Real headless Chromium loads the generated plotly page and optuna-dashboard's pages.

The checks look at what the browser rendered after JavaScript ran (``--dump-dom`` with a
virtual time budget) and at screenshot pixels, not only at HTTP status codes.

Chromium is Debian's ``chromium`` package (``apt-get install chromium``). Without it these
tests skip, unless ``EVO_FPN_REQUIRE_SERVICES=1`` (CI), where they fail instead.
Set ``EVO_FPN_SCREENSHOTS=docs/img`` to also save the screenshots used in the docs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image
from study_factory import dashboard_server, get_json, shared_studies

from evo_fpn.cli import dashboard
from evo_fpn.viz import figures, refresh
from evo_fpn.viz.study_data import StudyData

pytestmark = pytest.mark.slow  # ~30-40 s together on 2 shared cores (Chromium starts five times)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


@pytest.fixture(scope="module", autouse=True)
def need_chromium() -> None:
    if CHROMIUM is None:
        reason = "Chromium not installed (apt-get install chromium)"
        if os.environ.get("EVO_FPN_REQUIRE_SERVICES"):
            pytest.fail(reason + " but EVO_FPN_REQUIRE_SERVICES is set")
        pytest.skip(reason)


def chromium(url: str, *extra: str, budget_ms: int = 15000, timeout: float = 120) -> str:
    """Run headless Chromium on ``url`` with a fresh profile; return its stdout."""
    with tempfile.TemporaryDirectory(prefix="evo_fpn_chromium_") as profile:
        cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def dump_dom(url: str, **kw: object) -> str:
    return chromium(url, "--dump-dom", **kw)  # type: ignore[arg-type]


def screenshot(url: str, path: Path, size: tuple[int, int], **kw: object) -> Image.Image:
    chromium(url, f"--screenshot={path}", f"--window-size={size[0]},{size[1]}", **kw)  # type: ignore[arg-type]
    return Image.open(path).convert("RGB")


def count_colour(img: Image.Image, hex_colour: str, tol: int = 8) -> int:
    """Pixels within ``tol`` of ``hex_colour`` on every channel."""
    want = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return sum(
        n for n, px in img.getcolors(maxcolors=1 << 24) if all(abs(a - b) <= tol for a, b in zip(px, want, strict=True))
    )


def keep_for_readme(img_path: Path, name: str) -> None:
    """Copy a screenshot into ``$EVO_FPN_SCREENSHOTS`` as a small palette PNG."""
    target = os.environ.get("EVO_FPN_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        img = Image.open(img_path).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        img.save(Path(target) / name, optimize=True)


def _segment(dom: str, div_id: str) -> str:
    start = dom.index(f'id="{div_id}"')
    nxt = dom.find('<div class="figure', start)
    return dom[start : nxt if nxt != -1 else len(dom)]


def test_generated_page_renders_in_chromium(tmp_path: Path) -> None:
    studies = shared_studies()
    # the study with neck FLOPs, so that every figure is on the page
    (page,) = dashboard.write_pages(studies.storage, [studies.costed], [], tmp_path)
    data = StudyData.from_study(studies.load(studies.costed))
    dom = dump_dom(page.as_uri())
    expected = {
        "best-vs-trials": figures.best_so_far_figure([data], x="trial"),
        "best-vs-time": figures.best_so_far_figure([data], x="time"),
        "ap-vs-flops": figures.ap_vs_flops_figure(data),
        "unique-archs": figures.unique_architectures_figure([data]),
        "decision-freq": figures.decision_frequency_figure(data),
    }
    for div_id, fig in expected.items():
        seg = _segment(dom, div_id)
        assert "js-plotly-plot" in seg and 'class="main-svg"' in seg, f"{div_id} was not drawn by plotly.js"
        titles = re.findall(r'class="gtitle"[^>]*>([^<]*)<', seg)
        assert titles == [fig.layout.title.text.replace("&", "&amp;")]
        scatters = sum(t.type == "scatter" for t in fig.data)
        assert seg.count('class="trace scatter') == scatters, div_id
    assert _segment(dom, "decision-freq").count('class="hm"') == 1, "one heatmap drawn (the selected decision)"
    assert dom.count('class="arch"') >= 4
    # Pixels: the Pareto markers (#EE6677) and the filled output cells of the pictures
    # (P5 outputs are #228833) are on screen.
    png = tmp_path / "page.png"
    img = screenshot(page.as_uri(), png, (1400, 2400))
    assert count_colour(img, "#EE6677") > 200
    assert count_colour(img, "#228833") > 200
    assert len(img.getcolors(maxcolors=1 << 24)) > 500, "a blank or failed page has few colours"
    keep_for_readme(png, "dashboard-page.png")


def test_optuna_dashboard_pages_render_in_chromium(tmp_path: Path) -> None:
    studies = shared_studies()
    study = studies.load("evo-0")
    refresh.refresh_study_figures(study)
    best = study.best_trial
    with dashboard_server(studies.storage, studies.artifact_dir) as base:
        sid = {s["study_name"]: s["study_id"] for s in get_json(base + "/api/studies")["study_summaries"]}["evo-0"]
        detail = get_json(f"{base}/api/studies/{sid}")
        served = next(t for t in detail["trials"] if t["number"] == best.number)
        artifact_id = served["artifacts"][0]["artifact_id"]

        trial_url = f"{base}/dashboard/studies/{sid}/trials?numbers={best.number}"
        dom = dump_dom(trial_url)
        assert f"Trial {best.number} (trial_id={served['trial_id']})" in dom
        assert f"/artifacts/{sid}/{served['trial_id']}/{artifact_id}" in dom, "the architecture picture is shown"
        assert "spec_hash" in dom and best.user_attrs["spec_hash"] in dom
        png = tmp_path / "trial.png"
        img = screenshot(trial_url, png, (1280, 1150))
        # The artifact thumbnail is the SVG drawn by the browser: its filled P5 output cell
        # (#228833) appears nowhere else in optuna-dashboard's UI.
        assert count_colour(img, "#228833", tol=10) > 10
        keep_for_readme(png, "optuna-dashboard-trial.png")

        study_url = f"{base}/dashboard/studies/{sid}"
        dom = dump_dom(study_url, budget_ms=20000)
        titles = set(re.findall(r'class="gtitle"[^>]*>([^<]*)<', dom))
        # the figures refresh_study_figures saved (evo-0 has no FLOPs: no AP vs FLOPs figure)
        data = StudyData.from_study(study)
        saved = {
            figures.unique_architectures_figure([data]).layout.title.text,
            figures.best_so_far_figure([data]).layout.title.text,
            figures.decision_frequency_figure(data).layout.title.text,
        }
        assert saved <= titles
        png = tmp_path / "study.png"
        screenshot(study_url, png, (1400, 2200), budget_ms=20000)
        keep_for_readme(png, "optuna-dashboard-study.png")
