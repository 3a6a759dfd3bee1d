"""Aging (regularized) evolution as an Optuna sampler (Real et al., AAAI 2019)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from evo_fpn import compat
from evo_fpn.samplers._common import (
    TrialIndex,
    crowding_distances,
    last_report,
    non_domination_ranks,
    ordered_space,
    penalty,
    perturb,
    sample_joint_random,
    sample_uniform,
    trial_rng,
)
from evo_fpn.samplers.base import StorageBackedSampler
from evo_fpn.samplers.constraints import ChoiceConstraints, _contains, allowed_values

LINEAGE_ATTR = "lineage"
"""Trial user attr holding the lineage record (a dict of plain values, shown by optuna-dashboard):
``origin``, ``mutation`` (text), ``parent`` (trial number, mutants and identities only) and
the details (mutated ``param``, ``old``/``new``, ``repairs``, ``tournament``, ``finished``,
``dedup_retries``). One write per trial: each attr is one commit on an RDB storage."""

LEGACY_LINEAGE_KEY = "evolution:lineage"
"""Where studies written before the single ``lineage`` attr kept the record (a trial system
attr, mirrored to the user attrs ``parent_trial`` and ``mutation``): still read."""

_MISSING: Any = object()


class AgingEvolutionSampler(StorageBackedSampler):
    """Aging evolution: tournament selection, one mutation per child, oldest dies first.

    Rules, all computed from the storage so that every worker and every resumed process
    agrees (nothing is remembered between trials except caches of what the storage says):

    * **Population**: the ``population_size`` (P) most recently *finished* trials. Finished
      means COMPLETE or PRUNED; "most recent" is completion order: ``datetime_complete``
      (the clock of the worker that finished the trial), ties broken by trial number. The
      oldest finished trial leaves as a new one finishes. FAIL trials are not members and do
      not age the population. RUNNING and WAITING trials are never waited on (a killed
      worker's trial may run forever); they only count for de-duplication.
    * **Warm-up**: until P trials have finished, children are uniform random (inside the
      constraints, when given).
    * **Tournament**: draw ``sample_size`` (S) members uniformly *with replacement*; the best
      is the parent (ties: the first drawn). Best = highest/lowest value by the study's
      direction; for several objectives, the lowest non-domination rank within the population
      (Optuna's non-dominated sort), then the largest crowding distance within that rank (as
      NSGA-II: of equally good members, the one in the emptiest region of the front). Trials
      with constraints (``Trial.set_constraint``, Optuna's convention: a value > 0 is
      violated) that are infeasible rank below every feasible COMPLETE member, by total
      violation. PRUNED
      members rank below every COMPLETE member (a pruned trial's value is an early one, not
      comparable with a final value) and among themselves as Optuna's TPE ranks them: by the
      step of their last report, later first, then by its value (NaN last); values reported
      at different steps are not comparable either.
    * **Mutation**: with probability ``mutation_prob_identity`` the child copies the parent
      (a deliberate re-evaluation, exempt from de-duplication). Otherwise exactly one
      decision is chosen uniformly among those that can change and set to a different
      value: a categorical to another allowed choice; an int/float is perturbed by a
      Gaussian step of ``perturb_scale`` x its range (in log space for log params), snapped
      to its step. With ``constraints``, later decisions that the change makes invalid are
      repaired minimally, in decision order: a repaired decision takes the value the mutated
      decision gave up, if allowed (for a permutation or a pair of distinct inputs that is a
      swap), else a random allowed value. Repairs are recorded with the mutation.
    * **De-duplication** (``dedup=True``): a child whose params equal those of any other
      trial of the study (finished in any state, running or waiting) is mutated afresh from
      the same parent, at most ``max_dedup_tries`` times; then it is kept as is.
    * **Lineage**: written while the trial runs, in one write, as the trial user attr
      ``"lineage"``: a dict with the origin, ``parent`` (the parent's trial number, mutants
      and identities only), ``mutation`` (str such as ``"cell3.op: sum -> global_pool"``, or
      ``"random"``, ``"identity"``, ``"enqueued"``), the mutated param, old/new value,
      repairs, tournament members and de-dup retries. Read it with :func:`lineage_record`,
      :func:`parent_of` and :func:`mutation_of`, which also read studies from earlier
      versions (system attr ``"evolution:lineage"``, user attrs ``parent_trial`` and ``mutation``).

    Params the relative search space does not cover (no trial has finished yet, or a
    dynamic space) are inherited from the parent when it has them with the same
    distribution, else drawn at random. All randomness of trial ``n`` comes from an RNG
    derived from ``(seed, n)``, so a seeded study stopped and resumed in a fresh process
    continues exactly as an uninterrupted one.

    Example:

        .. code::

            import optuna
            from evo_fpn.samplers import AgingEvolutionSampler


            def objective(trial):
                x = trial.suggest_int("x", -10, 10)
                kind = trial.suggest_categorical("kind", ["a", "b", "c"])
                return (x - 3) ** 2 + (kind != "b")


            sampler = AgingEvolutionSampler(population_size=20, sample_size=5, seed=0)
            study = optuna.create_study(sampler=sampler)
            study.optimize(objective, n_trials=100)
            print(study.best_params, study.best_trial.user_attrs["lineage"]["mutation"])

    Args:
        population_size: P, the number of most recently finished trials kept (>= 2).
        sample_size: S, the tournament size, ``1 <= S``; draws are with replacement.
        mutation_prob_identity: probability that a child is an unchanged copy of its parent.
        seed: seed of the per-trial RNGs; ``None`` draws one from OS entropy.
        constraints: optional :class:`~evo_fpn.samplers.ChoiceConstraints` hook.
        dedup: re-mutate children equal to an existing trial.
        max_dedup_tries: bound on those re-mutations per child.
        perturb_scale: step of a numeric mutation, as a fraction of the param's range.
        independent_sampler: sampler for params outside the relative search space;
            ``None`` uses the built-in per-trial random draw (resume-exact).
    """

    _CACHE_ATTRS = ("_key_names", "_finished_keys", "_parents")

    def __init__(
        self,
        *,
        population_size: int = 100,
        sample_size: int = 25,
        mutation_prob_identity: float = 0.02,
        seed: int | None = None,
        constraints: ChoiceConstraints | None = None,
        dedup: bool = True,
        max_dedup_tries: int = 10,
        perturb_scale: float = 0.1,
        independent_sampler: BaseSampler | None = None,
    ) -> None:
        if not isinstance(population_size, int) or population_size < 2:
            raise ValueError(f"population_size must be an int >= 2, got {population_size!r}")
        if not isinstance(sample_size, int) or sample_size < 1:
            raise ValueError(f"sample_size must be an int >= 1, got {sample_size!r}")
        if not 0.0 <= float(mutation_prob_identity) < 1.0:
            raise ValueError(f"mutation_prob_identity must be in [0, 1), got {mutation_prob_identity!r}")
        if not isinstance(max_dedup_tries, int) or max_dedup_tries < 0:
            raise ValueError(f"max_dedup_tries must be an int >= 0, got {max_dedup_tries!r}")
        if not float(perturb_scale) > 0.0:
            raise ValueError(f"perturb_scale must be > 0, got {perturb_scale!r}")
        self._population_size = population_size
        self._sample_size = sample_size
        self._p_identity = float(mutation_prob_identity)
        self._dedup = bool(dedup)
        self._max_dedup_tries = max_dedup_tries
        self._perturb_scale = float(perturb_scale)
        self._init_common(seed=seed, constraints=constraints, independent_sampler=independent_sampler)

    # -- caches (rebuilt from the storage whenever needed) ------------------------------
    def _reset_caches(self) -> None:
        super()._reset_caches()
        self._key_names: tuple[str, ...] | None = None
        self._finished_keys: set[tuple[Any, ...]] = set()
        self._parents: dict[int, FrozenTrial] = {}

    def _sync(self, study: Study, key_names: tuple[str, ...]) -> list[FrozenTrial]:
        """Catch up with the storage: new finished trials into the order and the dedup keys."""
        key = self._follow(study)
        trials = compat.trials(study, use_cache=True)
        kept, other = self._log.update(key, trials)
        if key_names != self._key_names:
            self._key_names = key_names
            self._finished_keys = {_key(t.params, key_names) for t in trials if t.state.is_finished()}
        else:
            self._finished_keys.update(_key(t.params, key_names) for _, t in kept)
            self._finished_keys.update(_key(t.params, key_names) for t in other)
        return trials

    # -- Optuna sampler API ---------------------------------------------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        with self._lock:
            self._follow(study)
            space = self._search_space.calculate(study, use_cache=True)
            return {n: d for n, d in space.items() if not d.single()}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        with self._lock:
            if "fixed_params" in trial.system_attrs:  # labelled in before_trial
                return {}
            names, space = ordered_space(search_space, self._constraints)
            if not names:  # nothing finished yet: every param is drawn in sample_independent
                self._write_lineage(study, trial, {"origin": "random", "dedup_retries": 0}, "random")
                return {}
            trials = self._sync(study, tuple(sorted(names)))
            index = TrialIndex(trials)
            rng = trial_rng(self._base_seed, trial.number, "evolution")
            evaluated = self._evaluated_keys(index, trial.number) if self._dedup else set()
            order = self._log.order
            if len(order) < self._population_size:
                child, tries = self._dedup_loop(
                    lambda: sample_joint_random(space, names, self._constraints, rng), evaluated, names
                )
                record = {"origin": "random", "finished": len(order), "dedup_retries": tries}
                self._write_lineage(study, trial, record, "random")
                return child
            population = [index[num] for _, num in order[-self._population_size :]]
            scores = _scores(population, study.directions, [penalty(t) for t in population])
            draws = [int(i) for i in rng.integers(0, len(population), size=self._sample_size)]
            best = min(range(len(draws)), key=lambda i: (scores[draws[i]], i))
            parent = population[draws[best]]
            self._parents[trial._trial_id] = parent
            base = {n: parent.params.get(n, _MISSING) for n in names}
            base = self._fill_missing(base, space, names, rng)
            record: dict[str, Any] = {
                "parent": parent.number,
                "tournament": [population[i].number for i in draws],
                "finished": len(order),
            }
            if rng.random() < self._p_identity:
                repairs = self._repair(base, names, space, 0, _MISSING, rng)
                record.update(origin="identity", repairs=repairs, dedup_retries=0)
                child = dict(base)
                self._write_lineage(study, trial, record, "identity")
                return child
            self._repair(base, names, space, 0, _MISSING, rng)  # a foreign parent may violate constraints
            result: dict[str, Any] = {}

            def make() -> dict[str, Any]:
                child, mutation = self._mutate(base, names, space, rng)
                result["mutation"] = mutation
                return child

            child, tries = self._dedup_loop(make, evaluated, names)
            mutation = result["mutation"]
            record.update(origin="mutation", dedup_retries=tries, **(mutation or {"param": None}))
            self._write_lineage(study, trial, record, _describe(mutation))
            return child

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        with self._lock:
            parent = self._parents.get(trial._trial_id)
            if (
                parent is not None
                and param_name in parent.params
                and parent.distributions.get(param_name) == param_distribution
            ):
                return parent.params[param_name]
            return self._sample_fallback(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if "fixed_params" in trial.system_attrs:  # enqueued: may never reach sample_relative
            self._write_lineage(study, trial, {"origin": "enqueued"}, "enqueued")
        super().before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        with self._lock:
            self._parents.pop(trial._trial_id, None)
        super().after_trial(study, trial, state, values)

    # -- internals ------------------------------------------------------------------------
    def _fill_missing(
        self, base: dict[str, Any], space: Mapping[str, BaseDistribution], names: list[str], rng: np.random.Generator
    ) -> dict[str, Any]:
        if not any(v is _MISSING for v in base.values()):
            return base
        decided: dict[str, Any] = {}
        for n in names:
            if base[n] is _MISSING:
                d = space[n]
                choices = None
                if isinstance(d, CategoricalDistribution):
                    choices = allowed_values(self._constraints, n, d.choices, decided)
                base[n] = sample_uniform(d, rng, choices)
            decided[n] = base[n]
        return base

    def _mutate(
        self, base: Mapping[str, Any], names: list[str], space: Mapping[str, BaseDistribution], rng: np.random.Generator
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Change exactly one decision of ``base``, then repair later ones (see class doc)."""
        candidates: list[tuple[int, list[Any] | None]] = []
        decided: dict[str, Any] = {}
        for i, n in enumerate(names):
            d = space[n]
            if isinstance(d, CategoricalDistribution):
                allowed = allowed_values(self._constraints, n, d.choices, decided)
                others = [c for c in allowed if not _same(c, base[n])]
                if others:
                    candidates.append((i, others))
            else:
                candidates.append((i, None))
            decided[n] = base[n]
        child = dict(base)
        if not candidates:
            return child, None
        i, others = candidates[int(rng.integers(len(candidates)))]
        name, old = names[i], base[names[i]]
        if others is not None:
            new = others[int(rng.integers(len(others)))]
        else:
            new = perturb(space[name], old, rng, self._perturb_scale)
        child[name] = new
        repairs = self._repair(child, names, space, i + 1, old, rng)
        return child, {"param": name, "old": old, "new": new, "repairs": repairs}

    def _repair(
        self,
        child: dict[str, Any],
        names: list[str],
        space: Mapping[str, BaseDistribution],
        start: int,
        freed: Any,
        rng: np.random.Generator,
    ) -> list[list[Any]]:
        """Make decisions ``start..`` valid again in place; return ``[name, old, new]`` repairs."""
        repairs: list[list[Any]] = []
        if self._constraints is None:
            return repairs
        decided = {n: child[n] for n in names[:start]}
        for n in names[start:]:
            d = space[n]
            if isinstance(d, CategoricalDistribution):
                allowed = allowed_values(self._constraints, n, d.choices, decided)
                if not _contains(allowed, child[n]):
                    if freed is not _MISSING and _contains(allowed, freed):
                        new = freed
                    else:
                        new = allowed[int(rng.integers(len(allowed)))]
                    repairs.append([n, child[n], new])
                    child[n] = new
            decided[n] = child[n]
        return repairs

    def _dedup_loop(
        self, make: Callable[[], dict[str, Any]], evaluated: set[tuple[Any, ...]], names: list[str]
    ) -> tuple[dict[str, Any], int]:
        child = make()
        tries = 0
        if not self._dedup:
            return child, 0
        key_names = self._key_names or tuple(sorted(names))
        while tries < self._max_dedup_tries and _key(child, key_names) in evaluated:
            child = make()
            tries += 1
        return child, tries

    def _evaluated_keys(self, index: TrialIndex, current: int) -> set[tuple[Any, ...]]:
        """Param keys of every other trial: finished (cached) plus running/waiting (fresh)."""
        assert self._key_names is not None
        pending = set()
        for n in self._log.unfinished:
            t = index.get(n)
            if t is None or t.number == current:
                continue
            params = t.system_attrs.get("fixed_params", {}) if t.state == TrialState.WAITING else t.params
            pending.add(_key(params, self._key_names))
        if not pending:
            return self._finished_keys
        return self._finished_keys | pending

    def _write_lineage(self, study: Study, trial: FrozenTrial, record: dict[str, Any], text: str) -> None:
        """The whole record in one user attr: one commit per trial on an RDB, not three. The
        mutation text, parent and origin come first: optuna-dashboard shows the first 1024
        characters of the record's JSON."""
        head = {"mutation": text, **{k: record[k] for k in ("parent", "origin") if k in record}}
        compat.set_trial_user_attr(study, trial, LINEAGE_ATTR, {**head, **record})


def lineage_record(
    user_attrs: Mapping[str, Any], system_attrs: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """A trial's lineage record (see :data:`LINEAGE_ATTR`), ``None`` when it has none.

    Studies written before the single attr are read too: the record then comes from the
    system attr ``"evolution:lineage"`` (when ``system_attrs`` is given) and the user attrs
    ``parent_trial`` and ``mutation``, in the same shape.
    """
    rec = user_attrs.get(LINEAGE_ATTR)
    if isinstance(rec, Mapping):
        return dict(rec)
    legacy = (system_attrs or {}).get(LEGACY_LINEAGE_KEY)
    out = dict(legacy) if isinstance(legacy, Mapping) else {}
    if "mutation" in user_attrs:
        out["mutation"] = user_attrs["mutation"]
    if "parent_trial" in user_attrs:
        out["parent"] = user_attrs["parent_trial"]
    return out or None


def parent_of(user_attrs: Mapping[str, Any]) -> int | None:
    """The parent trial number of an evolution child (``None``: random, enqueued, not evolution)."""
    rec = user_attrs.get(LINEAGE_ATTR)
    parent = rec.get("parent") if isinstance(rec, Mapping) else user_attrs.get("parent_trial")
    return parent if isinstance(parent, int) and not isinstance(parent, bool) else None


def mutation_of(user_attrs: Mapping[str, Any], default: str | None = None) -> str | None:
    """The mutation text of a trial (``"cell3.op: sum -> global_pool"``, ``"random"``, ...)."""
    rec = user_attrs.get(LINEAGE_ATTR)
    text = rec.get("mutation") if isinstance(rec, Mapping) else user_attrs.get("mutation")
    return default if text is None else str(text)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _key(params: Mapping[str, Any], names: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(params.get(n, _MISSING) for n in names)


def _describe(mutation: Mapping[str, Any] | None) -> str:
    if mutation is None:
        return "identity (nothing to mutate)"
    text = f"{mutation['param']}: {mutation['old']} -> {mutation['new']}"
    for n, old, new in mutation["repairs"]:
        text += f"; repair {n}: {old} -> {new}"
    return text


def _scores(
    population: Sequence[FrozenTrial],
    directions: Sequence[StudyDirection],
    penalties: Sequence[float] | None = None,
) -> list[tuple[int, float, float]]:
    """Sort keys, lower is better: COMPLETE feasible members by value, or by (non-domination
    rank, -crowding distance) for several objectives; then COMPLETE infeasible ones by their
    total violation (several objectives: the constrained sort ranks them after the feasible);
    then PRUNED by (later step, value at it); then the rest."""
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
    pen = list(penalties) if penalties is not None else [0.0] * len(population)
    scores: list[tuple[int, float, float]] = []
    if len(directions) == 1:
        for t, p in zip(population, pen, strict=True):
            if t.state == TrialState.COMPLETE and t.values is not None:
                scores.append((0, 0.0, float(signs[0] * t.values[0])) if p <= 0 else (1, 0.0, float(p)))
                continue
            last = last_report(t)
            if last is None:
                scores.append((3, 0.0, 0.0))
            else:
                step, value = last
                scores.append((2, -float(step), math.inf if math.isnan(value) else float(signs[0] * value)))
        return scores
    # several objectives: Optuna takes no intermediate reports, so PRUNED members are all equal
    complete = [i for i, t in enumerate(population) if t.state == TrialState.COMPLETE and t.values is not None]
    loss = np.array([population[i].values for i in complete], dtype=float).reshape(len(complete), len(signs)) * signs
    ranks = non_domination_ranks(loss, [pen[i] for i in complete]) if complete else []
    crowding: dict[int, float] = {}
    for r in set(ranks):
        members = [population[i] for i, ri in zip(complete, ranks, strict=True) if ri == r]
        crowding.update(crowding_distances(members))
    rank_of = dict(zip(complete, ranks, strict=True))
    for i, t in enumerate(population):
        if i in rank_of:
            scores.append((0, float(rank_of[i]), -crowding.get(t.number, 0.0)))
        else:
            scores.append((2, 0.0, 0.0))
    return scores
