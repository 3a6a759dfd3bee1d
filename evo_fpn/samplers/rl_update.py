"""How the RL controller learns from a batch of finished trials: reward, advantage, update rule.

:class:`MnasReward` turns a trial into a reward, :class:`BatchUpdate` turns a batch of rewards
into normalised advantages (running baseline and scale) and hands them to an update rule,
:class:`PPOUpdate` or :class:`ReinforceUpdate`. All of it is deterministic on one CPU thread,
so every worker that replays the same trials ends with the same policy, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from evo_fpn.samplers._common import penalty
from evo_fpn.samplers.rl_policy import Controller, Encoded

ALGORITHMS = ("ppo", "reinforce")


def new_stats() -> dict[str, Any]:
    """Running statistics of the rewards (stored with the checkpoint, in this form):
    ``baseline`` (moving average), ``scale2`` (moving mean square of advantages), ``floor``
    (lowest finite reward of the COMPLETE trials consumed so far)."""
    return {"baseline": None, "scale2": None, "floor": None}


class MnasReward:
    """A trial's reward: its value (negated when minimising), or for two objectives (maximise,
    minimise) MnasNet's soft reward ``value0 * (value1 / cost_target) ** cost_weight``."""

    def __init__(self, *, cost_target: float | None, cost_weight: float) -> None:
        if cost_target is not None and (isinstance(cost_target, bool) or not float(cost_target) > 0):
            raise ValueError(f"cost_target must be > 0, got {cost_target!r}")
        if not math.isfinite(float(cost_weight)):
            raise ValueError(f"cost_weight must be a finite number, got {cost_weight!r}")
        self.cost_target = None if cost_target is None else float(cost_target)
        self.cost_weight = float(cost_weight)

    def check_directions(self, directions: Sequence[StudyDirection]) -> None:
        """One objective without ``cost_target``, or two (maximise, minimise) with it."""
        d = directions
        if len(d) == 1 and self.cost_target is None:
            return
        mnas = (StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE)
        if len(d) == 2 and self.cost_target is not None and tuple(d) == mnas:
            return
        if len(d) == 1:
            raise ValueError("cost_target is for two-objective studies (its MnasNet reward): drop it for one objective")
        raise ValueError(
            f"RLControllerSampler scores one objective, or two (maximise, minimise) through its MnasNet reward with "
            f"cost_target set; this study has {len(d)} in directions {[x.name.lower() for x in d]}"
        )

    def __call__(self, t: FrozenTrial, sign: float = 1.0) -> float | None:
        """``t``'s reward, or ``None`` when it has none (not COMPLETE, not finite, infeasible,
        or a non-positive cost)."""
        if t.state != TrialState.COMPLETE or not t.values or not all(math.isfinite(v) for v in t.values):
            return None
        if penalty(t) > 0:
            return None
        if len(t.values) == 1:
            return sign * float(t.values[0])
        assert self.cost_target is not None
        value, cost = float(t.values[0]), float(t.values[1])
        if cost <= 0:
            return None
        return value * (cost / self.cost_target) ** self.cost_weight


class UpdateRule:
    """Full-batch Adam steps on ``-objective - entropy_weight * entropy``, gradients clipped."""

    steps = 1

    def __init__(self, *, entropy_weight: float, max_grad_norm: float) -> None:
        if not float(entropy_weight) >= 0:
            raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight!r}")
        if not float(max_grad_norm) > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm!r}")
        self.entropy_weight = float(entropy_weight)
        self.max_grad_norm = float(max_grad_norm)

    def objective(self, logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(
        self,
        policy: Controller,
        optim: torch.optim.Optimizer,
        actions: torch.Tensor,
        masks: torch.Tensor,
        old: torch.Tensor,
        adv: torch.Tensor,
    ) -> None:
        """Update ``policy`` in place from sequences ``actions`` (B, T) under ``masks`` (B, T, K),
        their sampling log-probs ``old`` and normalised advantages ``adv`` (B,)."""
        params = list(policy.parameters())
        for _ in range(self.steps):
            logp, ent = policy.evaluate(actions, masks)
            loss = -self.objective(logp, old, adv) - self.entropy_weight * ent.mean()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, self.max_grad_norm)
            optim.step()


