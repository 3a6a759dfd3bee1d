"""The RL controller's policy: an LSTM over the categorical decisions, and sampling from it.

Training scores whole batches of sequences in torch (:meth:`Controller.evaluate`); a trial's
sample runs the same network step by step in numpy (:func:`sample_path`), which is ~10x
faster at batch 1. :func:`encode` turns a finished trial back into the actions it took.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from optuna.trial import FrozenTrial
from torch import nn

from evo_fpn.samplers.constraints import ChoiceConstraints, _contains, allowed_values

SAMPLE_KEY = "rl:sample"
"""Trial system attr: ``{"sig", "version", "actions", "logp"}`` written while the trial runs."""

NEG = -1e9
"""Masked logit: finite, so masked entries give zero (not NaN) gradients."""

Decisions = Sequence[tuple[str, tuple[Any, ...]]]
"""The categorical decisions in decision order: ``(param name, choices)``."""

Encoded = tuple[list[int], list[list[bool]], "float | None"]
"""A finished trial as the policy saw it: action indices, allowed-choice masks, stored log-prob."""


class Controller(nn.Module):
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
        lp = torch.log_softmax(logits.masked_fill(~masks, NEG), dim=-1)
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


def new_controller(decisions: Decisions, *, hidden_size: int, embedding_size: int, seed: int) -> Controller:
    """The initial policy: uniform(-0.1, 0.1) weights from ``seed``, the same in every worker."""
    gen = torch.Generator().manual_seed(seed)
    policy = Controller([len(ch) for _, ch in decisions], hidden_size, embedding_size)
    with torch.no_grad():
        for p in policy.parameters():
            p.uniform_(-0.1, 0.1, generator=gen)
    return policy


def signature(decisions: Decisions) -> str:
    """Short digest of the decisions: a stored sample's log-probs count only under the same ones."""
    return f"{zlib.crc32(repr(list(decisions)).encode()):08x}"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def sample_path(
    weights: Mapping[str, np.ndarray],
    decisions: Decisions,
    constraints: ChoiceConstraints | None,
    rng: np.random.Generator | None,
) -> tuple[list[int], list[float], list[np.ndarray], dict[str, Any]]:
    """Run the policy for one trial in numpy (``rng=None``: take the argmax each step).

    Returns the action indices, their log-probabilities, each step's probabilities and the
    params. Choices the constraints forbid given the earlier decisions get probability 0.
    """
    w = weights
    h = np.zeros(w["w_hh"].shape[1])
    c = np.zeros_like(h)
    x = w["start"]
    actions: list[int] = []
    logps: list[float] = []
    probs: list[np.ndarray] = []
    params: dict[str, Any] = {}
    for t, (name, choices) in enumerate(decisions):
        i, f, g, o = np.split(w["w_ih"] @ x + w["w_hh"] @ h + w["b"], 4)  # torch gate order
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        n = len(choices)
        logits = w["head_w"][t, :n] @ h + w["head_b"][t, :n]
        if constraints is not None:
            allowed = allowed_values(constraints, name, choices, params)
            if len(allowed) < n:
                logits = np.where([_contains(allowed, ch) for ch in choices], logits, NEG)
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


def encode(t: FrozenTrial, decisions: Decisions, constraints: ChoiceConstraints | None, sig: str) -> Encoded | None:
    """A finished trial's actions, masks and stored log-prob; None if it is not a sample
    (a decision missing, a value not among the choices, or outside the constraints)."""
    actions: list[int] = []
    masks: list[list[bool]] = []
    decided: dict[str, Any] = {}
    for name, choices in decisions:
        if name not in t.params:
            return None
        v = t.params[name]
        idx = next((i for i, c in enumerate(choices) if type(c) is type(v) and c == v), None)
        if idx is None:
            return None
        allowed = allowed_values(constraints, name, choices, decided)
        mask = [_contains(allowed, c) for c in choices]
        if not mask[idx]:
            return None  # outside the constraints (another sampler's point): no gradient
        actions.append(idx)
        masks.append(mask)
        decided[name] = v
    rec = t.system_attrs.get(SAMPLE_KEY)
    logp = None
    if isinstance(rec, dict) and rec.get("sig") == sig and rec.get("actions") == actions:
        logp = float(sum(rec["logp"]))
    return actions, masks, logp


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """One CPU thread while the policy runs: float results then do not depend on threading."""
    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n != 1:
            torch.set_num_threads(n)
