"""Best-so-far and Pareto helpers: the same answers for either direction, Optuna's Pareto ranking."""

from __future__ import annotations

import math
import random

import numpy as np
import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from evo_fpn.study.analysis import best_so_far, best_trial, best_value, objective_value, pareto_front, rank_key

MAX, MIN = StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE


def test_best_so_far_carries_the_best_over_missing_values_in_either_direction() -> None:
    values = [None, 0.3, None, 0.1, 0.5, float("nan"), 0.4]
    up = best_so_far(values, MAX)
    assert math.isnan(up[0]) and list(up[1:]) == [0.3, 0.3, 0.3, 0.5, 0.5, 0.5]
    down = best_so_far(values, MIN)
    assert math.isnan(down[0]) and list(down[1:]) == [0.3, 0.3, 0.1, 0.1, 0.1, 0.1]
    assert best_so_far([], MAX).shape == (0,)
    assert best_value(values, MAX) == 0.5 and best_value(values, MIN) == 0.1
    assert best_value([None, float("nan")], MAX) is None


def test_rank_key_sorts_best_first_and_nothing_last() -> None:
    values = [0.2, None, 0.9, float("nan"), 0.5]
    assert sorted(values[:1] + values[2:3] + values[4:], key=lambda v: rank_key(v, MAX)) == [0.9, 0.5, 0.2]
    assert sorted([0.2, 0.9, 0.5], key=lambda v: rank_key(v, MIN)) == [0.2, 0.5, 0.9]
    assert rank_key(None, MAX) == rank_key(float("nan"), MIN) == math.inf


def test_best_trial_is_the_best_complete_one_and_ties_go_to_the_earliest() -> None:
    def trial(number: int, value: float | None, state: TrialState = TrialState.COMPLETE) -> optuna.trial.FrozenTrial:
        t = create_trial(state=state, value=value if state != TrialState.FAIL else None)
        t.number = number
        return t

    trials = [trial(0, 0.3), trial(1, 0.9, TrialState.PRUNED), trial(2, 0.5), trial(3, 0.5), trial(4, 0.1)]
    trials.append(trial(5, None, TrialState.FAIL))
    assert best_trial(trials, MAX).number == 2  # the pruned 0.9 is an early value
    assert best_trial(trials, MIN).number == 4
    assert best_trial(trials[1:2], MAX) is None
    assert objective_value(trials[1]) is None and objective_value(trials[0]) == 0.3
    assert objective_value(trials[0], objective=1) is None


def test_best_trial_agrees_with_optuna_on_real_studies() -> None:
    for direction in ("maximize", "minimize"):
        study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(lambda t: round(t.suggest_float("x", 0, 1), 2), n_trials=30)
        assert best_trial(study.trials, study.direction).number == study.best_trial.number
        curve = best_so_far([t.value for t in study.trials], study.direction)
        assert curve[-1] == study.best_value


def test_pareto_front_of_cost_and_accuracy() -> None:
    # (FLOPs, AP): fewer FLOPs and more AP are better
    pts = [(1.0, 0.30), (2.0, 0.25), (2.0, 0.40), (3.0, 0.40), (4.0, 0.50), (0.5, 0.10), (2.0, 0.40)]
    assert pareto_front(pts, (MIN, MAX)) == [0, 2, 4, 5]  # the repeated (2.0, 0.40) only once
    assert pareto_front(pts, (MAX, MIN)) == [1, 3, 4, 5]  # the other way round: more FLOPs, less AP
    assert pareto_front([], (MIN, MAX)) == []
    with pytest.raises(ValueError, match="one value per direction"):
        pareto_front([(1.0,)], (MIN, MAX))


def test_pareto_front_matches_optunas_best_trials() -> None:
    rng = random.Random(0)
    study = optuna.create_study(directions=["minimize", "maximize", "maximize"])
    for _ in range(60):
        study.add_trial(create_trial(values=[rng.randint(0, 9), rng.randint(0, 9), rng.random()]))
    trials = study.trials
    front = pareto_front([t.values for t in trials], study.directions)
    optuna_front = {tuple(t.values) for t in study.best_trials}
    assert {tuple(trials[i].values) for i in front} == optuna_front
    assert len(front) == len(optuna_front)  # one index per distinct point
    assert np.all(np.diff(front) > 0)  # in input order