class ReinforceUpdate(UpdateRule):
    """REINFORCE: one step on the mean of advantage x log-probability."""

    def objective(self, logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        return (adv * logp).mean()


class PPOUpdate(UpdateRule):
    """PPO's clipped surrogate objective, ``epochs`` steps per batch, ratio clipped to 1 +- ``clip``."""

    def __init__(self, *, clip: float, epochs: int, entropy_weight: float, max_grad_norm: float) -> None:
        super().__init__(entropy_weight=entropy_weight, max_grad_norm=max_grad_norm)
        if not 0.0 < float(clip) < 1.0:
            raise ValueError(f"ppo_clip must be in (0, 1), got {clip!r}")
        self.clip = float(clip)
        self.steps = epochs

    def objective(self, logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        ratio = torch.exp(logp - old)
        clipped = torch.clamp(ratio, 1 - self.clip, 1 + self.clip)
        return torch.minimum(ratio * adv, clipped * adv).mean()


class BatchUpdate:
    """One policy update from one batch of finished trials.

    Rewards come from ``reward``; a PRUNED trial, or a COMPLETE one without a reward (infinite
    value, infeasible), gets the floor (skipped while there is none); FAIL trials and trials
    :func:`~evo_fpn.samplers.rl_policy.encode` cannot read are left out. Advantage = reward -
    a moving-average baseline (``baseline_decay``, updated trial by trial), divided by a moving
    RMS of advantages so the objective's scale does not matter. Trials without a stored
    log-prob use the policy's own at update time.
    """

    def __init__(self, *, rule: UpdateRule, reward: MnasReward, baseline_decay: float) -> None:
        if not 0.0 <= float(baseline_decay) < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay!r}")
        self.rule = rule
        self.reward = reward
        self.baseline_decay = float(baseline_decay)

    def __call__(
        self,
        policy: Controller,
        optim: torch.optim.Optimizer,
        stats: dict[str, Any],
        batch: Sequence[FrozenTrial],
        sign: float,
        encode: Callable[[FrozenTrial], Encoded | None],
    ) -> None:
        """Update ``policy``, ``optim`` and ``stats`` in place (``sign``: -1 to minimise one objective)."""
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
            enc = encode(t)
            if enc is not None:
                rows.append((enc, reward))
        if not rows:
            return
        adv = self._advantages(stats, [r for _, r in rows])
        if adv is None:
            return
        actions = torch.tensor([enc[0] for enc, _ in rows], dtype=torch.long)
        steps, k = len(rows[0][0][1]), max(len(m) for m in rows[0][0][1])
        masks = torch.zeros(len(rows), steps, k, dtype=torch.bool)
        for r, (enc, _) in enumerate(rows):
            for t, m in enumerate(enc[1]):
                masks[r, t, : len(m)] = torch.tensor(m)
        with torch.no_grad():
            current, _ = policy.evaluate(actions, masks)
        old = torch.tensor(
            [enc[2] if enc[2] is not None else float(current[i]) for i, (enc, _) in enumerate(rows)],
            dtype=torch.float32,
        )
        self.rule.apply(policy, optim, actions, masks, old, adv)

    def _advantages(self, stats: dict[str, Any], rewards: list[float]) -> torch.Tensor | None:
        """Normalised advantages, updating the baseline and scale in ``stats``; ``None`` when
        the scale is still ~0 (nothing to learn from yet)."""
        if stats["baseline"] is None:
            stats["baseline"] = float(np.mean(rewards))
        advantages = []
        decay = self.baseline_decay
        for r in rewards:
            advantages.append(r - stats["baseline"])
            stats["baseline"] = decay * stats["baseline"] + (1 - decay) * r
        sq = float(np.mean(np.square(advantages)))
        stats["scale2"] = sq if stats["scale2"] is None else decay * stats["scale2"] + (1 - decay) * sq
        scale = float(np.sqrt(stats["scale2"]))
        if scale <= 1e-12:
            return None
        return torch.tensor(advantages, dtype=torch.float32) / scale
