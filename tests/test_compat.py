"""One test per use of Optuna's private API (evo_fpn.compat): an Optuna upgrade that changes
one fails here, by name, instead of deep inside a search."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from evo_fpn import compat


@pytest.fixture
def study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(storage="sqlite:///:memory:", directions=["maximize", "minimize"])
    for x in (0.1, 0.5, 0.9):
        s.optimize(lambda t, x=x: (t.suggest_float("x", x, x), 1 - x), n_trials=1)
    s.enqueue_trial({"x": 0.3})
    return s


def test_trials_read_without_copies_through_the_cache(study: optuna.Study) -> None:
    done = compat.trials(study, states=(TrialState.COMPLETE,), use_cache=True)
    assert [t.number for t in done] == [0, 1, 2]
    assert compat.trials(study, use_cache=False)[3].state == TrialState.WAITING
    assert compat.trials(study)[0] is compat.trials(study)[0]  # no deep copies


def test_trial_attrs_written_through_a_frozen_trial(study: optuna.Study) -> None:
    """As a sampler's ``after_trial`` writes them: it holds a FrozenTrial, not an ``optuna.Trial``."""
    study.ask()
    frozen = study.get_trials()[-1]
    compat.set_trial_user_attr(study, frozen, "lineage", {"parent": None})
    compat.set_trial_system_attr(study, frozen, "sample", [1, 2])
    again = study.get_trials()[-1]
    assert again.user_attrs["lineage"] == {"parent": None} and again.system_attrs["sample"] == [1, 2]
    assert compat.trial_id(frozen) == frozen._trial_id and isinstance(compat.trial_id(frozen), int)


def test_study_system_attrs_and_fresh_user_attrs(study: optuna.Study) -> None:
    compat.set_study_system_attr(study, "checkpoint", {"updates": 3})
    assert compat.study_system_attrs(study)["checkpoint"] == {"updates": 3}
    other = optuna.load_study(study_name=study.study_name, storage=study._storage)
    other.set_user_attr("fingerprint", "abc")
    assert compat.fresh_study_user_attrs(study)["fingerprint"] == "abc"


def test_study_key_tells_studies_apart(study: optuna.Study) -> None:
    other = optuna.create_study(storage=study._storage)
    key = compat.study_key(study)
    assert key == compat.study_key(optuna.load_study(study_name=study.study_name, storage=study._storage))
    assert key != compat.study_key(other) and key[2] == study.study_name


def test_heartbeat_interval(tmp_path) -> None:  # type: ignore[no-untyped-def]
    beating = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/h.db", heartbeat_interval=7, grace_period=20)
    assert compat.heartbeat_interval(optuna.create_study(storage=beating)) == 7.0
    assert compat.heartbeat_interval(optuna.create_study(storage=f"sqlite:///{tmp_path}/n.db")) is None


def test_pareto_front_normalisation_and_ranks() -> None:
    points = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert compat.is_pareto_front(points).tolist() == [True, True, False, True]
    assert compat.normalize_value(2.0, StudyDirection.MAXIMIZE) == -2.0
    assert compat.normalize_value(None, StudyDirection.MINIMIZE) == float("inf")
    assert compat.fast_non_domination_rank(points).tolist() == [0, 0, 1, 0]
    ranked = compat.fast_non_domination_rank(points, penalty=np.array([0.0, 1.0, 0.0, 0.0]))
    assert ranked[1] > ranked[2]  # an infeasible point ranks after every feasible one


def test_crowding_distance_by_trial_number(study: optuna.Study) -> None:
    front = compat.trials(study, states=(TrialState.COMPLETE,))
    distance = compat.crowding_distance(front)
    assert set(distance) == {0, 1, 2}
    assert distance[0] == distance[2] == float("inf") and 0 < distance[1] < float("inf")


def test_grpc_servicer_is_importable() -> None:
    service, generated = compat.grpc_servicer()
    assert hasattr(generated, "add_StorageServiceServicer_to_server") and callable(service)
