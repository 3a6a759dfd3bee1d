"""The RL controller's learning state, its in-process checkpoints and the one stored in the study.

:class:`LearnerState` is everything an update changes (policy, Adam, reward statistics, the
update count). :class:`Rewinds` keeps in-process copies of it, so that a trial that shows up
late in the completion order rewinds a few updates instead of replaying all of them.
:class:`StudyCheckpoint` stores it in a study system attr for workers that join later, and
loads it only when it provably equals what a full replay would give.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from optuna.study import Study
from optuna.trial import FrozenTrial

from evo_fpn import compat
from evo_fpn.samplers._common import penalty
from evo_fpn.samplers.rl_policy import Controller
from evo_fpn.samplers.rl_update import new_stats

CHECKPOINT_KEY = "rl:checkpoint"
"""Study system attr prefix (``"rl:checkpoint:<settings digest>"``) of the stored policy checkpoint:
``{"format", "settings", "n_updates", "history", "state"}``, ``state`` the base64 of a
``torch.save`` of the policy, Adam and running-stats state after ``n_updates`` updates, and
``history`` the digest of the finished trials those updates consumed."""
CHECKPOINT_FORMAT = 1

KEEP_CHECKPOINTS = 8
"""In-process checkpoints kept besides the initial policy; an older rewind replays from the start."""

Order = Sequence[tuple[Any, int]]
"""The completion order: ``(sort key, trial number)`` of each finished trial consumed."""


@dataclass
class LearnerState:
    """What the updates change; ``weights`` are the policy's numpy copies for sampling."""

    policy: Controller
    optim: torch.optim.Optimizer
    stats: dict[str, Any] = field(default_factory=new_stats)
    n_updates: int = 0
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def fresh(cls, policy: Controller, *, lr: float) -> LearnerState:
        state = cls(policy=policy, optim=torch.optim.Adam(policy.parameters(), lr=lr))
        state.refresh_weights()
        return state

    def refresh_weights(self) -> None:
        self.weights = self.policy.numpy_weights()

    def digest(self) -> str:
        """SHA-256 of the policy weights: equal policies, equal digests."""
        h = hashlib.sha256()
        for name, tensor in self.policy.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().numpy().tobytes())
        return h.hexdigest()


class Rewinds:
    """In-process checkpoints: the initial state, then one every ``every`` updates (the
    ``keep`` most recent), so a late trial replays from the last one before it."""

    def __init__(self, *, every: int, keep: int = KEEP_CHECKPOINTS) -> None:
        self.every = every
        self.keep = keep
        self._saved: list[tuple[int, dict[str, Any], dict[str, Any], dict[str, Any]]] = []

    def start(self, state: LearnerState) -> None:
        """Forget the old checkpoints; ``state`` is the new start."""
        self._saved = []
        self.save(state)

    def after_update(self, state: LearnerState) -> None:
        if state.n_updates % self.every == 0:
            self.save(state)

    def save(self, state: LearnerState) -> None:
        self._saved.append(
            (
                state.n_updates,
                copy.deepcopy(state.policy.state_dict()),
                copy.deepcopy(state.optim.state_dict()),
                dict(state.stats),
            )
        )
        if len(self._saved) > self.keep + 1:  # keep the start and the most recent ones
            del self._saved[1]

    def rewind(self, state: LearnerState, n_updates: int) -> None:
        """Bring ``state`` back to the newest checkpoint at or before ``n_updates``."""
        while self._saved[-1][0] > n_updates:
            self._saved.pop()
        n, policy_state, optim_state, stats = self._saved[-1]
        state.policy.load_state_dict(policy_state)
        state.optim.load_state_dict(copy.deepcopy(optim_state))
        state.stats = dict(stats)
        state.n_updates = n
        state.refresh_weights()


def settings_digest(settings: Sequence[Any]) -> str:
    """Digest of everything besides the history that the policy depends on (torch: float results)."""
    return hashlib.sha256(repr((CHECKPOINT_FORMAT, *settings, torch.__version__)).encode()).hexdigest()[:16]


