"""Architecture pictures: valid SVG that shows exactly the spec's cells, edges and outputs."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from hypothesis import given, settings
from hypothesis import strategies as st

from evo_fpn.arch.draw import spec_to_svg
from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN, ArchSpec

NS = "{http://www.w3.org/2000/svg}"
SPACE = NasFpnSpace()


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def _translate_y(el: ET.Element) -> float:
    rect = el.find(f"{NS}rect")
    return float(rect.get("y")) + float(rect.get("height")) / 2


def _check_matches(spec: ArchSpec, svg: str) -> None:
    root = _parse(svg)
    cells = [g for g in root.iter(f"{NS}g") if g.get("class") == "cell"]
    inputs = [g for g in root.iter(f"{NS}g") if g.get("class") == "input"]
    assert len(inputs) == spec.num_inputs
    assert [int(g.get("data-cell")) for g in cells] == list(range(len(spec.cells)))
    for g, cell in zip(cells, spec.cells, strict=True):
        assert int(g.get("data-level")) == cell.level
        assert g.get("data-op") == cell.op
        assert g.get("data-output") == str(int(cell.is_output))
        label = g.find(f"{NS}text").text
        assert label == {"sum": "+", "global_pool": "GP"}[cell.op]
        stroke = float(g.find(f"{NS}rect").get("stroke-width"))
        assert (stroke > 2) == cell.is_output, "output cells are drawn bold"
    solid = [p for p in root.iter(f"{NS}path") if p.get("class") == "edge"]
    dashed = [p for p in root.iter(f"{NS}path") if p.get("class") == "edge unused"]
    n_in = spec.num_inputs
    want_solid = sorted((src, n_in + k) for k, c in enumerate(spec.cells) for src in c.inputs)
    want_dashed = sorted((src, n_in + k) for k, extra in enumerate(spec.extra_inputs()) for src in extra)
    assert sorted((int(p.get("data-from")), int(p.get("data-to"))) for p in solid) == want_solid
    assert sorted((int(p.get("data-from")), int(p.get("data-to"))) for p in dashed) == want_dashed
    assert all(p.get("stroke-dasharray") for p in dashed)
    # Rows: the coarsest level at the top; columns: cells left to right in order.
    ys = {int(g.get("data-level")): _translate_y(g) for g in inputs}
    assert [lvl for lvl, _ in sorted(ys.items(), key=lambda kv: kv[1])] == sorted(spec.levels, reverse=True)
    for g in cells:
        assert _translate_y(g) == ys[int(g.get("data-level"))], "a cell sits in its level's row"
    xs = [float(g.find(f"{NS}rect").get("x")) for g in cells]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    assert max(float(g.find(f"{NS}rect").get("x")) for g in inputs) < min(xs), "inputs form the left column"


def test_published_and_fpn_drawn_exactly() -> None:
    for spec in (PUBLISHED_NASFPN, FPN_LIKE):
        _check_matches(spec, spec_to_svg(spec))
    # The published spec has two unused-feature edges (P5 into cell4, P7 into cell5).
    root = _parse(spec_to_svg(PUBLISHED_NASFPN))
    dashed = [p.find(f"{NS}title").text for p in root.iter(f"{NS}path") if p.get("class") == "edge unused"]
    assert sorted(dashed) == ["unused P5 -> cell4", "unused P7 -> cell5"]


def test_deterministic_and_title_escaped() -> None:
    a = spec_to_svg(PUBLISHED_NASFPN, title='best <trial> & "co"')
    assert a == spec_to_svg(PUBLISHED_NASFPN, title='best <trial> & "co"')
    texts = [t.text for t in _parse(a).iter(f"{NS}text")]
    assert 'best <trial> & "co"' in texts
    assert spec_to_svg(PUBLISHED_NASFPN) != spec_to_svg(FPN_LIKE)
    # No reference to anything outside the document (safe as an artifact and a data URI).
    assert not re.search(r"(href|src)=\"(?!#)", a)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_spec_of_the_space_is_drawn_exactly(data: st.DataObject) -> None:
    params = {name: data.draw(st.sampled_from(dist.choices)) for name, dist in SPACE.distributions.items()}
    spec = SPACE.decode(params)
    _check_matches(spec, spec_to_svg(spec, title="random"))
