"""The architecture spec: validation, JSON, the unused-feature rule, canonical form and hash."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN, REFERENCE_SPECS, ArchSpec, Cell, SpecError, make_spec

PUBLISHED_CELLS = [
    (4, "global_pool", (1, 3), False),
    (4, "sum", (1, 5), False),
    (3, "sum", (0, 6), True),
    (4, "sum", (6, 7), True),
    (5, "global_pool", (7, 8), True),
    (7, "global_pool", (6, 9), True),
    (6, "global_pool", (9, 10), True),
]


def with_cell(spec: ArchSpec, k: int, **changes) -> ArchSpec:
    """``spec`` with cell ``k`` changed (not validated)."""
    cells = list(spec.cells)
    d = cells[k].to_dict() | changes
    cells[k] = Cell(d["level"], d["op"], tuple(d["inputs"]), d["is_output"])
    return ArchSpec(tuple(cells), spec.min_level, spec.max_level, spec.min_intermediate_level)


def test_published_is_exactly_the_design_card():
    assert [(c.level, c.op, c.inputs, c.is_output) for c in PUBLISHED_NASFPN.cells] == PUBLISHED_CELLS
    assert (PUBLISHED_NASFPN.min_level, PUBLISHED_NASFPN.max_level) == (3, 7)
    assert set(REFERENCE_SPECS) == {"published", "fpn"}


@pytest.mark.parametrize(
    ("k", "changes", "message"),
    [
        (2, {"inputs": (0, 9)}, "out of range"),  # points forward (cell2 may use 0..6)
        (2, {"inputs": (0, 7)}, "out of range"),  # points at itself
        (0, {"inputs": (-1, 3)}, "out of range"),
        (1, {"inputs": (5, 5)}, "distinct"),
        (1, {"op": "concat"}, "unknown op"),
        (0, {"level": 3}, "intermediate cells may not produce P3"),
        (0, {"level": 8}, "outside P3..P7"),
        (3, {"level": 3}, "already produced"),  # P3 twice, and so P4 missing
    ],
)
def test_validation_errors(k, changes, message):
    with pytest.raises(SpecError, match=message):
        with_cell(PUBLISHED_NASFPN, k, **changes).validate()


def test_validation_missing_output_level_and_empty_spec():
    spec = with_cell(PUBLISHED_NASFPN, 3, is_output=False)  # P4 is then never an output
    with pytest.raises(SpecError, match="no output cell produces P4"):
        spec.validate()
    with pytest.raises(SpecError, match="no cells"):
        ArchSpec(cells=()).validate()
    with pytest.raises(SpecError, match="level range"):
        ArchSpec(cells=PUBLISHED_NASFPN.cells, min_level=5, max_level=4).validate()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"min_level": 3}', "'cells' list"),
        ("[1, 2]", "'cells' list"),
        ('{"cells": [{"level": 4, "op": "sum", "inputs": [0, 1]}]}', "malformed cell"),
        ('{"cells": [{"level": "4", "op": "sum", "inputs": [0, 1], "is_output": true}]}', "level must be an integer"),
        ('{"cells": [{"level": 4, "op": "sum", "inputs": [0, 1], "is_output": 1}]}', "is_output must be"),
        ('{"cells": [{"level": 4, "op": "sum", "inputs": [0, 1, 2], "is_output": true}]}', "exactly two inputs"),
    ],
)
def test_from_json_rejects_malformed(text, message):
    with pytest.raises(SpecError, match=message):
        ArchSpec.from_json(text)


@pytest.mark.parametrize("spec", [PUBLISHED_NASFPN, FPN_LIKE], ids=["published", "fpn"])
def test_json_round_trip(spec):
    text = spec.to_json(indent=2)
    assert json.loads(text)["cells"][0].keys() == {"level", "op", "inputs", "is_output"}
    back = ArchSpec.from_json(text)
    assert back == spec
    assert back.canonical_hash() == spec.canonical_hash()
    assert ArchSpec.from_dict(spec.to_dict()) == spec


def test_published_unused_feature_rule():
    """Raw P5 joins the P5 output, raw P7 joins the P7 output, and nothing else is added."""
    extras = PUBLISHED_NASFPN.extra_inputs()
    assert extras == ((), (), (), (), (2,), (4,), ())
    assert PUBLISHED_NASFPN.cells[4].level == 5 and PUBLISHED_NASFPN.node_name(2) == "P5"
    assert PUBLISHED_NASFPN.cells[5].level == 7 and PUBLISHED_NASFPN.node_name(4) == "P7"
    assert FPN_LIKE.extra_inputs() == ((),) * 7  # FPN consumes every input itself


def test_unused_feature_rule_counts_the_cells_own_inputs_first():
    cells = [
        (4, "sum", (1, 3), False),
        (6, "sum", (3, 5), False),
        (5, "sum", (2, 6), True),  # takes raw P5 itself: it must not be added a second time
        (3, "sum", (0, 5), True),
        (4, "sum", (5, 1), True),
        (6, "sum", (6, 3), True),
        (7, "sum", (6, 8), True),  # raw P7 was never consumed: it joins here
    ]
    extras = make_spec(cells).extra_inputs()
    assert extras == ((), (), (), (), (), (), (4,))
    cells[2] = (5, "sum", (1, 6), True)  # now raw P5 is unconsumed when the P5 output is built
    assert make_spec(cells).extra_inputs() == ((), (), (2,), (), (), (), (4,))


def _swap_inputs(spec: ArchSpec, k: int) -> ArchSpec:
    i, j = spec.cells[k].inputs
    return with_cell(spec, k, inputs=(j, i)).validate()


def test_hash_ignores_sum_input_order():
    swapped = _swap_inputs(PUBLISHED_NASFPN, 1)  # sum(P4, cell0)
    assert swapped != PUBLISHED_NASFPN
    assert swapped.canonical_hash() == PUBLISHED_NASFPN.canonical_hash()
    assert swapped.canonical() == PUBLISHED_NASFPN.canonical()


def test_hash_ignores_global_pool_input_order_across_levels():
    swapped = _swap_inputs(PUBLISHED_NASFPN, 0)  # global_pool(P4, P6): P6 is the attention either way
    assert swapped.canonical_hash() == PUBLISHED_NASFPN.canonical_hash()
    swapped = _swap_inputs(PUBLISHED_NASFPN, 5)  # global_pool(cell1 @P4, cell4 @P5)
    assert swapped.canonical_hash() == PUBLISHED_NASFPN.canonical_hash()
    assert swapped.canonical() == PUBLISHED_NASFPN.canonical()


EQUAL_LEVEL_GP = with_cell(PUBLISHED_NASFPN, 1, op="global_pool").validate()  # global_pool(P4, cell0 @P4)


def test_hash_keeps_global_pool_input_order_at_equal_levels():
    swapped = _swap_inputs(EQUAL_LEVEL_GP, 1)
    assert EQUAL_LEVEL_GP.canonical_hash() != swapped.canonical_hash()
    assert EQUAL_LEVEL_GP.canonical_hash() != PUBLISHED_NASFPN.canonical_hash()


INDEPENDENT_A = make_spec(
    [
        (5, "sum", (2, 3), False),  # cell0 = P5 + P6
        (4, "global_pool", (1, 4), False),  # cell1 = gp(P4, P7), independent of cell0
        (3, "sum", (0, 6), True),
        (4, "sum", (6, 7), True),
        (5, "sum", (5, 8), True),
        (6, "global_pool", (5, 9), True),
        (7, "sum", (9, 10), True),
    ]
)
# The same network with the two intermediate cells written in the other order.
INDEPENDENT_B = make_spec(
    [
        (4, "global_pool", (4, 1), False),
        (5, "sum", (3, 2), False),
        (3, "sum", (0, 5), True),
        (4, "sum", (5, 7), True),
        (5, "sum", (6, 8), True),
        (6, "global_pool", (6, 9), True),
        (7, "sum", (9, 10), True),
    ]
)


def test_hash_ignores_order_of_independent_intermediate_cells():
    assert INDEPENDENT_A != INDEPENDENT_B
    assert INDEPENDENT_A.canonical_hash() == INDEPENDENT_B.canonical_hash()
    assert INDEPENDENT_A.canonical() == INDEPENDENT_B.canonical()


def test_hash_changes_with_the_network():
    hashes = {
        PUBLISHED_NASFPN.canonical_hash(),
        FPN_LIKE.canonical_hash(),
        with_cell(PUBLISHED_NASFPN, 2, op="global_pool").validate().canonical_hash(),
        with_cell(PUBLISHED_NASFPN, 0, level=5).validate().canonical_hash(),
        with_cell(PUBLISHED_NASFPN, 1, inputs=(2, 5)).validate().canonical_hash(),
    }
    assert len(hashes) == 5
    assert all(len(h) == 16 for h in hashes)


@pytest.mark.parametrize("spec", [PUBLISHED_NASFPN, FPN_LIKE, INDEPENDENT_A, EQUAL_LEVEL_GP])
def test_canonical_is_valid_idempotent_and_keeps_the_hash(spec):
    canon = spec.canonical().validate()
    assert canon.canonical_hash() == spec.canonical_hash()
    assert canon.canonical() == canon


def test_table_names_inputs_and_unused_features():
    table = PUBLISHED_NASFPN.table().splitlines()
    assert table[0].split() == ["cell", "level", "op", "input", "i", "input", "j", "output", "+", "unused"]
    assert table[2].split() == ["cell0", "P4", "global_pool", "P4", "P6"]
    assert table[6].split() == ["cell4", "P5", "global_pool", "cell2", "cell3", "yes", "P5"]
    assert table[7].split() == ["cell5", "P7", "global_pool", "cell1", "cell4", "yes", "P7"]


def test_published_hash_is_pinned():
    """The hash is stored with trials: it must not change between versions."""
    assert PUBLISHED_NASFPN.canonical_hash() == "d14fd78e022cc75b"
    assert FPN_LIKE.canonical_hash() == "220bd67dd06febc0"


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_hash_invariances_hold_for_random_specs(data):
    space = NasFpnSpace()
    params = {n: data.draw(st.sampled_from(d.choices), label=n) for n, d in space.distributions.items()}
    spec = space.decode(params)
    cells = list(spec.cells)
    for k, c in enumerate(cells):
        la, lb = (spec.node_level(x) for x in c.inputs)
        if (c.op == "sum" or la != lb) and data.draw(st.booleans(), label=f"swap cell{k}"):
            cells[k] = Cell(c.level, c.op, (c.inputs[1], c.inputs[0]), c.is_output)
    variant = ArchSpec(tuple(cells)).validate()
    assert variant.canonical_hash() == spec.canonical_hash()
    assert variant.canonical() == spec.canonical()
    canon = spec.canonical().validate()
    assert canon.canonical_hash() == spec.canonical_hash() and canon.canonical() == canon
    if 5 not in spec.cells[1].inputs:  # the two intermediate cells are independent: swap their order
        remap = {5: 6, 6: 5}
        moved = [variant.cells[1], variant.cells[0], *variant.cells[2:]]
        moved = [Cell(c.level, c.op, tuple(remap.get(x, x) for x in c.inputs), c.is_output) for c in moved]
        reordered = ArchSpec(tuple(moved)).validate()
        assert reordered.canonical_hash() == spec.canonical_hash()
        if len(set(spec._node_keys())) == len(spec._node_keys()):
            # (with two structurally identical cells, canonical() may pick either of them)
            assert reordered.canonical() == spec.canonical()
