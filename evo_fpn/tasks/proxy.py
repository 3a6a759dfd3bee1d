"""The proxy objective: a spec goes in, COCO AP comes out, fast enough to run thousands of times.

How it is fast (measured; see ``benchmarks/bench_proxy.py``): the backbone is trained *once
per proxy configuration* and its C3..C5 maps cached (:mod:`evo_fpn.training.features`); every trial
then trains only its own neck and a fresh RetinaNet head on the cached maps
(:mod:`evo_fpn.training.loop`). ``backbone_mode="end_to_end"`` trains everything per trial instead
(the paper's proxy; what ``python -m evo_fpn.train`` uses).

:meth:`ProxyTask.evaluate` takes a spec and a reporter (intermediate AP for pruning; an
``optuna.Trial`` or anything with ``report``/``should_prune``, or none) and returns metrics;
it never writes to a trial (:mod:`evo_fpn.record` and the Objective do).

Optimisation settings dominate short budgets. A GroupNorm head (torchvision's ``norm_layer``)
learns from the first epoch where a plain one stalls, and AdamW (lr 1e-3, weight decay 0.05,
linear warm-up, cosine decay) trains the from-scratch backbone far faster than SGD: measured on
the default preset's 24-epoch backbone stage, val AP 0.265 against 0.110 with SGD at lr 0.05
(AdamW at lr 2e-3 was behind 1e-3 at epoch 8: 0.069 vs 0.077).
"""

from __future__ import annotations

import multiprocessing.connection
import os
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import numpy as np
import optuna
import torch
from tqdm.auto import tqdm

from evo_fpn.arch.spec import ArchSpec
from evo_fpn.errors import TrialFailed, UsageError
from evo_fpn.model.cost import detector_costs
from evo_fpn.model.detector import Detector
from evo_fpn.record import AP_METRICS, AP_SEEDS, BACKBONE_BUILD, Reporter
from evo_fpn.training.config import DATASET_FIELDS, PRESETS, ProxyConfig
from evo_fpn.training.evaluate import coco_ap
from evo_fpn.training.features import FeatureStore
from evo_fpn.training.loop import predict, recalibrate_norms, resolve_device, total_steps, train_detector


