"""The search space: Optuna categoricals <-> specs, both ways, valid for every sampler's point."""

from __future__ import annotations

import random

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evo_fpn.arch.space import NasFpnSpace, SpaceConfig
from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN, ArchSpec, SpecError, make_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = NasFpnSpace()


def test_param_names_and_choices_are_readable_and_fixed():
    names = SPACE.param_names()
    assert len(names) == 4 * 7
    assert names[:4] == ["cell0.input_i", "cell0.input_j", "cell0.level", "cell0.op"]
    d = SPACE.distributions
    assert d["cell3.input_i"].choices == ("P3", "P4", "P5", "P6", "P7", "cell0", "cell1", "cell2")
    assert d["cell0.level"].choices == ("P4", "P5", "P6", "P7")  # intermediate: never stride 8
    assert d["cell2.level"].choices == ("P3", "P4", "P5", "P6", "P7")
    assert d["cell6.op"].choices == ("sum", "global_pool")
    assert NasFpnSpace().distributions == d  # the same choices for the same name, every time


@pytest.mark.parametrize("spec", [PUBLISHED_NASFPN, FPN_LIKE], ids=["published", "fpn"])
def test_params_round_trip(spec):
    params = SPACE.encode(spec)
    assert params["cell0.input_i"] == SPACE.distributions["cell0.input_i"].choices[spec.cells[0].inputs[0]]
    assert SPACE.decode(params) == spec


def test_published_params_read_like_the_paper():
    params = SPACE.encode(PUBLISHED_NASFPN)
    assert {k: v for k, v in params.items() if k.startswith("cell0.")} == {
        "cell0.input_i": "P4",
        "cell0.input_j": "P6",
        "cell0.level": "P4",
        "cell0.op": "global_pool",
    }
    assert params["cell4.input_i"] == "cell2" and params["cell4.level"] == "P5"


def test_enqueued_specs_come_back_through_a_real_study():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for spec in (PUBLISHED_NASFPN, FPN_LIKE):
        study.enqueue_trial(SPACE.encode(spec))
    seen: list[ArchSpec] = []

    def objective(trial: optuna.Trial) -> float:
        spec = SPACE.suggest(trial)
        seen.append(spec)
        return float(len(spec.cells))

    study.optimize(objective, n_trials=3)
    assert seen[0] == PUBLISHED_NASFPN and seen[1] == FPN_LIKE
    assert SPACE.decode(study.trials[0].params) == PUBLISHED_NASFPN
    assert seen[0].canonical_hash() == PUBLISHED_NASFPN.canonical_hash()


def test_encode_rejects_specs_of_another_layout():
    outputs_first = make_spec(
        [
            (3, "sum", (0, 1), True),
            (4, "sum", (1, 5), False),
            (4, "sum", (1, 6), True),
            (5, "sum", (2, 7), True),
            (6, "sum", (3, 8), True),
            (7, "sum", (4, 9), True),
            (6, "sum", (3, 4), False),
        ]
    )
    with pytest.raises(SpecError, match="intermediate cells first"):
        SPACE.encode(outputs_first)
    with pytest.raises(SpecError, match="cells, the space"):
        NasFpnSpace(SpaceConfig(num_cells=8, num_intermediate=3)).encode(PUBLISHED_NASFPN)
    with pytest.raises(SpecError, match="not in this space's ops"):
        NasFpnSpace(SpaceConfig(ops=("sum",))).encode(PUBLISHED_NASFPN)


def test_decode_repairs_equal_inputs_and_repeated_output_levels():
    params = SPACE.encode(PUBLISHED_NASFPN)
    params["cell1.input_j"] = params["cell1.input_i"] = "P7"  # equal inputs -> the next candidate
    params["cell3.level"] = "P3"  # P3 is already cell2's -> the next free level upwards
    spec = SPACE.decode(params)
    assert spec.cells[1].inputs == (4, 5)  # P7, then cell0
    assert [c.level for c in spec.cells[2:]] == [3, 4, 5, 7, 6]
    params["cell1.input_j"] = params["cell1.input_i"] = "cell0"  # the last candidate wraps to P3
    assert SPACE.decode(params).cells[1].inputs == (5, 0)
    params["cell6.level"] = "P7"  # P7 is taken, P3..P5 too: wraps around to the free P6
    assert SPACE.decode(params).cells[6].level == 6


def test_sample_draws_valid_seeded_points_across_the_space():
    specs = [SPACE.sample(random.Random(seed)) for seed in range(20)]
    again = [SPACE.sample(random.Random(seed)) for seed in range(20)]
    assert [s.canonical_hash() for s in specs] == [s.canonical_hash() for s in again]
    assert len({s.canonical_hash() for s in specs}) == 20
    assert {c.op for s in specs for c in s.cells} == {"sum", "global_pool"}
    for spec in specs:
        assert SPACE.decode(SPACE.encode(spec)) == spec


