"""An RL controller as an Optuna sampler: an LSTM policy trained with PPO or REINFORCE.

The NAS-FPN paper's search strategy (after Zoph & Le): a recurrent policy emits the
categorical decisions one by one, each from its own softmax, and is trained on the reward.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import io
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from evo_fpn.samplers._common import (
    CompletionLog,
    StorageBackedSampler,
    ordered_space,
    penalty,
    sample_uniform,
    study_key,
    trial_rng,
)
from evo_fpn.samplers.constraints import ChoiceConstraints, _contains, allowed_values

SAMPLE_KEY = "rl:sample"
"""Trial system attr: ``{"sig", "version", "actions", "logp"}`` written while the trial runs."""

CHECKPOINT_KEY = "rl:checkpoint"
"""Study system attr prefix (``"rl:checkpoint:<settings digest>"``) of the stored policy checkpoint:
``{"format", "settings", "n_updates", "history", "state"}``, ``state`` the base64 of a
``torch.save`` of the policy, Adam and running-stats state after ``n_updates`` updates, and
``history`` the digest of the finished trials those updates consumed."""
_CHECKPOINT_FORMAT = 1

_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
_ALGORITHMS = ("ppo", "reinforce")
_KEEP_CHECKPOINTS = 8  # besides the initial policy; an older rewind replays from the start
_NEG = -1e9  # masked logit: finite, so masked entries give zero (not NaN) gradients


class _Controller(nn.Module):
    """LSTM policy: step t reads the embedding of action t-1 and emits decision t's logits.

    Decisions have different numbers of choices; heads and embeddings are padded to the
    largest (``K``) so a whole batch of sequences is scored with one fused LSTM call.
    """

    def __init__(self, sizes: Sequence[int], hidden_size: int, embedding_size: int) -> None:
        super().__init__()
        steps, k = len(sizes), max(sizes)
        self.start = nn.Parameter(torch.zeros(embedding_size))
        self.embed = nn.Parameter(torch.zeros(steps, k, embedding_size))
        self.lstm = nn.LSTM(embedding_size, hidden_size, batch_first=True)
        self.head_w = nn.Parameter(torch.zeros(steps, k, hidden_size))
        self.head_b = nn.Parameter(torch.zeros(steps, k))
        valid = torch.zeros(steps, k, dtype=torch.bool)
        for t, n in enumerate(sizes):
            valid[t, :n] = True
        self.register_buffer("valid", valid, persistent=False)

    def evaluate(self, actions: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log-probability and entropy of action sequences (B, T) under masks (B, T, K)."""
        batch, steps = actions.shape
        prev = self.embed[torch.arange(steps - 1)[None, :], actions[:, :-1]]  # (B, T-1, E)
        inputs = torch.cat([self.start.expand(batch, 1, -1), prev], dim=1)
        out, _ = self.lstm(inputs)  # (B, T, H)
        logits = torch.einsum("bth,tkh->btk", out, self.head_w) + self.head_b
        masks = masks & self.valid
        lp = torch.log_softmax(logits.masked_fill(~masks, _NEG), dim=-1)
        logp = lp.gather(2, actions[..., None]).squeeze(-1).sum(1)
        ent = -torch.where(masks, lp.exp() * lp, torch.zeros_like(lp)).sum((1, 2))
        return logp, ent

    def numpy_weights(self) -> dict[str, np.ndarray]:
        """Float64 copies for the per-trial sampling path (numpy is ~10x faster at batch 1)."""
        return {
            "start": self.start.detach().double().numpy().copy(),
            "embed": self.embed.detach().double().numpy().copy(),
            "w_ih": self.lstm.weight_ih_l0.detach().double().numpy().copy(),
            "w_hh": self.lstm.weight_hh_l0.detach().double().numpy().copy(),
            "b": (self.lstm.bias_ih_l0 + self.lstm.bias_hh_l0).detach().double().numpy().copy(),
            "head_w": self.head_w.detach().double().numpy().copy(),
            "head_b": self.head_b.detach().double().numpy().copy(),
        }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@contextlib.contextmanager
