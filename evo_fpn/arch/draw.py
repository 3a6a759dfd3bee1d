"""Architecture pictures as plain SVG text, in the style of the NAS-FPN paper's figures.

Pyramid levels are rows (the coarsest at the top), the pyramid inputs sit in the left
column and the merging cells follow in columns in the order they are built. Each cell shows
its op ("+" for sum, "GP" for global pooling / attention); output cells are filled and
outlined in bold; arrows come from the two inputs, and the features the unused-feature rule
adds to an output cell are dashed arrows. Pure string building: no browser, no extra
dependency, deterministic output (the same spec always gives the same bytes), so the picture
can be drawn inside a training worker and uploaded as an Optuna artifact.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from evo_fpn.arch.spec import ArchSpec

# Layout (pixels).
_LEFT = 46  # room for the level labels
_TOP = 46  # room for the title and column headers
_COL = 78  # column pitch
_ROW = 58  # row pitch
_NODE_W = 46
_NODE_H = 28
_LEGEND_H = 30

# One colour per level (colour-blind friendly, after Paul Tol's "bright" set), cycled.
_LEVEL_COLOURS = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB")

_OP_LABEL = {"sum": "+", "global_pool": "GP"}
_OP_TEXT = {"sum": "sum", "global_pool": "global pooling (attention)"}


def _colour(spec: ArchSpec, level: int) -> str:
    return _LEVEL_COLOURS[(level - spec.min_level) % len(_LEVEL_COLOURS)]


def _fmt(x: float) -> str:
    """Short, deterministic number formatting for coordinates."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def spec_to_svg(spec: ArchSpec, title: str = "") -> str:
    """Draw ``spec`` as a standalone SVG document (UTF-8 text).

    Rows are pyramid levels (``P{max_level}`` at the top), column 0 holds the inputs,
    column ``k + 1`` holds cell ``k``. The SVG carries ``<title>`` tooltips, so hovering a
    node in a browser (or in optuna-dashboard's artifact view) names the cell and its inputs.
    """
    spec.validate()
    n_in = spec.num_inputs
    n_cells = len(spec.cells)
    levels = spec.levels
    width = _LEFT + _COL * (n_cells + 1) + 24
    height = _TOP + _ROW * len(levels) + _LEGEND_H

    def row_y(level: int) -> float:
        return _TOP + _ROW * (spec.max_level - level) + _ROW / 2

    def node_xy(index: int) -> tuple[float, float]:
        col = 0 if index < n_in else index - n_in + 1
        return _LEFT + _COL * col + _COL / 2, row_y(spec.node_level(index))

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        "<defs>",
        '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>',
        "</defs>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
    ]
    label = title or spec.name
    if label:
        out.append(
            f'<text x="{_fmt(width / 2)}" y="20" text-anchor="middle" font-size="14" '
            f'font-weight="bold">{escape(label)}</text>'
        )

    # Level rows: a light band per level, labelled on the left.
    for level in levels:
        y = row_y(level)
        out.append(
            f'<rect x="{_LEFT - 4}" y="{_fmt(y - _ROW / 2 + 3)}" width="{width - _LEFT - 8}" '
            f'height="{_ROW - 6}" rx="6" fill="{_colour(spec, level)}" fill-opacity="0.07"/>'
        )
        out.append(
            f'<text x="{_LEFT - 10}" y="{_fmt(y + 4)}" text-anchor="end" font-weight="bold" '
            f'fill="{_colour(spec, level)}">P{level}</text>'
        )
    # Column headers.
    out.append(f'<text x="{_fmt(_LEFT + _COL / 2)}" y="{_TOP - 6}" text-anchor="middle" fill="#666">inputs</text>')
    for k in range(n_cells):
        x = _LEFT + _COL * (k + 1) + _COL / 2
        out.append(f'<text x="{_fmt(x)}" y="{_TOP - 6}" text-anchor="middle" fill="#666">cell{k}</text>')

    # Edges first, so nodes paint over their ends.
    extras = spec.extra_inputs()
    out.append('<g fill="none" stroke="#555" stroke-width="1.4">')
    for k, cell in enumerate(spec.cells):
        target = n_in + k
        for src in cell.inputs:
            out.append(_edge(node_xy(src), node_xy(target), dashed=False, ends=(src, target), spec=spec))
        for src in extras[k]:
            out.append(_edge(node_xy(src), node_xy(target), dashed=True, ends=(src, target), spec=spec))
    out.append("</g>")

    # Input nodes.
    for idx in range(n_in):
        x, y = node_xy(idx)
        level = spec.node_level(idx)
        out.append(
            f'<g class="input" data-level="{level}"><title>input P{level} (stride {2**level})</title>'
            f'<rect x="{_fmt(x - _NODE_W / 2)}" y="{_fmt(y - _NODE_H / 2)}" width="{_NODE_W}" height="{_NODE_H}" '
            f'rx="4" fill="#f4f4f4" stroke="{_colour(spec, level)}" stroke-width="1.5"/>'
            f'<text x="{_fmt(x)}" y="{_fmt(y + 4)}" text-anchor="middle">P{level}</text></g>'
        )
    # Cell nodes.
    for k, cell in enumerate(spec.cells):
        x, y = node_xy(n_in + k)
        colour = _colour(spec, cell.level)
        fill, text_fill, stroke_w = (colour, "white", 3) if cell.is_output else ("white", "#222", 1.5)
        tip = (
            f"cell{k}: {_OP_TEXT.get(cell.op, cell.op)} of {spec.node_name(cell.inputs[0])} and "
            f"{spec.node_name(cell.inputs[1])} at P{cell.level}"
        )
        if extras[k]:
            tip += " + unused " + ", ".join(spec.node_name(i) for i in extras[k])
        if cell.is_output:
            tip += f" (output P{cell.level})"
        out.append(
            f'<g class="cell" data-cell="{k}" data-level="{cell.level}" data-op="{cell.op}" '
            f'data-output="{int(cell.is_output)}"><title>{escape(tip)}</title>'
            f'<rect x="{_fmt(x - _NODE_W / 2)}" y="{_fmt(y - _NODE_H / 2)}" width="{_NODE_W}" height="{_NODE_H}" '
            f'rx="{_NODE_H / 2:.0f}" fill="{fill}" stroke="{colour if not cell.is_output else "#111"}" '
            f'stroke-width="{stroke_w}"/>'
            f'<text x="{_fmt(x)}" y="{_fmt(y + 5)}" text-anchor="middle" font-size="15" font-weight="bold" '
            f'fill="{text_fill}">{escape(_OP_LABEL.get(cell.op, cell.op))}</text></g>'
        )
        if cell.is_output:
            out.append(
                f'<text x="{_fmt(x)}" y="{_fmt(y + _NODE_H / 2 + 11)}" text-anchor="middle" font-size="10" '
                f'fill="#111">out P{cell.level}</text>'
            )

    # Legend.
    ly = height - _LEGEND_H / 2 + 4
    out.append(
        f'<text x="{_LEFT}" y="{_fmt(ly)}" fill="#444" font-size="11">'
        "+ sum \u00b7 GP global pooling (attention) \u00b7 filled: output cell \u00b7 "
        "dashed: unused feature added</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _edge(
    a: tuple[float, float], b: tuple[float, float], *, dashed: bool, ends: tuple[int, int], spec: ArchSpec
) -> str:
    """A cubic arrow from the right side of node ``a`` to the left side of node ``b``.

    Long hops along a row bow upwards so they do not run through the nodes in between.
    """
    (x1, y1), (x2, y2) = a, b
    sx, sy = x1 + _NODE_W / 2, y1
    ex, ey = x2 - _NODE_W / 2 - 2, y2
    span = max(1.0, (x2 - x1) / _COL)
    dx = max(18.0, (ex - sx) * 0.45)
    lift = 0.0 if abs(y2 - y1) > 1 or span <= 1.01 else min(_ROW * 0.42, 9.0 * span)
    d = (
        f"M{_fmt(sx)},{_fmt(sy)} C{_fmt(sx + dx)},{_fmt(sy - lift * 1.3)} "
        f"{_fmt(ex - dx)},{_fmt(ey - lift * 1.3)} {_fmt(ex)},{_fmt(ey)}"
    )
    src, dst = (spec.node_name(i) for i in ends)
    note = f"{'unused ' if dashed else ''}{src} -> {dst}"
    dash = ' class="edge unused" stroke-dasharray="5,4" stroke="#999"' if dashed else ' class="edge"'
    return (
        f'<path{dash} data-from="{ends[0]}" data-to="{ends[1]}" d="{d}" marker-end="url(#arrow)">'
        f"<title>{escape(note)}</title></path>"
    )
