"""The base of our samplers: settings plus a cache of the storage, and Optuna's sampler plumbing.

Both samplers make their own decisions in ``sample_relative`` and share the rest: the caches
that follow one study, pickling without them, and the independent fallback (a per-trial seeded
uniform draw inside the constraints, or a given ``independent_sampler``, which also receives the
``before_trial``/``after_trial`` calls).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from evo_fpn.samplers._common import CompletionLog, new_base_seed, sample_uniform, study_key, trial_rng
from evo_fpn.samplers.constraints import ChoiceConstraints, allowed_values

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
"""The finished trials both samplers learn from; FAIL trials are left out (often infrastructure)."""


class StorageBackedSampler(BaseSampler):
    """Base of our samplers, whose only state beyond their settings is a cache of the storage.

    Pickling keeps the settings and drops the lock and the caches named in ``_CACHE_ATTRS``
    (this class's and the subclass's); they are rebuilt from the storage by ``_reset_caches``,
    so a pickled copy, a new process and another worker all continue from the same finished
    trials.
    """

    _BASE_CACHE_ATTRS: tuple[str, ...] = ("_study_key", "_search_space", "_log")
    _CACHE_ATTRS: tuple[str, ...] = ()
    _lock: threading.RLock
    _base_seed: int
    _independent_sampler: BaseSampler | None
    _constraints: ChoiceConstraints | None

    def _init_common(
        self, *, seed: int | None, constraints: ChoiceConstraints | None, independent_sampler: BaseSampler | None
    ) -> None:
        """Checks and stores the settings every subclass shares, then builds the caches: the
        last step of a subclass's ``__init__``."""
        if seed is not None and not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if constraints is not None and not (
            callable(getattr(constraints, "decision_order", None))
            and callable(getattr(constraints, "allowed_choices", None))
        ):
            raise ValueError("constraints must implement decision_order(names) and allowed_choices(name, decided)")
        self._constraints = constraints
        self._independent_sampler = independent_sampler
        self._base_seed = int(seed) if seed is not None else new_base_seed()
        self._lock = threading.RLock()
        self._reset_caches()

    # -- caches ---------------------------------------------------------------------------
    def _reset_caches(self) -> None:
        """Forget everything read from the storage; subclasses extend it (call this first)."""
        self._study_key: Any = None
        self._search_space = IntersectionSearchSpace(include_pruned=True)
        self._log = CompletionLog(FINISHED_STATES)

    def _follow(self, study: Study) -> Any:
        """The study's key, after resetting the caches if they belong to another trial set."""
        key = study_key(study)
        if key != self._study_key:
            self._reset_caches()
            self._study_key = key
        return key

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        for k in (*self._BASE_CACHE_ATTRS, *self._CACHE_ATTRS):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._reset_caches()

    # -- Optuna sampler API: the parts both samplers share ---------------------------------
    def reseed_rng(self) -> None:
        with self._lock:
            self._base_seed = new_base_seed()
            if self._independent_sampler is not None:
                self._independent_sampler.reseed_rng()

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._sample_fallback(study, trial, param_name, param_distribution)

    def _sample_fallback(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """``independent_sampler``'s value, else a uniform draw from the trial's own RNG (so a
        resumed study draws the same), inside the constraints given the trial's params so far."""
        if self._independent_sampler is not None:
            return self._independent_sampler.sample_independent(study, trial, param_name, param_distribution)
        rng = trial_rng(self._base_seed, trial.number, "independent:" + param_name)
        choices = None
        if isinstance(param_distribution, CategoricalDistribution):
            choices = allowed_values(self._constraints, param_name, param_distribution.choices, trial.params)
        return sample_uniform(param_distribution, rng, choices)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if self._independent_sampler is not None:
            self._independent_sampler.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        if self._independent_sampler is not None:
            self._independent_sampler.after_trial(study, trial, state, values)