class ProxyTask:
    """Trains and scores one architecture under a :class:`ProxyConfig` (see the module docstring).

    Example::

        task = ProxyTask(PRESETS["quick"])
        task.prepare()                      # dataset + backbone cache, once
        metrics = task.evaluate(PUBLISHED_NASFPN)
        metrics["ap"]

    The CPU thread count is the process's (``torch.set_num_threads``, set by the entry points'
    ``--threads``), not the task's.
    """

    def __init__(
        self,
        config: ProxyConfig | str = "default",
        *,
        device: str | torch.device = "auto",
        progress: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        store: FeatureStore | None = None,
    ) -> None:
        if isinstance(config, str):
            if config not in PRESETS:
                raise UsageError(f"unknown proxy preset {config!r}; choose one of {', '.join(PRESETS)}")
            config = PRESETS[config]
        if not isinstance(config, ProxyConfig):
            raise TypeError(f"config must be a ProxyConfig or a preset name, got {type(config).__name__}")
        self.config = config
        if store is not None:  # e.g. trials of other training settings on the same features
            same = ("backbone_mode", "image_size", "resize", "backbone", *DATASET_FIELDS)
            differ = [k for k in same if getattr(store.config, k) != getattr(config, k)]
            if differ:
                raise ValueError(f"store holds other inputs than this config's ({', '.join(differ)} differ)")
        self.store = store or FeatureStore(config, device=device, progress=progress, cache_dir=cache_dir)
        self.device = resolve_device(device) if store is None else store.device
        self.progress = bool(progress)

    def prepare(self) -> ProxyTask:
        """Build/load the dataset and (cached mode) the trained backbone and its features."""
        self.store.prepare()
        return self

    @property
    def num_classes(self) -> int:
        return self.store.prepare().num_classes

    @property
    def backbone_build(self) -> str | None:
        """Which build of the backbone stage this worker's features come from (cached mode,
        after :meth:`prepare`): :func:`evo_fpn.training.features.state_digest` of the frozen backbone."""
        return self.store.backbone_build

    def cache_files(self) -> dict[str, Path]:
        """The cache files its scores depend on, by kind: the backbone stage (cached mode)."""
        return {"stage": self.store.cache_path()} if self.store.cached else {}

    def cache_meta(self) -> dict[str, Any]:
        """Timing facts of the cached backbone stage (empty in end-to-end mode)."""
        return self.store.cache_meta()

    # -- one trial -------------------------------------------------------------------------
    def build(self, spec: ArchSpec | str, seed: int | None = None) -> Detector:
        """The detector a trial trains: neck + head (cached mode) or the full model, seeded
        (``seed`` defaults to the config's)."""
        store = self.store.prepare()
        torch.manual_seed(self.config.seed if seed is None else seed)
        model = self.config.build_detector(spec, num_classes=store.num_classes, with_backbone=not store.cached)
        return model.to(self.device)

    def costs(self, spec: ArchSpec | str) -> dict[str, int]:
        """Neck and total parameters and per-image FLOPs at the proxy image size, counted on
        PyTorch's ``meta`` device (milliseconds, no training), so that every trial has them,
        a pruned or failed one included (the Objective records them before training)."""
        store = self.store.prepare()
        backbone = None
        if store.cached:
            assert store.backbone_state is not None and store.backbone_flops is not None
            params = sum(v.numel() for k, v in store.backbone_state.items() if _is_param(k))
            backbone = (params, store.backbone_flops)
        return detector_costs(self.config, spec, num_classes=store.num_classes, backbone=backbone)

    def latency(self, spec: ArchSpec | str, *, warmup: int = 5, runs: int = 20) -> dict[str, Any]:
        """Forward latency of the whole detector (backbone included, also in cached mode) at
        batch 1 and the proxy image size on this task's device (:func:`evo_fpn.model.latency.measure`;
        untrained weights: latency does not depend on their values)."""
        from evo_fpn.model.latency import measure

        store = self.store.prepare()
        torch.manual_seed(self.config.seed)
        model = self.config.build_detector(spec, num_classes=store.num_classes, with_backbone=True).to(self.device)
        return measure(model, self.config.image_size, device=self.device, warmup=warmup, runs=runs)

    def evaluate(self, spec: ArchSpec | str, reporter: Reporter | None = None) -> dict[str, Any]:
        """Train ``spec`` under this proxy and return its metrics (AP breakdown, costs, timing).

        With ``seeds`` > 1 it trains once per seed and every AP metric is the mean over seeds
        (``ap_seeds`` lists the APs). On a CPU the seeds train side by side in their own
        processes (:meth:`seed_processes`), so two seeds on 2 cores take about the wall time of
        one. Reports intermediate AP to ``reporter`` (seed k's step s at step k * steps + s, so
        a pruner compares like with like; the last report is the mean) and raises
        ``optuna.TrialPruned`` when it says so; raises :class:`TrialFailed` on a non-finite loss.
        """
        store = self.store.prepare()
        assert store.train is not None
        cfg = self.config
        costs = self.costs(spec)
        first = self.build(spec)
        total = total_steps(len(store.train), cfg.batch_size, cfg.epochs)
        procs = self.seed_processes()
        if procs == 1:
            runs = []
            for k in range(cfg.seeds):
                model = first if k == 0 else self.build(spec, cfg.seed + k)
                runs.append(self.train_seed(model, k, total, reporter))
        else:
            runs = self._train_side_by_side(spec, procs, total, reporter)
        finals = [run["final"] for run in runs]
        metrics: dict[str, Any] = {k: _mean_or_none([f[k] for f in finals]) for k in AP_METRICS}
        metrics.update(costs)
        metrics.update(
            train_seconds=float(sum(run["train_seconds"] for run in runs)),
            eval_seconds=float(sum(run["eval_seconds"] for run in runs)),
            images_per_s=float(np.mean([run["images_per_s"] for run in runs])),
            threads=int(runs[0]["threads"]),
        )
        if cfg.seeds > 1:
            metrics[AP_SEEDS] = [float(f["ap"]) for f in finals]
        if store.backbone_build is not None:  # which features: another build of the stage trains others
            metrics[BACKBONE_BUILD] = store.backbone_build
        if reporter is not None:
            reporter.report(metrics["ap"], cfg.seeds * total)
        history = sorted(point for run in runs for point in run["history"])
        metrics.update(first_loss=runs[0]["first_loss"], last_loss=runs[-1]["last_loss"], history=history)
        return metrics

    def fit(self, spec: ArchSpec | str) -> tuple[Detector, dict[str, Any]]:
        """Train one model of ``spec`` (seed ``config.seed``) in this process; return it with its
        metrics (for ``python -m evo_fpn.train``, which saves it)."""
        if self.config.seeds != 1:
            raise ValueError("fit trains one model: use a config with seeds = 1")
        store = self.store.prepare()
        assert store.train is not None
        costs = self.costs(spec)
        model = self.build(spec)
        total = total_steps(len(store.train), self.config.batch_size, self.config.epochs)
        run = self.train_seed(model, 0, total, None)
        return model, {**run["final"], **costs, **{k: run[k] for k in ("train_seconds", "images_per_s", "history")}}

    def seed_processes(self) -> int:
        """How many processes train a trial's seeds at once: on a CPU one per seed, at most one
        per torch thread (each gets an equal share of the threads); 1 (in this process) on a GPU
        or with one seed. A seed's AP depends on its thread count, not on how many run at once:
        two seeds side by side with 1 thread each score exactly as two 1-thread runs in turn."""
        if self.device.type != "cpu" or self.config.seeds == 1:
            return 1
        return min(self.config.seeds, torch.get_num_threads())

    def _train_side_by_side(
        self, spec: ArchSpec | str, procs: int, total: int, reporter: Reporter | None
    ) -> list[dict[str, Any]]:
        """Train the seeds in ``procs`` seed processes (:mod:`evo_fpn.tasks.seed_process`); relay their
        progress and reports to this process's bar and ``reporter`` (which alone decides pruning,
        and then stops them all). Each talks through its own pipe, which also tells when it died."""
        cfg = self.config
        threads = max(1, torch.get_num_threads() // procs)
        seeds_of: dict[Connection, list[int]] = {}
        children: dict[Connection, subprocess.Popen[bytes]] = {}
        bar = tqdm(total=cfg.seeds * total, desc=f"train {cfg.seeds} seeds", disable=not self.progress, leave=False)
        runs: dict[int, dict[str, Any]] = {}
        try:
            for i in range(procs):
                ks = list(range(i, cfg.seeds, procs))
                child, conn = _start_seed_process((cfg, self.store.cache_dir, spec, ks, total, threads))
                seeds_of[conn], children[conn] = ks, child
            live = list(children)
            while len(runs) < cfg.seeds:
                for conn in cast(list[Connection], multiprocessing.connection.wait(live)):
                    try:
                        kind, k, payload = conn.recv()
                    except EOFError:
                        live.remove(conn)
                        if not all(k in runs for k in seeds_of[conn]):
                            code = children[conn].wait()
                            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                            raise RuntimeError(f"a seed process {how} (out of memory?)") from None
                        continue
                    if kind == "steps":
                        bar.update(payload)
                    elif kind == "report":
                        step, ap = payload
                        if reporter is not None:
                            _report(reporter, ap, step)
                    elif kind == "done":
                        runs[k] = payload
                    elif kind == "failed":
                        raise TrialFailed(payload)
                    else:
                        raise RuntimeError(f"seed {cfg.seed + k} crashed: {payload}")
        finally:
            bar.close()
            for conn, child in children.items():
                if child.poll() is None:
                    child.kill()
                child.wait()
                conn.close()
        return [runs[k] for k in range(cfg.seeds)]

    def train_seed(
        self,
        model: Detector,
        k: int,
        total: int,
        reporter: Reporter | None,
        on_step: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Train ``model`` (built with seed ``seed + k``) for ``total`` steps and evaluate it; its
        reports go to ``reporter`` at ``k * total + step`` (all but the trial's very last, which
        :meth:`evaluate` reports as the mean)."""
        train, val = self.store.train, self.store.val
        assert train is not None and val is not None
        cfg = self.config
        seed, offset, last = cfg.seed + k, k * total, k == cfg.seeds - 1
        eval_points = sorted({max(1, round(total * (k + 1) / cfg.reports)) for k in range(cfg.reports)})
        history: list[tuple[int, float]] = []
        eval_seconds = [0.0]
        final: dict[str, float | None] = {}

        def on_eval(step: int, total_steps: int) -> None:
            t0 = time.perf_counter()
            if cfg.norm_recal_batches:
                recalibrate_norms(model, train, batches=cfg.norm_recal_batches, config=cfg, device=self.device)
            metrics = coco_ap(val.split.coco_gt, predict(model, val, device=self.device, progress=self.progress))
            eval_seconds[0] += time.perf_counter() - t0
            history.append((offset + step, metrics["ap"]))
            final.clear()
            final.update(metrics)
            if reporter is not None and not (last and step == total_steps):
                _report(reporter, metrics["ap"], offset + step)

        facts = train_detector(
            model,
            train,
            config=cfg,
            epochs=cfg.epochs,
            device=self.device,
            seed=seed,
            progress=self.progress,
            eval_points=eval_points,
            on_eval=on_eval,
            on_step=on_step,
            desc="train" if cfg.seeds == 1 else f"train seed {seed}",
        )
        threads = torch.get_num_threads() if self.device.type == "cpu" else 0
        return {**facts, "final": final, "history": history, "eval_seconds": eval_seconds[0], "threads": threads}


def _mean_or_none(values: list[float | None]) -> float | None:
    """The seeds' mean of one AP metric; ``None`` where the validation set has no objects of
    that size (then every seed has ``None``: they share the validation set)."""
    return None if any(v is None for v in values) else float(np.mean(values))


def _report(reporter: Reporter, ap: float, step: int) -> None:
    """Report intermediate AP; stop the trial (``optuna.TrialPruned``) when the reporter says so."""
    reporter.report(ap, step)
    if reporter.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step} with AP {ap:.4f}")


def _start_seed_process(args: tuple[Any, ...]) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start ``python -m evo_fpn.tasks.seed_process``, hand it ``args``; return it and its message pipe."""
    here = str(Path(__file__).resolve().parents[2])  # the folder holding evo_fpn/: importable even when not installed
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    child = subprocess.Popen(
        [sys.executable, "-m", "evo_fpn.tasks.seed_process"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert child.stdin is not None and child.stdout is not None
    inbox = Connection(os.dup(child.stdin.fileno()), readable=False)
    child.stdin.close()
    inbox.send(args)
    inbox.close()
    messages = Connection(os.dup(child.stdout.fileno()), writable=False)
    child.stdout.close()
    return child, messages


def _is_param(key: str) -> bool:
    return not key.endswith(("running_mean", "running_var", "num_batches_tracked"))


__all__ = ["PRESETS", "ProxyConfig", "ProxyTask", "TrialFailed"]