def test_decode_rejects_missing_or_foreign_values():
    params = SPACE.encode(PUBLISHED_NASFPN)
    with pytest.raises(SpecError, match="not one of"):
        SPACE.decode(params | {"cell0.level": "P3"})
    with pytest.raises(SpecError, match="miss decisions"):
        SPACE.decode({k: v for k, v in params.items() if k != "cell5.op"})


CONFIGS = st.builds(
    lambda lo, n_levels, n_inter, inter_off, ops: SpaceConfig(
        num_cells=n_levels + n_inter,
        num_intermediate=n_inter,
        min_level=lo,
        max_level=lo + n_levels - 1,
        min_intermediate_level=lo + min(inter_off, n_levels - 1),
        ops=ops,
    ),
    st.integers(2, 4),
    st.integers(2, 5),
    st.integers(0, 3),
    st.integers(0, 2),
    st.sampled_from([("sum", "global_pool"), ("sum",), ("global_pool",)]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), config=st.one_of(st.just(SpaceConfig()), CONFIGS))
def test_any_params_decode_to_a_valid_spec(data, config):
    """Any value from each categorical, in any combination, decodes to a valid spec."""
    space = NasFpnSpace(config)
    params = {name: data.draw(st.sampled_from(dist.choices), label=name) for name, dist in space.distributions.items()}
    spec = space.decode(params)
    assert spec.validate() is spec
    assert sorted(c.level for c in spec.cells if c.is_output) == list(spec.levels)
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert space.decode(space.encode(spec)) == spec  # every decoded spec is a point of the space


@settings(max_examples=150, deadline=None)
@given(data=st.data(), config=st.one_of(st.just(SpaceConfig()), CONFIGS))
def test_following_allowed_choices_never_needs_a_repair(data, config):
    space = NasFpnSpace(config)
    decided: dict[str, str] = {}
    for name in space.decision_order(reversed(space.param_names())):
        allowed = space.allowed_choices(name, decided)
        choices = space.distributions[name].choices if allowed is None else allowed
        assert choices, f"no allowed choice for {name}"
        assert set(choices) <= set(space.distributions[name].choices)
        decided[name] = data.draw(st.sampled_from(list(choices)), label=name)
    assert space.decision_order(decided) == space.param_names()
    assert space.encode(space.decode(decided)) == decided  # decoding changed nothing


def _run(sampler: optuna.samplers.BaseSampler, n_trials: int, directions: list[str]) -> tuple[list[ArchSpec], int]:
    study = optuna.create_study(sampler=sampler, directions=directions)
    specs: list[ArchSpec] = []

    def objective(trial: optuna.Trial):
        spec = SPACE.suggest(trial)
        specs.append(spec)
        n_gp = sum(c.op == "global_pool" for c in spec.cells)
        n_fine = sum(c.level <= 4 for c in spec.cells)
        return (n_gp + 0.1 * n_fine, n_fine)[: len(directions)]

    study.optimize(objective, n_trials=n_trials)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    repaired = 0
    for t in study.trials:  # the stored params alone rebuild the same valid spec
        assert SPACE.decode(t.params).validate() == specs[t.number]
        repaired += SPACE.encode(specs[t.number]) != t.params
    return specs, repaired


@pytest.mark.parametrize(
    ("make", "directions"),
    [
        (lambda: optuna.samplers.RandomSampler(seed=1), ["maximize"]),
        (lambda: optuna.samplers.TPESampler(seed=1, n_startup_trials=5), ["maximize"]),
        (lambda: optuna.samplers.NSGAIISampler(seed=1, population_size=6), ["maximize", "minimize"]),
    ],
    ids=["random", "tpe", "nsga2"],
)
def test_optuna_samplers_only_produce_valid_specs(make, directions):
    specs, repaired = _run(make(), 24, directions)
    assert len({s.canonical_hash() for s in specs}) > 5  # they really explored
    assert repaired > 0  # ... including points that break a constraint, and still got a valid spec


def test_allowed_choices_exclude_exactly_what_would_need_a_repair():
    assert SPACE.allowed_choices("cell1.input_j", {"cell1.input_i": "P3"}) == ["P4", "P5", "P6", "P7", "cell0"]
    decided = {"cell2.level": "P5", "cell3.level": "P3", "cell0.level": "P5"}  # cell0 is intermediate
    assert SPACE.allowed_choices("cell4.level", decided) == ["P4", "P6", "P7"]
    assert SPACE.allowed_choices("cell0.level", {}) is None
    assert SPACE.allowed_choices("cell4.op", decided) is None
    assert SPACE.allowed_choices("learning_rate", decided) is None  # not ours: unconstrained
