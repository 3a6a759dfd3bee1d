"""Every use of Optuna's private API, in one place, each with a test (tests/test_compat.py).

Optuna's public API has no way to do these things (Optuna 5.1): read a study's trials through
its per-study cache without copies (what samplers do on every proposal), write an attribute of
a trial that is no longer running (a sampler's record after ``tell``), read or write a study's
system attrs, ask whether a storage has heartbeats, Pareto ranking and crowding distance, and
the gRPC servicer of the storage server. An Optuna upgrade that changes one of them fails its
test here, loudly, instead of deep inside a search.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:  # pragma: no cover
    from optuna.artifacts._protocol import ArtifactStore as ArtifactStore  # noqa: PLC0414 - re-exported type


def trials(
    study: optuna.Study, *, states: Container[TrialState] | None = None, use_cache: bool = False
) -> list[FrozenTrial]:
    """The study's trials without copies; ``use_cache`` reads through Optuna's per-study cache
    of finished trials (what its own samplers do each proposal), which ``get_trials`` does not."""
    return study._get_trials(deepcopy=False, states=states, use_cache=use_cache)  # type: ignore[arg-type]


def trial_id(trial: FrozenTrial) -> int:
    """The storage's id of a trial (its ``number`` counts within the study only)."""
    return trial._trial_id


def set_trial_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """A user attr of ``trial`` written through the storage, for a trial that is no ``optuna.Trial``
    (finished, or seen by a sampler's ``after_trial``)."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def set_trial_system_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's system attrs (Optuna 5 has no public reader)."""
    return study._storage.get_study_system_attrs(study._study_id)


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    study._storage.set_study_system_attr(study._study_id, key, value)


def fresh_study_user_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's user attrs read from the storage now (``study.user_attrs`` may be cached by a
    storage wrapper): another worker may have just written them."""
    return study._storage.get_study_user_attrs(study._study_id)


def study_key(study: optuna.Study) -> tuple[Any, ...]:
    """What identifies one study view for a cache: storage object, study id, name and the
    Hyperband bracket a pruner may have wrapped the study in."""
    return (id(study._storage), study._study_id, study.study_name, getattr(study, "_bracket_id", None))


def heartbeat_interval(study: optuna.Study) -> float | None:
    """Seconds between the heartbeats of the study's storage (``None``: it has none)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    return float(storage.get_heartbeat_interval()) if is_heartbeat_enabled(storage) else None  # type: ignore[attr-defined]


def is_pareto_front(points: np.ndarray) -> np.ndarray:
    """Mask of the non-dominated rows of ``points`` (minimised; duplicates stay on the front)."""
    from optuna.study._multi_objective import _is_pareto_front

    return _is_pareto_front(points, assume_unique_lexsorted=False)


def normalize_value(value: float | None, direction: optuna.study.StudyDirection) -> float:
    """A value as Optuna's multi-objective code compares it: minimised, ``None``/NaN last."""
    from optuna.study._multi_objective import _normalize_value

    return _normalize_value(value, direction)


def fast_non_domination_rank(points: np.ndarray, *, penalty: np.ndarray | None = None) -> np.ndarray:
    """NSGA-II's non-domination rank of each row (minimised), with constraint penalties."""
    from optuna.study._multi_objective import _fast_non_domination_rank

    return _fast_non_domination_rank(points, penalty=penalty)


def crowding_distance(members: Sequence[FrozenTrial]) -> dict[int, float]:
    """NSGA-II's crowding distance of each trial of one front, by trial number."""
    from optuna.samplers.nsgaii._elite_population_selection_strategy import _calc_crowding_distance

    return dict(_calc_crowding_distance(list(members)))


def grpc_servicer() -> tuple[Any, Any]:
    """Optuna's gRPC storage servicer and its generated registration module (the storage server)."""
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    return OptunaStorageProxyService, api_pb2_grpc
