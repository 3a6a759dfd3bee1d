"""What every task (proxy, supernet, synthetic, a registered one) is to the study above it.

A task turns a spec into metrics and never touches a trial: the study's objective
(:mod:`evo_fpn.study.objective`) is the one writer of a trial's record.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Protocol

from evo_fpn.arch.spec import ArchSpec
from evo_fpn.record import Reporter


class Task(Protocol):
    """What an objective is: prepared once per worker, then ``evaluate(spec, reporter) -> metrics``.

    It returns metrics (at least the study's value names, e.g. ``ap``) and never writes to a
    trial; it reports intermediate values to ``reporter`` and raises ``optuna.TrialPruned``
    when ``reporter.should_prune()`` says so. A task may also have ``costs(spec) -> metrics``
    (parameters, FLOPs; counted without training), which the Objective records first, and
    ``latency(spec, *, warmup, runs) -> metrics`` (``latency_ms``, ``latency_device``), which it
    calls when the study optimises or caps latency, and ``cache_files() -> {kind: path}``, the
    cache files its scores depend on, which the study stores so that every worker uses one build
    (:mod:`evo_fpn.study.caches`)."""

    def prepare(self) -> Any: ...

    def evaluate(self, spec: ArchSpec, reporter: Reporter | None = None) -> dict[str, Any]: ...


def worker_id() -> str:
    """``host:pid`` of this process, written as the ``worker`` user attr."""
    return f"{socket.gethostname()}:{os.getpid()}"