def _deterministic_torch() -> Iterator[None]:
    """One CPU thread while the policy runs: float results then do not depend on threading."""
    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n != 1:
            torch.set_num_threads(n)


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
            that join later (one write of ~0.5 MB per ``store_every x batch_size`` trials);
            ``0``: never store nor load one.
        independent_sampler: sampler for non-decision params; ``None``: built-in random.
        cost_target, cost_weight: the MnasNet reward of two-objective studies (``cost_target``
            is required for them and refused for one objective).
    """

    _CACHE_ATTRS = (
        "_study_key",
        "_search_space",
        "_log",
        "_decisions",
        "_sig",
        "_policy",
        "_np",
        "_optim",
        "_stats",
        "_n_updates",
        "_checkpoints",
        "_stored",
        "_restored",
    )

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
        if cost_target is not None and (isinstance(cost_target, bool) or not float(cost_target) > 0):
            raise ValueError(f"cost_target must be > 0, got {cost_target!r}")
        if not math.isfinite(float(cost_weight)):
            raise ValueError(f"cost_weight must be a finite number, got {cost_weight!r}")
        self._cost_target = None if cost_target is None else float(cost_target)
        self._cost_weight = float(cost_weight)
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
        if algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(_ALGORITHMS)}, got {algorithm!r}")
        if not float(lr) > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not float(entropy_weight) >= 0:
            raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight!r}")
        if not 0.0 <= float(baseline_decay) < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay!r}")
        if not 0.0 < float(ppo_clip) < 1.0:
            raise ValueError(f"ppo_clip must be in (0, 1), got {ppo_clip!r}")
        if not float(max_grad_norm) > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm!r}")
        if not isinstance(policy_seed, (int, np.integer)):
            raise ValueError(f"policy_seed must be an int, got {policy_seed!r}")
        self._hidden_size = hidden_size
        self._embedding_size = embedding_size
        self._lr = float(lr)
        self._batch_size = batch_size
        self._algorithm = algorithm
        self._entropy_weight = float(entropy_weight)
        self._baseline_decay = float(baseline_decay)
        self._ppo_clip = float(ppo_clip)
        self._ppo_epochs = ppo_epochs
        self._max_grad_norm = float(max_grad_norm)
        self._policy_seed = int(policy_seed)
        self._checkpoint_every = checkpoint_every
        self._store_every = store_every
        self._init_common(seed=seed, constraints=constraints, independent_sampler=independent_sampler)

    # -- state rebuilt from the storage ---------------------------------------------------
    def _reset_caches(self) -> None:
        self._study_key: Any = None
        self._search_space = IntersectionSearchSpace(include_pruned=True)
        self._log = CompletionLog(_STATES)
        self._decisions: list[tuple[str, tuple[Any, ...]]] = []
        self._sig = ""
        self._policy: _Controller | None = None
        self._np: dict[str, np.ndarray] = {}
        self._optim: torch.optim.Optimizer | None = None
        self._stats: dict[str, Any] = {}
        self._n_updates = 0
        self._checkpoints: list[tuple[int, dict[str, Any], dict[str, Any], dict[str, Any]]] = []
        self._stored = 0  # updates covered by the newest checkpoint known to be in the study
        self._restored: int | None = None  # updates loaded from the study's checkpoint (None: none loaded)

    # -- public helpers ---------------------------------------------------------------------
    def sync(self, study: Study) -> int:
        """Bring the policy up to date with ``study``'s finished trials; return #updates.

        Sampling does this itself; call it to inspect the policy (e.g. :meth:`policy_digest`).
        """
        self._check_directions(study)
        with self._lock:
            space = self._space(study, use_cache=False)  # outside a trial the cache may be stale
            self._sync(study, space, use_cache=False)
            return self._n_updates

    def policy_digest(self) -> str:
        """SHA-256 of the policy weights (``""`` before the first sync): equal policies, equal digests."""
        with self._lock:
            if self._policy is None:
                return ""
            h = hashlib.sha256()
            for name, tensor in self._policy.state_dict().items():
                h.update(name.encode())
                h.update(tensor.detach().cpu().numpy().tobytes())
            return h.hexdigest()

    def decision_probabilities(self) -> dict[str, dict[Any, float]]:
        """Greedy-path marginals: each decision's softmax when earlier ones take their argmax."""
        with self._lock:
            if self._policy is None:
                return {}
            _, _, probs, _ = self._sample_path(None)
            return {
                name: {c: float(p) for c, p in zip(choices, pr, strict=True)}
                for (name, choices), pr in zip(self._decisions, probs, strict=True)
            }

    # -- Optuna sampler API ---------------------------------------------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._space(study, use_cache=True)

    def _space(self, study: Study, use_cache: bool) -> dict[str, BaseDistribution]:
        with self._lock:
            if study_key(study) != self._study_key:
                self._reset_caches()
                self._study_key = study_key(study)
            space = self._search_space.calculate(study, use_cache=use_cache)
            return {n: d for n, d in space.items() if isinstance(d, CategoricalDistribution) and not d.single()}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._check_directions(study)
        if not search_space or "fixed_params" in trial.system_attrs:
            return {}
        with self._lock:
            self._sync(study, search_space)
            if self._policy is None:  # no categorical decisions: everything is drawn independently
                return {}
            rng = trial_rng(self._base_seed, trial.number, "rl")
            actions, logps, _, params = self._sample_path(rng)
            record = {"sig": self._sig, "version": self._n_updates, "actions": actions, "logp": logps}
            study._storage.set_trial_system_attr(trial._trial_id, SAMPLE_KEY, record)
            return params

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        self._check_directions(study)  # refused here too, as Optuna's single-objective samplers do
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

    def _check_directions(self, study: Study) -> None:
        """One objective without ``cost_target``, or two (maximise, minimise) with it."""
        d = study.directions
        if len(d) == 1 and self._cost_target is None:
            return
        mnas = (StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE)
        if len(d) == 2 and self._cost_target is not None and tuple(d) == mnas:
            return
        if len(d) == 1:
            raise ValueError("cost_target is for two-objective studies (its MnasNet reward): drop it for one objective")
        raise ValueError(
            f"RLControllerSampler scores one objective, or two (maximise, minimise) through its MnasNet reward with "
            f"cost_target set; this study has {len(d)} in directions {[x.name.lower() for x in d]}"
        )

    def reward(self, t: FrozenTrial, sign: float = 1.0) -> float | None:
        """``t``'s reward (see the class doc), or ``None`` when it has none (not COMPLETE, not
        finite, infeasible, or a non-positive cost)."""
        if t.state != TrialState.COMPLETE or not t.values or not all(math.isfinite(v) for v in t.values):
            return None
        if penalty(t) > 0:
            return None
        if len(t.values) == 1:
            return sign * float(t.values[0])
        assert self._cost_target is not None
        value, cost = float(t.values[0]), float(t.values[1])
        if cost <= 0:
            return None
        return value * (cost / self._cost_target) ** self._cost_weight

    # -- policy -----------------------------------------------------------------------------
    def _sample_path(
        self, rng: np.random.Generator | None
    ) -> tuple[list[int], list[float], list[np.ndarray], dict[str, Any]]:
        """Run the policy for one trial in numpy (``rng=None``: take the argmax each step)."""
        w = self._np
        h = np.zeros(w["w_hh"].shape[1])
        c = np.zeros_like(h)
        x = w["start"]
        actions: list[int] = []
        logps: list[float] = []
        probs: list[np.ndarray] = []
        params: dict[str, Any] = {}
        for t, (name, choices) in enumerate(self._decisions):
            i, f, g, o = np.split(w["w_ih"] @ x + w["w_hh"] @ h + w["b"], 4)  # torch gate order
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
            n = len(choices)
            logits = w["head_w"][t, :n] @ h + w["head_b"][t, :n]
            if self._constraints is not None:
                allowed = allowed_values(self._constraints, name, choices, params)
                if len(allowed) < n:
                    logits = np.where([_contains(allowed, ch) for ch in choices], logits, _NEG)
            z = np.exp(logits - logits.max())
            total = z.sum()
            if rng is None:
                a = int(np.argmax(z))
            else:
                a = min(int(np.searchsorted(np.cumsum(z), rng.random() * total, side="right")), n - 1)
            actions.append(a)
            logps.append(float(np.log(z[a] / total)))
            probs.append(z / total)
            params[name] = choices[a]
            x = w["embed"][t, a]
        return actions, logps, probs, params

    def _new_policy(self) -> None:
        sizes = [len(ch) for _, ch in self._decisions]
        gen = torch.Generator().manual_seed(self._policy_seed)
        policy = _Controller(sizes, self._hidden_size, self._embedding_size)
        with torch.no_grad():
            for p in policy.parameters():
                p.uniform_(-0.1, 0.1, generator=gen)
        self._policy = policy
        self._np = policy.numpy_weights()
        self._optim = torch.optim.Adam(policy.parameters(), lr=self._lr)
        self._stats = {"baseline": None, "scale2": None, "floor": None}
        self._n_updates = 0
        self._checkpoints = []
        self._save_checkpoint()
        self._stored = 0
        self._restored = None

    def _save_checkpoint(self) -> None:
        assert self._policy is not None and self._optim is not None
        self._checkpoints.append(
            (
                self._n_updates,
                copy.deepcopy(self._policy.state_dict()),
                copy.deepcopy(self._optim.state_dict()),
                dict(self._stats),
            )
        )
        if len(self._checkpoints) > _KEEP_CHECKPOINTS + 1:  # keep the start and the most recent ones
            del self._checkpoints[1]

    def _rewind(self, n_updates: int) -> None:
        while self._checkpoints[-1][0] > n_updates:
            self._checkpoints.pop()
        n, policy_state, optim_state, stats = self._checkpoints[-1]
        assert self._policy is not None and self._optim is not None
        self._policy.load_state_dict(policy_state)
        self._optim.load_state_dict(copy.deepcopy(optim_state))
        self._stats = dict(stats)
        self._n_updates = n
        self._np = self._policy.numpy_weights()

    def _sync(self, study: Study, search_space: Mapping[str, BaseDistribution], use_cache: bool = True) -> None:
        key = study_key(study)
        if key != self._study_key:
            self._reset_caches()
            self._study_key = key
        names, space = ordered_space(search_space, self._constraints)
        decisions = [(n, tuple(d.choices)) for n, d in space.items() if isinstance(d, CategoricalDistribution)]
        if decisions != self._decisions or self._policy is None:
            self._decisions = decisions
            self._sig = f"{zlib.crc32(repr(decisions).encode()):08x}"
            if not decisions:  # nothing to decide: no policy (an LSTM over zero steps has no output)
                self._policy, self._np, self._optim, self._n_updates, self._checkpoints = None, {}, None, 0, []
                return
            self._new_policy()
        trials = study._get_trials(deepcopy=False, use_cache=use_cache)
        kept, _ = self._log.update(key, trials)
        order = self._log.order
        if kept:
            first = min(pos for pos, _ in kept)
            if first < self._n_updates * self._batch_size:
                self._rewind(first // self._batch_size)
                self._stored = min(self._stored, self._n_updates)  # the stored one may now be stale
        b = self._batch_size
        if (self._n_updates + 1) * b > len(order):
            return
        by_number = _getter(trials)
        if self._n_updates == 0 and self._restored is None and self._store_every and len(order) >= 2 * b:
            self._restore(study, order, by_number)  # a fresh policy behind a long history: try the stored one
            if (self._n_updates + 1) * b > len(order):
                return
        sign = -1.0 if study.directions[0] == StudyDirection.MINIMIZE and len(study.directions) == 1 else 1.0
        with _deterministic_torch():
            while (self._n_updates + 1) * b <= len(order):
                batch = [by_number(num) for _, num in order[self._n_updates * b : (self._n_updates + 1) * b]]
                self._update(batch, sign)
                self._n_updates += 1
                if self._n_updates % self._checkpoint_every == 0:
                    self._save_checkpoint()
            self._np = self._policy.numpy_weights()
        if self._store_every and self._n_updates >= self._stored + self._store_every:
            self._store(study, order, by_number)

    # -- checkpoints in the study (for workers that join later) ---------------------------
    def _settings_digest(self) -> str:
        """Everything besides the history that the policy depends on (torch: float results)."""
        c = self._constraints
        settings = (
            _CHECKPOINT_FORMAT,
            self._sig,
            repr(self._decisions),
            None if c is None else f"{type(c).__module__}.{type(c).__qualname__}",
            self._hidden_size,
            self._embedding_size,
            self._lr,
            self._batch_size,
            self._algorithm,
            self._entropy_weight,
            self._baseline_decay,
            self._ppo_clip,
            self._ppo_epochs,
            self._max_grad_norm,
            self._policy_seed,
            self._cost_target,
            self._cost_weight,
            torch.__version__,
        )
        return hashlib.sha256(repr(settings).encode()).hexdigest()[:16]

    def _history_digest(self, order: Sequence[tuple[Any, int]], by_number: Any, n_updates: int) -> str:
        """Digest of the finished trials the first ``n_updates`` updates consumed, in order."""
        h = hashlib.sha256()
        for _, num in order[: n_updates * self._batch_size]:
            t = by_number(num)
            h.update(repr((num, t.state.name, t.values, penalty(t))).encode())
        return h.hexdigest()

    def _stored_checkpoint(self, study: Study) -> dict[str, Any] | None:
        rec = study._storage.get_study_system_attrs(study._study_id).get(f"{CHECKPOINT_KEY}:{self._settings_digest()}")
        return rec if isinstance(rec, dict) else None

    def _restore(self, study: Study, order: Sequence[tuple[Any, int]], by_number: Any) -> None:
        """Load the study's checkpoint when it matches the settings and the history; else keep
        the fresh policy (a full replay follows)."""
        self._restored = 0
        try:
            rec = self._stored_checkpoint(study)
            if rec is None:
                return
            n = rec.get("n_updates")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n * self._batch_size > len(order):
                return
            if rec.get("format") != _CHECKPOINT_FORMAT or rec.get("settings") != self._settings_digest():
                return
            if rec.get("history") != self._history_digest(order, by_number, n):
                return
            state = torch.load(io.BytesIO(base64.b64decode(rec["state"], validate=True)), weights_only=True)
            policy = copy.deepcopy(self._policy)
            assert policy is not None
            policy.load_state_dict(state["policy"])
            optim = torch.optim.Adam(policy.parameters(), lr=self._lr)
            optim.load_state_dict(state["optim"])
            stats = {k: (None if state["stats"][k] is None else float(state["stats"][k])) for k in self._stats}
        except Exception:  # noqa: BLE001 - corrupt, truncated, foreign: the full replay is always right
            return
        self._policy, self._optim, self._stats = policy, optim, stats
        self._n_updates = n
        self._np = policy.numpy_weights()
        self._save_checkpoint()
        self._stored = self._restored = n

    def _store(self, study: Study, order: Sequence[tuple[Any, int]], by_number: Any) -> None:
        """Write the current state to the study, unless as recent a consistent one is there."""
        assert self._policy is not None and self._optim is not None
        n = self._n_updates
        key = f"{CHECKPOINT_KEY}:{self._settings_digest()}"
        rec = self._stored_checkpoint(study)
        m = rec.get("n_updates") if rec is not None else None
        if isinstance(m, int) and m >= n:
            # Another worker stored as recent a one: keep it if it is consistent with what we
            # see, or if it covers trials we do not see finished yet (it is likely the newer).
            if m * self._batch_size > len(order) or rec.get("history") == self._history_digest(order, by_number, m):
                self._stored = n
                return
        buf = io.BytesIO()
        torch.save({"policy": self._policy.state_dict(), "optim": self._optim.state_dict(), "stats": self._stats}, buf)
        value = {
            "format": _CHECKPOINT_FORMAT,
            "settings": self._settings_digest(),
            "n_updates": n,
            "history": self._history_digest(order, by_number, n),
            "state": base64.b64encode(buf.getvalue()).decode("ascii"),
        }
        study._storage.set_study_system_attr(study._study_id, key, value)
        self._stored = n

    def _encode(self, t: FrozenTrial) -> tuple[list[int], list[list[bool]], float | None] | None:
        """A finished trial's actions, masks and stored log-prob; None if it is not a sample."""
        actions: list[int] = []
        masks: list[list[bool]] = []
        decided: dict[str, Any] = {}
        for name, choices in self._decisions:
            if name not in t.params:
                return None
            v = t.params[name]
            idx = next((i for i, c in enumerate(choices) if type(c) is type(v) and c == v), None)
            if idx is None:
                return None
            allowed = allowed_values(self._constraints, name, choices, decided)
            mask = [_contains(allowed, c) for c in choices]
            if not mask[idx]:
                return None  # outside the constraints (another sampler's point): no gradient
            actions.append(idx)
            masks.append(mask)
            decided[name] = v
        rec = t.system_attrs.get(SAMPLE_KEY)
        logp = None
        if isinstance(rec, dict) and rec.get("sig") == self._sig and rec.get("actions") == actions:
            logp = float(sum(rec["logp"]))
        return actions, masks, logp

    def _update(self, batch: Sequence[FrozenTrial], sign: float) -> None:
        assert self._policy is not None and self._optim is not None
        stats = self._stats
        own = [self.reward(t, sign) for t in batch]
        completes = [r for r in own if r is not None]
        if completes:
            low = min(completes)
            stats["floor"] = low if stats["floor"] is None else min(stats["floor"], low)
        rows = []
        for t, r in zip(batch, own, strict=True):
            if r is not None:
                reward = r
            elif t.state in (TrialState.COMPLETE, TrialState.PRUNED) and stats["floor"] is not None:
                reward = float(stats["floor"])
            else:
                continue
            enc = self._encode(t)
            if enc is not None:
                rows.append((enc, reward))
        if not rows:
            return
        rewards = [r for _, r in rows]
        if stats["baseline"] is None:
            stats["baseline"] = float(np.mean(rewards))
        advantages = []
        decay = self._baseline_decay
        for r in rewards:
            advantages.append(r - stats["baseline"])
            stats["baseline"] = decay * stats["baseline"] + (1 - decay) * r
        sq = float(np.mean(np.square(advantages)))
        stats["scale2"] = sq if stats["scale2"] is None else decay * stats["scale2"] + (1 - decay) * sq
        scale = float(np.sqrt(stats["scale2"]))
        if scale <= 1e-12:
            return
        adv = torch.tensor(advantages, dtype=torch.float32) / scale
        actions = torch.tensor([enc[0] for enc, _ in rows], dtype=torch.long)
        k = max(len(ch) for _, ch in self._decisions)
        masks = torch.zeros(len(rows), len(self._decisions), k, dtype=torch.bool)
        for r, (enc, _) in enumerate(rows):
            for t, m in enumerate(enc[1]):
                masks[r, t, : len(m)] = torch.tensor(m)
        with torch.no_grad():
            current, _ = self._policy.evaluate(actions, masks)
        old = torch.tensor(
            [enc[2] if enc[2] is not None else float(current[i]) for i, (enc, _) in enumerate(rows)],
            dtype=torch.float32,
        )
        steps = self._ppo_epochs if self._algorithm == "ppo" else 1
        params = list(self._policy.parameters())
        for _ in range(steps):
            logp, ent = self._policy.evaluate(actions, masks)
            if self._algorithm == "ppo":
                ratio = torch.exp(logp - old)
                clipped = torch.clamp(ratio, 1 - self._ppo_clip, 1 + self._ppo_clip)
                objective = torch.minimum(ratio * adv, clipped * adv).mean()
            else:
                objective = (adv * logp).mean()
            loss = -objective - self._entropy_weight * ent.mean()
            self._optim.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, self._max_grad_norm)
            self._optim.step()


def _getter(trials: Sequence[FrozenTrial]) -> Any:
    if not trials or trials[-1].number == len(trials) - 1:
        return lambda n: trials[n]
    by_number = {t.number: t for t in trials}
    return by_number.__getitem__