class StudyCheckpoint:
    """The learner state stored in the study, for workers that join a long study.

    Stored every ``every`` updates under ``"rl:checkpoint:<settings>"`` (overwritten; skipped
    when another worker already stored as recent a consistent one); loaded only when its
    settings and the digest of the finished trials it covers (numbers, states, values,
    constraint penalties in completion order) match. ``stored``: updates covered by the newest
    checkpoint known to be in the study; ``restored``: ``None`` before a load was tried, ``0``
    when none matched, else the updates loaded.
    """

    def __init__(self, *, settings: str, every: int, batch_size: int, lr: float) -> None:
        self.settings = settings
        self.every = every
        self.batch_size = batch_size
        self.lr = lr
        self.stored = 0
        self.restored: int | None = None

    @property
    def key(self) -> str:
        return f"{CHECKPOINT_KEY}:{self.settings}"

    def history_digest(self, order: Order, get: Callable[[int], FrozenTrial], n_updates: int) -> str:
        """Digest of the finished trials the first ``n_updates`` updates consumed, in order."""
        h = hashlib.sha256()
        for _, num in order[: n_updates * self.batch_size]:
            t = get(num)
            h.update(repr((num, t.state.name, t.values, penalty(t))).encode())
        return h.hexdigest()

    def _record(self, study: Study) -> dict[str, Any] | None:
        rec = compat.study_system_attrs(study).get(self.key)
        return rec if isinstance(rec, dict) else None

    def due(self, n_updates: int) -> bool:
        return bool(self.every) and n_updates >= self.stored + self.every

    def restore(
        self, study: Study, order: Order, get: Callable[[int], FrozenTrial], state: LearnerState
    ) -> LearnerState | None:
        """The study's checkpoint when it matches the settings and the history, else ``None``
        (the caller keeps its fresh state and replays everything)."""
        self.restored = 0
        try:
            rec = self._record(study)
            if rec is None:
                return None
            n = rec.get("n_updates")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n * self.batch_size > len(order):
                return None
            if rec.get("format") != CHECKPOINT_FORMAT or rec.get("settings") != self.settings:
                return None
            if rec.get("history") != self.history_digest(order, get, n):
                return None
            blob = torch.load(io.BytesIO(base64.b64decode(rec["state"], validate=True)), weights_only=True)
            policy = copy.deepcopy(state.policy)
            policy.load_state_dict(blob["policy"])
            optim = torch.optim.Adam(policy.parameters(), lr=self.lr)
            optim.load_state_dict(blob["optim"])
            stats = {k: (None if blob["stats"][k] is None else float(blob["stats"][k])) for k in state.stats}
        except Exception:  # noqa: BLE001 - corrupt, truncated, foreign: the full replay is always right
            return None
        loaded = LearnerState(policy=policy, optim=optim, stats=stats, n_updates=n)
        loaded.refresh_weights()
        self.stored = self.restored = n
        return loaded

    def store(self, study: Study, order: Order, get: Callable[[int], FrozenTrial], state: LearnerState) -> None:
        """Write ``state`` to the study, unless as recent a consistent one is there."""
        n = state.n_updates
        rec = self._record(study)
        m = rec.get("n_updates") if rec is not None else None
        if rec is not None and isinstance(m, int) and m >= n:
            # Another worker stored as recent a one: keep it if it is consistent with what we
            # see, or if it covers trials we do not see finished yet (it is likely the newer).
            if m * self.batch_size > len(order) or rec.get("history") == self.history_digest(order, get, m):
                self.stored = n
                return
        buf = io.BytesIO()
        torch.save({"policy": state.policy.state_dict(), "optim": state.optim.state_dict(), "stats": state.stats}, buf)
        value = {
            "format": CHECKPOINT_FORMAT,
            "settings": self.settings,
            "n_updates": n,
            "history": self.history_digest(order, get, n),
            "state": base64.b64encode(buf.getvalue()).decode("ascii"),
        }
        compat.set_study_system_attr(study, self.key, value)
        self.stored = n
