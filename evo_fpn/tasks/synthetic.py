"""A cheap, deterministic stand-in for the proxy task with the same interface.

``prepare``/``evaluate``, intermediate reports and pruning, costs and a latency model, at no
training cost: for tests and benchmarks of the runner's mechanics (workers, kills, resume),
where training detectors would only add minutes. Select it with ``--objective synthetic``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any

import optuna

from evo_fpn import record
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.record import Reporter


class SyntheticFailure(RuntimeError):
    """The synthetic task's stand-in for ``evo_fpn.errors.TrialFailed`` (no torch import needed)."""


class SyntheticTask:
    """A deterministic function of the architecture that behaves like a training run.

    The value rewards structure a real detector tends to like (attention merges, cells that
    build on other cells, work at fine levels) plus a fixed per-architecture offset from the
    canonical hash, so samplers have a landscape to climb and equal networks score equally.
    ``sleep`` seconds are spent over ``steps`` intermediate reports (pruners see them);
    ``fail_fraction`` of architectures (chosen by hash) raise :class:`SyntheticFailure`.

    Costs (``with_costs=True``, which the runner sets for cost-aware studies only, so a plain
    synthetic study never imports torch) are the no-compute counts of the RetinaNet in
    :data:`COST_MODEL`; its ``latency_ms`` is a deterministic stand-in, not a measurement: total
    FLOPs at 20 GFLOP/s plus 0.05 ms per cell (``latency_device`` says so).
    """

    SETTINGS = ("sleep", "steps", "noise", "fail_fraction")
    COST_MODEL: dict[str, Any] = {"backbone": "resnet10", "width": 64, "repeats": 1, "image_size": 128}
    """The proxy settings the synthetic costs are counted under (10 classes, as the digits)."""

    def __init__(
        self,
        *,
        sleep: float = 0.0,
        steps: int = 3,
        noise: float = 0.05,
        fail_fraction: float = 0.0,
        with_costs: bool = False,
    ) -> None:
        if not isinstance(sleep, int | float) or sleep < 0:
            raise ValueError(f"sleep must be >= 0 seconds, got {sleep!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if not 0 <= noise <= 0.5:
            raise ValueError(f"noise must be in [0, 0.5], got {noise!r}")
        if not 0 <= fail_fraction < 1:
            raise ValueError(f"fail_fraction must be in [0, 1), got {fail_fraction!r}")
        self.sleep, self.steps, self.noise, self.fail_fraction = float(sleep), steps, float(noise), float(fail_fraction)
        self.with_costs = bool(with_costs)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, with_costs: bool = False) -> SyntheticTask:
        unknown = sorted(set(settings) - set(cls.SETTINGS))
        if unknown:
            raise ValueError(f"unknown [synthetic] setting {unknown[0]!r}; known: {', '.join(cls.SETTINGS)}")
        return cls(**dict(settings), with_costs=with_costs)

    def costs(self, spec: ArchSpec) -> dict[str, int]:
        """Counted costs under :data:`COST_MODEL` (``{}`` without ``with_costs``)."""
        if not self.with_costs:
            return {}
        from evo_fpn.model.cost import detector_costs
        from evo_fpn.training.config import ProxyConfig

        return detector_costs(ProxyConfig(**self.COST_MODEL), spec, num_classes=10)

    def latency(self, spec: ArchSpec, *, warmup: int = 0, runs: int = 1) -> dict[str, Any]:
        """The deterministic latency stand-in (see the class doc); ``warmup``/``runs`` are unused."""
        from evo_fpn.model.cost import detector_costs
        from evo_fpn.training.config import ProxyConfig

        flops = detector_costs(ProxyConfig(**self.COST_MODEL), spec, num_classes=10)["total_flops"]
        ms = 1e3 * flops / 20e9 + 0.05 * len(spec.cells)
        return {"latency_ms": ms, "latency_std_ms": 0.0, record.LATENCY_DEVICE: "synthetic (FLOPs model, not measured)"}

    def fingerprint(self) -> str:
        """What changes results (not ``sleep``)."""
        body = f"synthetic-v1|{self.steps}|{self.noise}|{self.fail_fraction}"
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def prepare(self) -> None:
        """Nothing to build; present for interface parity with the proxy task."""

    def score(self, spec: ArchSpec) -> float:
        h = spec.canonical_hash()
        n = len(spec.cells)
        n_in = spec.num_inputs
        attention = sum(c.op == "global_pool" for c in spec.cells) / n
        deep = sum(sum(x >= n_in for x in c.inputs) for c in spec.cells) / (2 * n)
        fine = sum(c.level <= spec.min_level + 1 for c in spec.cells) / n
        offset = int(h[:8], 16) / 0xFFFFFFFF - 0.5
        raw = 0.15 + 0.12 * attention + 0.15 * deep + 0.06 * fine + 2 * self.noise * offset
        return float(min(max(raw, 0.0), 1.0))

    def evaluate(self, spec: ArchSpec, reporter: Reporter | None = None) -> dict[str, Any]:
        h = spec.canonical_hash()
        if self.fail_fraction and int(h[8:16], 16) / 0xFFFFFFFF < self.fail_fraction:
            raise SyntheticFailure("synthetic failure (loss became NaN)")
        ap = self.score(spec)
        t0 = time.perf_counter()
        for step in range(self.steps):
            if self.sleep:
                time.sleep(self.sleep / self.steps)
            if reporter is not None:
                reporter.report(ap * math.sqrt((step + 1) / self.steps), step)
                if reporter.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step}")
        metrics: dict[str, Any] = {
            "ap": ap,
            "ap50": min(1.0, ap * 1.6),
            "ap75": ap * 0.9,
            "ap_small": ap * 0.5,
            "ap_medium": ap * 1.05,
            "ap_large": min(1.0, ap * 1.3),
            "train_seconds": time.perf_counter() - t0,
            "eval_seconds": 0.0,
        }
        return metrics
