"""Architecture specs: a pyramid network as plain, frozen, JSON-serialisable data.

A spec is a short program of merging cells (NAS-FPN, Ghiasi et al. 2019). Indices
``0 .. L-1`` name the pyramid inputs (levels ``min_level .. max_level``), index ``L + k``
names the output of cell ``k``. The network module is only an interpreter of this data, so
everything about an architecture (validation, hashing, drawing, enqueueing) lives here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OPS: tuple[str, ...] = ("sum", "global_pool")
"""Binary ops of a merging cell. ``global_pool`` is the paper's "global pooling" (attention)."""


class SpecError(ValueError):
    """A spec that does not describe a valid pyramid network."""


@dataclass(frozen=True)
class Cell:
    """One merging cell: resample two inputs to ``level``, merge them with ``op``.

    ``inputs`` are indices into the candidate pool (pyramid inputs, then earlier cells).
    ``is_output`` marks the cell that produces the pyramid output of its level.
    """

    level: int
    op: str
    inputs: tuple[int, int]
    is_output: bool

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "op": self.op, "inputs": list(self.inputs), "is_output": self.is_output}


@dataclass(frozen=True)
class ArchSpec:
    """A pyramid network: merging cells over inputs ``P{min_level} .. P{max_level}``.

    Intermediate (non-output) cells may only produce levels ``>= min_intermediate_level``
    (the paper never lets them work at stride 8, which would be too costly).
    """

    cells: tuple[Cell, ...]
    min_level: int = 3
    max_level: int = 7
    min_intermediate_level: int = 4
    name: str = field(default="", compare=False)

    # -- basic facts -------------------------------------------------------------------
    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(range(self.min_level, self.max_level + 1))

    @property
    def num_inputs(self) -> int:
        return self.max_level - self.min_level + 1

    def node_level(self, index: int) -> int:
        """Pyramid level of candidate ``index`` (an input or a cell output)."""
        if index < self.num_inputs:
            return self.min_level + index
        return self.cells[index - self.num_inputs].level

    def node_name(self, index: int) -> str:
        """Readable name of candidate ``index``: ``P5`` for an input, ``cell3`` for a cell."""
        if index < self.num_inputs:
            return f"P{self.min_level + index}"
        return f"cell{index - self.num_inputs}"

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "min_level": self.min_level,
            "max_level": self.max_level,
            "min_intermediate_level": self.min_intermediate_level,
            "cells": [c.to_dict() for c in self.cells],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "") -> ArchSpec:
        """Build and validate a spec from ``to_dict`` output; raises ``SpecError``."""
        if not isinstance(data, Mapping) or "cells" not in data:
            raise SpecError("spec must be a JSON object with a 'cells' list")
        try:
            cells = tuple(
                Cell(
                    level=_as_int(c["level"], "level"),
                    op=str(c["op"]),
                    inputs=(_as_int(c["inputs"][0], "inputs"), _as_int(c["inputs"][1], "inputs")),
                    is_output=_as_bool(c["is_output"]),
                )
                for c in data["cells"]
            )
            if any(len(c["inputs"]) != 2 for c in data["cells"]):
                raise SpecError("every cell needs exactly two inputs")
        except (KeyError, TypeError, IndexError) as exc:
            raise SpecError(
                f"malformed cell ({exc!r}): each cell needs 'level', 'op', 'inputs' [i, j], 'is_output'"
            ) from None
        spec = cls(
            cells=cells,
            min_level=_as_int(data.get("min_level", 3), "min_level"),
            max_level=_as_int(data.get("max_level", 7), "max_level"),
            min_intermediate_level=_as_int(data.get("min_intermediate_level", 4), "min_intermediate_level"),
            name=name,
        )
        spec.validate()
        return spec

    @classmethod
    def from_json(cls, text: str, name: str = "") -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec is not valid JSON: {exc}") from None
        return cls.from_dict(data, name=name)

    # -- validation --------------------------------------------------------------------
    def validate(self) -> ArchSpec:
        """Raise ``SpecError`` naming the first problem; return ``self`` when valid."""
        if self.min_level < 1 or self.max_level < self.min_level:
            raise SpecError(f"bad level range P{self.min_level}..P{self.max_level}")
        if not self.cells:
            raise SpecError("spec has no cells")
        n_in = self.num_inputs
        outputs: dict[int, int] = {}
        for k, cell in enumerate(self.cells):
            where = f"cell{k}"
            if cell.op not in OPS:
                raise SpecError(f"{where}: unknown op {cell.op!r}; choose one of {', '.join(OPS)}")
            if cell.level not in self.levels:
                raise SpecError(f"{where}: level {cell.level} outside P{self.min_level}..P{self.max_level}")
            i, j = cell.inputs
            for x in (i, j):
                if x < 0 or x >= n_in + k:
                    raise SpecError(
                        f"{where}: input index {x} out of range; cell{k} may use 0..{n_in + k - 1} "
                        f"(inputs 0..{n_in - 1}, then earlier cells)"
                    )
            if i == j:
                raise SpecError(f"{where}: both inputs are {i}; a cell merges two distinct features")
            if cell.is_output:
                if cell.level in outputs:
                    raise SpecError(f"{where}: level P{cell.level} is already produced by cell{outputs[cell.level]}")
                outputs[cell.level] = k
            elif cell.level < self.min_intermediate_level:
                raise SpecError(
                    f"{where}: intermediate cells may not produce P{cell.level} "
                    f"(allowed: P{self.min_intermediate_level}..P{self.max_level})"
                )
        missing = [lvl for lvl in self.levels if lvl not in outputs]
        if missing:
            raise SpecError("no output cell produces " + ", ".join(f"P{lvl}" for lvl in missing))
        return self

    # -- semantics -----------------------------------------------------------------------
    def extra_inputs(self) -> tuple[tuple[int, ...], ...]:
        """Per cell, the unconsumed same-level features added by the unused-feature rule.

        When an output cell is built, every earlier feature of its level that no cell has
        consumed yet (the cell's own inputs count as consumed first) is added to the merged
        map before ReLU-conv-BN. Intermediate cells get none.
        """
        n_in = self.num_inputs
        consumed: set[int] = set()
        extras: list[tuple[int, ...]] = []
        for k, cell in enumerate(self.cells):
            consumed.update(cell.inputs)
            if cell.is_output:
                extra = tuple(
                    idx for idx in range(n_in + k) if idx not in consumed and self.node_level(idx) == cell.level
                )
                consumed.update(extra)
            else:
                extra = ()
            extras.append(extra)
        return tuple(extras)

    def output_cells(self) -> dict[int, int]:
        """Map level -> index of the cell that produces it."""
        return {c.level: k for k, c in enumerate(self.cells) if c.is_output}

    # -- canonical form and hash -----------------------------------------------------------
    def _node_keys(self) -> list[str]:
        """Structural key of every candidate: equal keys build equal sub-networks."""
        extras = self.extra_inputs()
        keys = [f"P{lvl}" for lvl in self.levels]
        for k, cell in enumerate(self.cells):
            a, b = (keys[x] for x in cell.inputs)
            la, lb = (self.node_level(x) for x in cell.inputs)
            if cell.op == "sum" or la != lb:
                # sum is commutative; global pooling picks the coarser input as attention
                # whatever the order, so only equal-level pooling inputs keep their order.
                a, b = sorted((a, b)) if cell.op == "sum" else _by_level((a, la), (b, lb))
            extra = ",".join(sorted(keys[x] for x in extras[k]))
            body = f"{cell.level}|{cell.op}|{a}|{b}|{extra}|{int(cell.is_output)}"
            keys.append(hashlib.sha256(body.encode()).hexdigest()[:32])
        return keys

    def canonical_hash(self) -> str:
        """Stable hash: two specs that build the same network get the same hash.

        Built from the structural key of every cell (a Merkle hash of its sub-network,
        with the unused-feature inputs made explicit) as a multiset, so cell order,
        sum-input order and the order of differing-level pooling inputs do not matter.
        """
        keys = self._node_keys()[self.num_inputs :]
        body = f"{self.min_level}-{self.max_level}:" + ";".join(sorted(keys))
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def canonical(self) -> ArchSpec:
        """An equivalent spec in a canonical order (same ``canonical_hash``).

        Sum inputs and differing-level pooling inputs are sorted by index, and
        intermediate cells are ordered by their structural key among those whose inputs
        are ready (output cells keep their order, which the search decides).
        """
        keys = self._node_keys()
        n_in = self.num_inputs
        order: list[int] = []
        placed: set[int] = set(range(n_in))
        pending = list(range(len(self.cells)))
        while pending:
            ready = [k for k in pending if all(x in placed for x in self.cells[k].inputs)]
            inter = [k for k in ready if not self.cells[k].is_output]
            first_out = (
                next(k for k in pending if self.cells[k].is_output)
                if any(self.cells[k].is_output for k in pending)
                else None
            )
            if inter:
                pick = min(inter, key=lambda k: keys[n_in + k])
            elif first_out is not None and first_out in ready:
                pick = first_out
            else:  # an intermediate cell waits on an output cell: keep the written order
                pick = min(ready)
            order.append(pick)
            placed.add(n_in + pick)
            pending.remove(pick)
        remap = {i: i for i in range(n_in)}
        remap.update({n_in + old: n_in + new for new, old in enumerate(order)})
        cells = []
        for old in order:
            cell = self.cells[old]
            i, j = remap[cell.inputs[0]], remap[cell.inputs[1]]
            same_level = self.node_level(cell.inputs[0]) == self.node_level(cell.inputs[1])
            if cell.op == "sum" or not same_level:
                i, j = min(i, j), max(i, j)
            cells.append(Cell(cell.level, cell.op, (i, j), cell.is_output))
        candidate = ArchSpec(tuple(cells), self.min_level, self.max_level, self.min_intermediate_level, self.name)
        if candidate.canonical_hash() != self.canonical_hash():
            # Reordering changed which features the unused-feature rule picks up: keep the
            # written cell order and normalise only the inputs.
            cells = []
            for cell in self.cells:
                i, j = cell.inputs
                same_level = self.node_level(i) == self.node_level(j)
                if cell.op == "sum" or not same_level:
                    i, j = min(i, j), max(i, j)
                cells.append(Cell(cell.level, cell.op, (i, j), cell.is_output))
            candidate = ArchSpec(tuple(cells), self.min_level, self.max_level, self.min_intermediate_level, self.name)
        return candidate

    # -- display -------------------------------------------------------------------------
    def table(self) -> str:
        """The cells as a readable text table."""
        extras = self.extra_inputs()
        rows = [("cell", "level", "op", "input i", "input j", "output", "+ unused")]
        for k, cell in enumerate(self.cells):
            rows.append(
                (
                    f"cell{k}",
                    f"P{cell.level}",
                    cell.op,
                    self.node_name(cell.inputs[0]),
                    self.node_name(cell.inputs[1]),
                    "yes" if cell.is_output else "",
                    " ".join(self.node_name(x) for x in extras[k]),
                )
            )
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _by_level(a: tuple[str, int], b: tuple[str, int]) -> tuple[str, str]:
    """Order two differing-level pooling inputs coarser first (the attention input)."""
    return (a[0], b[0]) if a[1] > b[1] else (b[0], a[0])


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{what} must be an integer, got {value!r}")
    return value


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"is_output must be true or false, got {value!r}")
    return value


