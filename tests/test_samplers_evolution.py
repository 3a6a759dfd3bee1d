"""AgingEvolutionSampler: population and tournament rules, mutation, constraints, lineage, resume."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from samplers_worker import fast_dir, toy_value

from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.samplers import AgingEvolutionSampler
from evo_fpn.samplers.evolution import LEGACY_LINEAGE_KEY, LINEAGE_ATTR, lineage_record, mutation_of, parent_of

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = NasFpnSpace()
WORKER = str(Path(__file__).with_name("samplers_worker.py"))


def nas_objective(trial: optuna.Trial) -> float:
    SPACE.suggest(trial)
    return toy_value(trial.params)


def run_nas(n: int, seed: int = 0, direction: str = "maximize", **kw) -> optuna.Study:
    sampler = AgingEvolutionSampler(seed=seed, constraints=SPACE, **kw)
    study = optuna.create_study(sampler=sampler, direction=direction)
    study.optimize(nas_objective, n_trials=n)
    return study


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    yield from fast_dir(tmp_path)


def lineage(t: optuna.trial.FrozenTrial) -> dict:
    return t.user_attrs[LINEAGE_ATTR]


def assert_valid_nas(params: dict) -> None:
    """Valid without repair: distinct inputs, output levels a permutation, decode/encode round trip."""
    for k in range(7):
        assert params[f"cell{k}.input_i"] != params[f"cell{k}.input_j"]
    levels = [params[f"cell{k}.level"] for k in range(2, 7)]
    assert sorted(levels) == ["P3", "P4", "P5", "P6", "P7"]
    assert SPACE.encode(SPACE.decode(params)) == params


def test_warmup_then_tournament_over_most_recent_population() -> None:
    P, S = 10, 3
    study = run_nas(70, population_size=P, sample_size=S)
    trials = study.trials
    for t in trials[:P]:
        assert lineage(t)["origin"] == "random"
        assert "parent" not in lineage(t) and lineage(t)["mutation"] == "random"
        assert set(t.user_attrs) == {LINEAGE_ATTR} and LEGACY_LINEAGE_KEY not in t.system_attrs  # one write
    for t in trials[P:]:
        rec = lineage(t)
        assert rec["origin"] in ("mutation", "identity")
        members = rec["tournament"]
        assert len(members) == S
        # sequential run: the population is exactly the P trials finished last; the oldest left
        assert all(t.number - P <= m < t.number for m in members), (t.number, members)
        best = max(members, key=lambda m: trials[m].value)
        assert trials[rec["parent"]].value == trials[best].value
        assert rec["parent"] == members[[trials[m].value for m in members].index(trials[best].value)]


def test_tournament_draws_with_replacement() -> None:
    # S > P is only possible with replacement: every tournament must repeat a member
    study = run_nas(30, population_size=4, sample_size=6)
    for t in study.trials[4:]:
        members = lineage(t)["tournament"]
        assert len(members) == 6 and len(set(members)) <= 4


def test_population_is_completion_order_not_trial_number() -> None:
    study = optuna.create_study(direction="maximize")
    dist = {"x": CategoricalDistribution(["a", "b", "c", "d"]), "y": IntDistribution(0, 9)}
    base = datetime.datetime(2026, 1, 1)
    for i in range(6):  # trial 0 finishes last, trial 5 first
        t = create_trial(value=float(i), params={"x": "abcd"[i % 4], "y": i}, distributions=dist)
        t.datetime_start = base
        t.datetime_complete = base + datetime.timedelta(seconds=10 - i)
        study.add_trial(t)
    study.sampler = AgingEvolutionSampler(population_size=3, sample_size=2, seed=1, mutation_prob_identity=0.0)
    for _ in range(20):
        trial = study.ask(dist)
        members = lineage(study.trials[trial.number])["tournament"]
        assert set(members) <= {0, 1, 2}, members  # the three most recently *completed*


def test_pruned_rank_below_complete_failed_excluded_running_never_waited() -> None:
    study = optuna.create_study(direction="minimize")
    dist = {"x": IntDistribution(0, 100)}
    study.add_trial(create_trial(value=5.0, params={"x": 5}, distributions=dist))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0}, distributions=dist))
    study.add_trial(
        create_trial(state=TrialState.PRUNED, params={"x": 1}, distributions=dist, intermediate_values={0: -100.0})
    )
    study.add_trial(create_trial(value=7.0, params={"x": 7}, distributions=dist))
    study.sampler = AgingEvolutionSampler(population_size=3, sample_size=2, seed=3, mutation_prob_identity=0.0)
    parents = []
    for _ in range(60):  # asked, never told: RUNNING trials never join nor block the population
        trial = study.ask(dist)
        rec = lineage(study.trials[trial.number])
        assert rec["origin"] == "mutation" and rec["finished"] == 3
        members = set(rec["tournament"])
        assert 1 not in members  # FAIL is not a member
        assert members <= {0, 2, 3}
        complete = members & {0, 3}
        expected = min(complete, key=lambda m: study.trials[m].value) if complete else 2
        assert rec["parent"] == expected  # PRUNED only wins an all-pruned tournament
        parents.append(rec["parent"])
    assert {0, 2, 3} <= set(parents)  # every rule was exercised


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_pruned_rank_by_step_reached_then_value(direction: str) -> None:
    # values at different steps are not comparable (a trial's seeds report at steps k*total+s):
    # a later step ranks higher whatever its value; at the same step the better value wins
    good, bad = (1.0, 9.0) if direction == "minimize" else (9.0, 1.0)
    best_early = {0: good - 0.5}  # the best value of all, but pruned first
    later_worse = {0: bad, 3: bad}
    later_better = {0: bad, 3: good}
    later_nan = {0: good, 3: float("nan")}  # NaN ranks last among its step, as in TPE
    reports = [best_early, later_worse, later_better, later_nan]
    rank = [3, 1, 0, 2]  # expected order, best first: later_better, later_worse, later_nan, best_early
    study = optuna.create_study(direction=direction)
    dist = {"x": IntDistribution(0, 100)}
    for i, iv in enumerate(reports):
        study.add_trial(
            create_trial(state=TrialState.PRUNED, params={"x": i}, distributions=dist, intermediate_values=iv)
        )
    study.sampler = AgingEvolutionSampler(population_size=4, sample_size=2, seed=0, mutation_prob_identity=0.0)
    seen = set()
    for _ in range(60):
        trial = study.ask(dist)
        rec = lineage(study.trials[trial.number])
        members = rec["tournament"]
        assert rec["parent"] == min(members, key=lambda m: rank[m]), members
        seen.add(tuple(sorted(set(members))))
    assert len(seen) >= 8  # most pairs (and singletons) were drawn


def test_one_mutation_per_child_inside_nas_constraints() -> None:
    study = run_nas(160, seed=4, population_size=20, sample_size=5)
    trials = study.trials
    n_repairs = n_mut = 0
    for t in trials:
        assert_valid_nas(t.params)
        rec = lineage(t)
        if rec["origin"] == "identity":
            assert t.params == trials[rec["parent"]].params
        if rec["origin"] != "mutation":
            continue
        n_mut += 1
        parent = trials[rec["parent"]].params
        changed = {k for k in t.params if t.params[k] != parent[k]}
        repaired = {r[0] for r in rec["repairs"]}
        assert changed == {rec["param"]} | repaired
        assert parent[rec["param"]] == rec["old"] and t.params[rec["param"]] == rec["new"]
        for name, old, new in rec["repairs"]:
            assert parent[name] == old and t.params[name] == new
            assert new == rec["old"]  # a swap: the repaired decision takes the freed value
        n_repairs += bool(repaired)
        assert parent_of(t.user_attrs) == rec["parent"]
        assert rec["mutation"].startswith(f"{rec['param']}: {rec['old']} -> {rec['new']}")
    assert n_mut > 100 and n_repairs > 5


def test_seeded_runs_reproducible_and_seeds_differ() -> None:
    a = [t.params for t in run_nas(40, seed=7, population_size=10, sample_size=3).trials]
    b = [t.params for t in run_nas(40, seed=7, population_size=10, sample_size=3).trials]
    c = [t.params for t in run_nas(40, seed=8, population_size=10, sample_size=3).trials]
    assert a == b and a != c


def test_dedup_remutates_children_equal_to_evaluated_trials() -> None:
    dist = {"x": CategoricalDistribution(["a", "b", "c"]), "y": CategoricalDistribution([0, 1])}
    study = optuna.create_study(direction="maximize")
    # parent (a, 0) is best; its neighbours (b,0), (c,0) are evaluated, (a,1) is not
    for x, y, v in [("a", 0, 10.0), ("b", 0, 1.0), ("c", 0, 2.0)]:
        study.add_trial(create_trial(value=v, params={"x": x, "y": y}, distributions=dist))
    study.sampler = AgingEvolutionSampler(
        population_size=3, sample_size=3, seed=0, mutation_prob_identity=0.0, max_dedup_tries=60
    )
    first = study.ask(dist)
    assert first.params == {"x": "a", "y": 1}  # the only unevaluated neighbour
    # while ``first`` runs it counts as evaluated: no free neighbour is left, so the
    # child is kept after exactly max_dedup_tries re-mutations, and says so
    second = study.ask(dist)
    assert lineage(study.trials[second.number])["dedup_retries"] == 60
    study.tell(first, state=TrialState.FAIL)  # a FAIL still counts as evaluated
    study.tell(second, state=TrialState.FAIL)
    third = study.ask(dist)
    assert lineage(study.trials[third.number])["dedup_retries"] == 60
    # without dedup the same situation yields duplicates right away
    study.sampler = AgingEvolutionSampler(population_size=3, sample_size=3, seed=0, dedup=False)
    fourth = study.ask(dist)
    assert lineage(study.trials[fourth.number])["dedup_retries"] == 0


def test_numeric_params_and_minimize() -> None:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5.0, 5.0)
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        n = trial.suggest_int("n", 1, 64, log=True)
        k = trial.suggest_int("k", 0, 10, step=2)
        c = trial.suggest_categorical("c", ["u", "v"])
        return x**2 + (abs(n - 8) + abs(k - 4)) / 10 + abs(lr - 1e-3) * 100 + (c == "u")

    sampler = AgingEvolutionSampler(population_size=10, sample_size=4, seed=2)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=150)
    for t in study.trials:
        p = t.params
        assert -5 <= p["x"] <= 5 and 1e-5 <= p["lr"] <= 1e-1 and 1 <= p["n"] <= 64 and p["k"] in range(0, 11, 2)
        rec = lineage(t)
        if rec["origin"] == "mutation":
            parent = study.trials[rec["parent"]].params
            assert [k for k in p if p[k] != parent[k]] == [rec["param"]]
    random_best = min(t.value for t in study.trials[:10])
    assert study.best_value < random_best


def _ranks(values: np.ndarray) -> list[int]:
    """Non-dominated sorting by hand (all minimised): rank 0 = no one dominates it, and so on."""
    left, rank, out = set(range(len(values))), 0, [0] * len(values)
    while left:
        front = {
            i for i in left if not any((values[j] <= values[i]).all() and (values[j] < values[i]).any() for j in left)
        }
        for i in front:
            out[i] = rank
        left -= front
        rank += 1
    return out


def _crowding(values: np.ndarray) -> list[float]:
    """NSGA-II crowding distance by hand: per objective, the gap between the two neighbours over
    the range; the ends get infinity."""
    n, dist = len(values), [0.0] * len(values)
    for k in range(values.shape[1]):
        order = sorted(range(n), key=lambda i: values[i, k])
        span = values[order[-1], k] - values[order[0], k]
        if span == 0:
            continue
        for pos, i in enumerate(order):
            lo = values[order[pos - 1], k] if pos > 0 else -np.inf
            hi = values[order[pos + 1], k] if pos < n - 1 else np.inf
            dist[i] += (hi - lo) / span
    return dist


def test_multi_objective_parent_wins_by_rank_then_crowding_distance() -> None:
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x = trial.suggest_float("x", 0, 1)
        y = trial.suggest_categorical("y", [0, 1, 2])
        return x + y, 1 - x + y

    sampler = AgingEvolutionSampler(population_size=8, sample_size=3, seed=5)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(objective, n_trials=40)
    by_crowding = 0
    for t in study.trials[8:]:
        rec = lineage(t)
        pop = [study.trials[n] for n in range(t.number - 8, t.number)]
        values = np.array([p.values for p in pop])
        ranks = _ranks(values)
        key = {}
        for r in set(ranks):
            members = [i for i in range(8) if ranks[i] == r]
            for i, c in zip(members, _crowding(values[members]), strict=True):
                key[pop[i].number] = (r, -c)
        best = min(key[m] for m in rec["tournament"])
        assert key[rec["parent"]] == best
        tied = {key[m] for m in rec["tournament"] if key[m][0] == best[0]}
        by_crowding += len(tied) > 1  # members of the best rank told apart by their crowding distance
    assert by_crowding > 0  # some tournaments were decided by crowding distance, not rank alone


def test_infeasible_members_rank_below_feasible_ones() -> None:
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x = trial.suggest_float("x", 0, 1)
        trial.set_user_attr("c", x - 0.5)
        trial.set_constraint("x_at_most_half", x - 0.5)  # Optuna 5's convention: > 0 is infeasible
        return x, 1 - x

    sampler = AgingEvolutionSampler(population_size=6, sample_size=6, seed=1)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(objective, n_trials=40)
    picked = 0
    for t in study.trials[6:]:
        rec = lineage(t)
        drawn = [study.trials[m] for m in rec["tournament"]]
        if any(d.user_attrs["c"] <= 0 for d in drawn):
            picked += 1
            assert study.trials[rec["parent"]].user_attrs["c"] <= 0
    assert picked > 20


def test_enqueued_trial_keeps_its_params_and_is_labelled() -> None:
    study = optuna.create_study(sampler=AgingEvolutionSampler(population_size=2, sample_size=2, seed=0))
    fixed = SPACE.encode(SPACE.decode({n: d.choices[0] for n, d in SPACE.distributions.items()}))
    study.optimize(nas_objective, n_trials=3)
    study.enqueue_trial(fixed)
    study.optimize(nas_objective, n_trials=1)
    last = study.trials[-1]
    assert last.params == fixed and lineage(last)["mutation"] == "enqueued"


def _worker(storage: str, n: int, seed: int) -> None:
    settings = json.dumps({"population_size": 10, "sample_size": 4})
    cmd = [sys.executable, WORKER, "--storage", storage, "--sampler", "evolution", "--seed", str(seed)]
    subprocess.run([*cmd, "--n-trials", str(n), "--settings", settings], check=True, capture_output=True)


def test_resumed_study_in_fresh_process_continues_exactly(scratch: Path) -> None:
    whole = run_nas(36, seed=11, population_size=10, sample_size=4).trials  # uninterrupted, in process
    split = f"sqlite:///{scratch}/split.db"
    _worker(split, 17, seed=11)
    _worker(split, 19, seed=11)  # a fresh process: nothing but the storage carries over
    b = optuna.load_study(study_name="s", storage=split).trials
    assert [t.params for t in whole] == [t.params for t in b]
    assert [t.user_attrs for t in whole] == [{k: v for k, v in t.user_attrs.items() if k != "worker"} for t in b]
    assert sum(lineage(t)["origin"] == "mutation" for t in b[17:]) > 10


def test_argument_checks() -> None:
    for kw in (
        {"population_size": 1},
        {"sample_size": 0},
        {"mutation_prob_identity": 1.0},
        {"max_dedup_tries": -1},
        {"perturb_scale": 0},
        {"seed": "x"},
        {"constraints": object()},
    ):
        with pytest.raises(ValueError):
            AgingEvolutionSampler(**kw)
    with pytest.raises(TypeError):
        AgingEvolutionSampler(100)  # keyword-only


def test_float_values_never_leave_bounds_under_perturbation() -> None:
    sampler = AgingEvolutionSampler(population_size=3, sample_size=2, seed=9, perturb_scale=2.0)
    study = optuna.create_study(sampler=sampler)
    dist = FloatDistribution(0.1, 0.2, step=0.05)
    study.optimize(lambda t: t.suggest_float("x", 0.1, 0.2, step=0.05), n_trials=30)
    assert {round(t.params["x"], 6) for t in study.trials} <= {0.1, 0.15, 0.2}
    assert dist.low == 0.1


def test_identity_children_copy_their_parent() -> None:
    study = run_nas(40, seed=1, population_size=5, sample_size=2, mutation_prob_identity=0.9)
    identities = [t for t in study.trials if lineage(t)["origin"] == "identity"]
    assert len(identities) > 20
    for t in identities:
        assert t.params == study.trials[lineage(t)["parent"]].params and lineage(t)["mutation"] == "identity"


def test_lineage_is_one_write_per_trial() -> None:
    study = optuna.create_study(sampler=AgingEvolutionSampler(population_size=3, sample_size=2, seed=0))
    calls: list[str] = []
    storage = study._storage
    for name in ("set_trial_user_attr", "set_trial_system_attr"):
        real = getattr(storage, name)
        setattr(storage, name, lambda *a, _real=real, _name=name: (calls.append(f"{_name}:{a[1]}"), _real(*a))[1])
    study.optimize(nas_objective, n_trials=8)
    assert calls == ["set_trial_user_attr:lineage"] * 8
    assert all(parent_of(t.user_attrs) is not None for t in study.trials[3:])


def test_lineage_of_studies_from_earlier_versions_is_read() -> None:
    """Before the single attr: a system attr record plus the user attrs ``parent_trial`` and ``mutation``."""
    dist = {"x": IntDistribution(0, 9)}
    legacy = {"parent": 0, "tournament": [0, 0], "finished": 2, "origin": "mutation", "param": "x", "old": 1}
    old = create_trial(
        value=1.0,
        params={"x": 2},
        distributions=dist,
        user_attrs={"parent_trial": 0, "mutation": "x: 1 -> 2"},
        system_attrs={LEGACY_LINEAGE_KEY: {**legacy, "new": 2, "repairs": [], "dedup_retries": 0}},
    )
    assert parent_of(old.user_attrs) == 0 and mutation_of(old.user_attrs) == "x: 1 -> 2"
    rec = lineage_record(old.user_attrs, old.system_attrs)
    assert rec is not None and rec["parent"] == 0 and rec["mutation"] == "x: 1 -> 2" and rec["new"] == 2
    seed = create_trial(value=0.0, params={"x": 1}, distributions=dist, user_attrs={"mutation": "random"})
    assert parent_of(seed.user_attrs) is None and mutation_of(seed.user_attrs) == "random"
    assert lineage_record(seed.user_attrs) == {"mutation": "random"}
    other = create_trial(value=0.0, params={"x": 1}, distributions=dist)
    assert parent_of(other.user_attrs) is None and mutation_of(other.user_attrs, "seed") == "seed"
    assert lineage_record(other.user_attrs, other.system_attrs) is None
    new = run_nas(12, population_size=3, sample_size=2).trials[-1]
    assert lineage_record(new.user_attrs, new.system_attrs) == lineage(new)
    assert parent_of(new.user_attrs) == lineage(new)["parent"]
    assert mutation_of(new.user_attrs) == lineage(new)["mutation"]
    assert list(lineage(new))[:3] == ["mutation", "parent", "origin"]  # what optuna-dashboard shows first
