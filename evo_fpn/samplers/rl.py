"""An RL controller as an Optuna sampler: an LSTM policy trained with PPO or REINFORCE.

The NAS-FPN paper's search strategy (after Zoph & Le): a recurrent policy emits the
categorical decisions one by one, each from its own softmax, and is trained on the reward.
The sampler composes its parts, each in its own module: the policy and sampling from it
(:mod:`~evo_fpn.samplers.rl_policy`), the reward and update rules
(:mod:`~evo_fpn.samplers.rl_update`), the learning state with its in-process and stored
checkpoints (:mod:`~evo_fpn.samplers.rl_state`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial

from evo_fpn import compat
from evo_fpn.samplers._common import TrialIndex, ordered_space, trial_rng
from evo_fpn.samplers.base import StorageBackedSampler
from evo_fpn.samplers.constraints import ChoiceConstraints
from evo_fpn.samplers.rl_policy import (
    SAMPLE_KEY,
    Decisions,
    Encoded,
    deterministic_torch,
    encode,
    new_controller,
    sample_path,
    signature,
)
from evo_fpn.samplers.rl_state import CHECKPOINT_KEY, LearnerState, Rewinds, StudyCheckpoint, settings_digest
from evo_fpn.samplers.rl_update import ALGORITHMS, BatchUpdate, MnasReward, PPOUpdate, ReinforceUpdate, UpdateRule

__all__ = ["CHECKPOINT_KEY", "SAMPLE_KEY", "RLControllerSampler"]


class RLControllerSampler(StorageBackedSampler):
    """A recurrent policy over the categorical decisions, trained on finished trials.

    **Policy.** An LSTM (``hidden_size``) emits the categorical params of the relative search
    space in decision order (the ``constraints`` hook's order, else sorted names); each
    decision has its own softmax head, and the embedding of the chosen value feeds the next
    step. Choices the hook forbids given the earlier decisions are masked out, so every
    sample is valid. int/float params (and params outside the relative space) are not
    decisions: they fall back to ``independent_sampler`` (default: a per-trial seeded uniform
    draw, constraint-aware for categoricals). A space without categorical decisions has no
    policy: ``sample_relative`` returns ``{}`` and every param is drawn independently.

    **Training.** Finished trials are taken in completion order (``datetime_complete``, then
    number) and cut into consecutive batches of ``batch_size``; each full batch is one update:
    PPO's clipped objective (``ppo_epochs`` full-batch Adam steps, clip ``ppo_clip``) or
    REINFORCE (one step), plus ``entropy_weight`` x the policy entropy. Reward = the value
    (negated when minimizing); for a two-objective study (maximise the first, minimise the
    second, e.g. AP and FLOPs) MnasNet's soft reward (Tan et al. 2019) ``value0 * (value1 /
    cost_target) ** cost_weight``: with ``cost_weight`` < 0 (MnasNet: -0.07) a model at the target
    keeps its AP, one twice as costly loses about 5% of it, one half as costly gains 5%.
    Advantage = reward - a moving-average baseline (``baseline_decay``, updated trial by
    trial), divided by a moving RMS of advantages so the objective's scale does not matter.
    PPO's ratio uses the log-probability the sampling worker stored; trials without one
    (enqueued, sampled by another sampler) use the policy's own at update time (ratio 1 at
    the first epoch).

    **Failed, pruned, running.** FAIL trials are left out entirely (often infrastructure, not
    the architecture). A PRUNED trial's early value is not comparable with a final one, so
    its reward is the floor: the lowest finite reward of the COMPLETE trials consumed so far
    (it is skipped while there is none). A COMPLETE trial with an infinite value gets the
    floor too: one infinite reward would turn the baseline, and from it the whole policy,
    into NaN for good. So does a COMPLETE trial that violates its constraints (``Trial.set_constraint``,
    Optuna's convention: values > 0 are violated), which ranks it below every feasible one. RUNNING
    trials are never waited on.

    **Many workers, resume.** The policy is a deterministic function of the study's finished
    trials in completion order: it starts from ``policy_seed`` (the same in every worker,
    independent of ``seed``) and is updated batch by batch, on one CPU thread, in float32.
    Each process catches up with the history once, then updates incrementally; a trial that
    shows up late in the order (clock skew, a slow write) rewinds to a cached checkpoint and
    replays. So that a worker joining a long study does not replay every update (about 23 ms
    each), the policy, Adam and running-stats state is stored in the study every
    ``store_every`` updates (one study system attr, ``"rl:checkpoint:<settings digest>"``,
    overwritten; skipped when another worker already stored as recent a one). A new process
    loads it only when its settings, decision signature and the digest of the finished trials
    it covers (numbers, states, values, constraint penalties in completion order) match what
    the storage says now, then replays the updates after it: the policy is the same as after a
    full replay, bit for bit. A missing, corrupt or mismatched checkpoint means a full replay.
    While a trial runs, its actions, per-decision log-probabilities and the policy version
    are stored in the trial system attr ``"rl:sample"``. Sampling randomness of trial ``n``
    comes from ``(seed, n)``.

    Example:

        .. code::

            import optuna
            from evo_fpn.samplers import RLControllerSampler


            def objective(trial):
                a = trial.suggest_categorical("a", ["x", "y", "z"])
                b = trial.suggest_categorical("b", [1, 2, 3, 4])
                return (a == "z") + b


            study = optuna.create_study(direction="maximize", sampler=RLControllerSampler(seed=0))
            study.optimize(objective, n_trials=100)
            print(study.best_params)

    Args:
        seed: seed of the per-trial sampling RNGs; ``None`` draws one from OS entropy.
        constraints: optional :class:`~evo_fpn.samplers.ChoiceConstraints` hook.
        hidden_size, embedding_size: LSTM width and action-embedding width.
        lr: Adam learning rate.
        batch_size: finished trials per policy update.
        algorithm: ``"ppo"`` or ``"reinforce"``.
        entropy_weight: weight of the entropy bonus.
        baseline_decay: decay of the moving-average reward baseline, in [0, 1).
        ppo_clip: PPO's clip epsilon.
        ppo_epochs: Adam steps per batch for PPO.
        max_grad_norm: gradient-norm clip per step.
        policy_seed: seed of the policy's initial weights (keep it equal in all workers).
        checkpoint_every: keep an in-process checkpoint every this many updates (for rewinds;
            the initial policy and the 8 most recent are kept).
        store_every: store a checkpoint in the study every this many updates, for workers
            that join later (one write per ``store_every x batch_size`` trials: ~0.9 MB of base64
            on the NAS-FPN space at the default widths); ``0``: never store nor load one.
        independent_sampler: sampler for non-decision params; ``None``: built-in random.
        cost_target, cost_weight: the MnasNet reward of two-objective studies (``cost_target``
            is required for them and refused for one objective).
    """

    _CACHE_ATTRS = ("_decisions", "_sig", "_state", "_rewinds", "_checkpoint")

    def __init__(
        self,
        *,
        seed: int | None = None,
        constraints: ChoiceConstraints | None = None,
        hidden_size: int = 64,
        embedding_size: int = 32,
        lr: float = 0.01,
        batch_size: int = 10,
        algorithm: str = "ppo",
        entropy_weight: float = 1e-3,
        baseline_decay: float = 0.9,
        ppo_clip: float = 0.2,
        ppo_epochs: int = 4,
        max_grad_norm: float = 1.0,
        policy_seed: int = 0,
        checkpoint_every: int = 16,
        store_every: int = 50,
        independent_sampler: BaseSampler | None = None,
        cost_target: float | None = None,
        cost_weight: float = -0.07,
    ) -> None:
        self._reward = MnasReward(cost_target=cost_target, cost_weight=cost_weight)
        for name, value in (
            ("hidden_size", hidden_size),
            ("embedding_size", embedding_size),
            ("batch_size", batch_size),
            ("ppo_epochs", ppo_epochs),
            ("checkpoint_every", checkpoint_every),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(store_every, int) or isinstance(store_every, bool) or store_every < 0:
            raise ValueError(f"store_every must be an int >= 0, got {store_every!r}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
        if not float(lr) > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not isinstance(policy_seed, (int, np.integer)):
            raise ValueError(f"policy_seed must be an int, got {policy_seed!r}")
        # PPO's rule is built whatever the algorithm: its settings are checked (and digested) either way
        ppo = PPOUpdate(clip=ppo_clip, epochs=ppo_epochs, entropy_weight=entropy_weight, max_grad_norm=max_grad_norm)
        rule: UpdateRule = ppo
        if algorithm == "reinforce":
            rule = ReinforceUpdate(entropy_weight=entropy_weight, max_grad_norm=max_grad_norm)
        self._ppo_clip, self._ppo_epochs = ppo.clip, ppo_epochs
        self._update = BatchUpdate(rule=rule, reward=self._reward, baseline_decay=baseline_decay)
        self._hidden_size = hidden_size
        self._embedding_size = embedding_size
        self._lr = float(lr)
        self._batch_size = batch_size
        self._algorithm = algorithm
        self._policy_seed = int(policy_seed)
        self._checkpoint_every = checkpoint_every
        self._store_every = store_every
        self._init_common(seed=seed, constraints=constraints, independent_sampler=independent_sampler)

    # -- state rebuilt from the storage ---------------------------------------------------
    def _reset_caches(self) -> None:
        super()._reset_caches()
        self._decisions: list[tuple[str, tuple[Any, ...]]] = []
        self._sig = ""
        self._state: LearnerState | None = None
        self._rewinds = Rewinds(every=self._checkpoint_every)
        self._checkpoint = self._new_checkpoint()

    # -- public helpers ---------------------------------------------------------------------
    def sync(self, study: Study) -> int:
        """Bring the policy up to date with ``study``'s finished trials; return #updates.

        Sampling does this itself; call it to inspect the policy (e.g. :meth:`policy_digest`).
        """
        self._reward.check_directions(study.directions)
        with self._lock:
            space = self._space(study, use_cache=False)  # outside a trial the cache may be stale
            self._sync(study, space, use_cache=False)
            return 0 if self._state is None else self._state.n_updates

    def policy_digest(self) -> str:
        """SHA-256 of the policy weights (``""`` before the first sync): equal policies, equal digests."""
        with self._lock:
            return "" if self._state is None else self._state.digest()

    def decision_probabilities(self) -> dict[str, dict[Any, float]]:
        """Greedy-path marginals: each decision's softmax when earlier ones take their argmax."""
        with self._lock:
            if self._state is None:
                return {}
            _, _, probs, _ = sample_path(self._state.weights, self._decisions, self._constraints, None)
            return {
                name: {c: float(p) for c, p in zip(choices, pr, strict=True)}
                for (name, choices), pr in zip(self._decisions, probs, strict=True)
            }

    def reward(self, t: FrozenTrial, sign: float = 1.0) -> float | None:
        """``t``'s reward (see the class doc), or ``None`` when it has none (not COMPLETE, not
        finite, infeasible, or a non-positive cost)."""
        return self._reward(t, sign)

    # -- Optuna sampler API ---------------------------------------------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._space(study, use_cache=True)

    def _space(self, study: Study, use_cache: bool) -> dict[str, BaseDistribution]:
        with self._lock:
            self._follow(study)
            space = self._search_space.calculate(study, use_cache=use_cache)
            return {n: d for n, d in space.items() if isinstance(d, CategoricalDistribution) and not d.single()}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._reward.check_directions(study.directions)
        if not search_space or "fixed_params" in trial.system_attrs:
            return {}
        with self._lock:
            self._sync(study, search_space)
            if self._state is None:  # no categorical decisions: everything is drawn independently
                return {}
            rng = trial_rng(self._base_seed, trial.number, "rl")
            actions, logps, _, params = sample_path(self._state.weights, self._decisions, self._constraints, rng)
            record = {"sig": self._sig, "version": self._state.n_updates, "actions": actions, "logp": logps}
            compat.set_trial_system_attr(study, trial, SAMPLE_KEY, record)
            return params

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        self._reward.check_directions(study.directions)  # refused here too, as Optuna's single-objective samplers do
        return self._sample_fallback(study, trial, param_name, param_distribution)

    # -- the policy, caught up with the study ---------------------------------------------
    def _new_checkpoint(self) -> StudyCheckpoint:
        """The study checkpoint of the current decisions and settings (none stored or loaded yet)."""
        c = self._constraints
        rule = self._update.rule
        settings = (
            self._sig,
            repr(self._decisions),
            None if c is None else f"{type(c).__module__}.{type(c).__qualname__}",
            self._hidden_size,
            self._embedding_size,
            self._lr,
            self._batch_size,
            self._algorithm,
            rule.entropy_weight,
            self._update.baseline_decay,
            self._ppo_clip,
            self._ppo_epochs,
            rule.max_grad_norm,
            self._policy_seed,
            self._reward.cost_target,
            self._reward.cost_weight,
        )
        return StudyCheckpoint(
            settings=settings_digest(settings), every=self._store_every, batch_size=self._batch_size, lr=self._lr
        )

    def _new_policy(self, decisions: Decisions) -> None:
        self._decisions = list(decisions)
        self._sig = signature(self._decisions)
        policy = new_controller(
            self._decisions, hidden_size=self._hidden_size, embedding_size=self._embedding_size, seed=self._policy_seed
        )
        self._state = LearnerState.fresh(policy, lr=self._lr)
        self._rewinds.start(self._state)
        self._checkpoint = self._new_checkpoint()

    def _encode(self, t: FrozenTrial) -> Encoded | None:
        return encode(t, self._decisions, self._constraints, self._sig)

    def _sync(self, study: Study, search_space: Mapping[str, BaseDistribution], use_cache: bool = True) -> None:
        key = self._follow(study)
        _, space = ordered_space(search_space, self._constraints)
        decisions = [(n, tuple(d.choices)) for n, d in space.items() if isinstance(d, CategoricalDistribution)]
        if decisions != self._decisions or self._state is None:
            if not decisions:  # nothing to decide: no policy (an LSTM over zero steps has no output)
                self._decisions, self._sig, self._state = decisions, signature(decisions), None
                return
            self._new_policy(decisions)
        state = self._state
        assert state is not None
        trials = compat.trials(study, use_cache=use_cache)
        kept, _ = self._log.update(key, trials)
        order = self._log.order
        b = self._batch_size
        if kept:
            first = min(pos for pos, _ in kept)
            if first < state.n_updates * b:
                self._rewinds.rewind(state, first // b)
                self._checkpoint.stored = min(self._checkpoint.stored, state.n_updates)  # it may now be stale
        if (state.n_updates + 1) * b > len(order):
            return
        index = TrialIndex(trials)
        if state.n_updates == 0 and self._checkpoint.restored is None and self._store_every and len(order) >= 2 * b:
            loaded = self._checkpoint.restore(study, order, index.__getitem__, state)  # a fresh policy, long history
            if loaded is not None:
                self._state = state = loaded
                self._rewinds.save(state)
            if (state.n_updates + 1) * b > len(order):
                return
        sign = -1.0 if study.directions[0] == StudyDirection.MINIMIZE and len(study.directions) == 1 else 1.0
        with deterministic_torch():
            while (state.n_updates + 1) * b <= len(order):
                batch = [index[num] for _, num in order[state.n_updates * b : (state.n_updates + 1) * b]]
                self._update(state.policy, state.optim, state.stats, batch, sign, self._encode)
                state.n_updates += 1
                self._rewinds.after_update(state)
            state.refresh_weights()
        if self._checkpoint.due(state.n_updates):
            self._checkpoint.store(study, order, index.__getitem__, state)