def make_spec(cells: Iterable[Sequence[Any]], *, min_level: int = 3, max_level: int = 7, name: str = "") -> ArchSpec:
    """Build a validated spec from ``(level, op, (i, j), is_output)`` tuples."""
    spec = ArchSpec(
        cells=tuple(Cell(int(lvl), str(op), (int(ij[0]), int(ij[1])), bool(out)) for lvl, op, ij, out in cells),
        min_level=min_level,
        max_level=max_level,
        name=name,
    )
    return spec.validate()


PUBLISHED_NASFPN: ArchSpec = make_spec(
    [
        (4, "global_pool", (1, 3), False),
        (4, "sum", (1, 5), False),
        (3, "sum", (0, 6), True),
        (4, "sum", (6, 7), True),
        (5, "global_pool", (7, 8), True),
        (7, "global_pool", (6, 9), True),
        (6, "global_pool", (9, 10), True),
    ],
    name="published",
)
"""The NAS-FPN architecture of Ghiasi et al. (2019), exactly as in the authors' code."""

FPN_LIKE: ArchSpec = make_spec(
    [
        (6, "sum", (3, 4), False),  # P6td = P6 + up(P7)
        (5, "sum", (2, 5), False),  # P5td = P5 + up(P6td)
        (4, "sum", (1, 6), True),  # P4 = P4 + up(P5td)
        (3, "sum", (0, 7), True),  # P3 = P3 + up(P4)
        (5, "sum", (2, 6), True),  # P5 = P5 + P5td
        (6, "sum", (3, 5), True),  # P6 = P6 + P6td
        (7, "sum", (4, 5), True),  # P7 = P7 + pool(P6td)
    ],
    name="fpn",
)
"""An FPN-like top-down pyramid built from the same cells (sum merges, coarse to fine)."""

REFERENCE_SPECS: dict[str, ArchSpec] = {"published": PUBLISHED_NASFPN, "fpn": FPN_LIKE}
