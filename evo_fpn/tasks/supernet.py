"""One-shot scoring: train a space's shared weights once, then score any architecture in seconds.

NAS-FPN's two ops have no weights, so every architecture of one space (same cell count,
levels, width and repeats) has exactly the same parameters: the input projections, one
3x3 conv + norm per (repeat, cell position), and the head. Only the wiring differs. So the
weights can be shared *exactly*: :class:`SharedNeck` holds them once and wires them as one
architecture at a time (a :class:`~evo_fpn.model.neck.NasFpn` interpreter built on the ``meta``
device whose conv and norm modules are the shared ones), and :func:`train_supernet` trains
them as Single Path One-Shot does (Guo et al. 2019): each step trains one architecture drawn
from the space, uniformly or in FairNAS's rounds (each choice of each decision equally often).
Few-shot NAS (Zhao et al. 2021) is one setting away (``split``): one sub-supernet per choice of
one decision, each copied from the trained one-shot weights and trained further on its part of
the space only, so fewer wirings compete for each copy; a trial is scored by its part's copy.

A trial (:meth:`SupernetTask.evaluate`) wires the shared weights as its spec, restores the
trained state (so no trial depends on the one before), re-estimates the BatchNorm statistics
of that wiring on training batches if asked (as SPOS and DetNAS do; off by default: keeping the
supernet's averages ranked better, ``benchmarks/bench_supernet.py`` lever ``recal0``), and
scores COCO AP on the val split (optionally a fixed subset first, for a pruner). The
supernet is trained once per (proxy configuration, space, supernet settings), on the cached
backbone features, and cached on disk next to them (:func:`evo_fpn.training.cache.load_verified`:
file lock, atomic write, checksum), so every worker on a machine shares one. Whether its
ranking can be trusted is measured, never assumed: ``python -m benchmarks.bench_supernet``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import Tensor

from evo_fpn.arch.space import NasFpnSpace, SpaceConfig
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.errors import TrialFailed, UsageError
from evo_fpn.model.detector import Detector
from evo_fpn.record import BACKBONE_BUILD, Reporter
from evo_fpn.tasks.proxy import ProxyTask
from evo_fpn.tasks.supernet_training import (
    SharedNeck,
    SupernetConfig,
    build_supernet,
    supernet_key,
    supernet_path,
    trained_supernet,
)
from evo_fpn.training.config import ProxyConfig
from evo_fpn.training.evaluate import coco_ap_arrays
from evo_fpn.training.features import FeatureStore
from evo_fpn.training.loop import Inputs, predict_arrays, recalibrate_norms, train_detector

__all__ = ["SupernetConfig", "SupernetTask"]  # the [supernet] table belongs to the objective


class SupernetTask:
    """The ``supernet`` objective: scores an architecture with the shared weights (seconds).

    Example::

        task = SupernetTask(PRESETS["default"], SpaceConfig(), SupernetConfig()).prepare()
        task.evaluate(PUBLISHED_NASFPN)["ap"]

    :meth:`prepare` loads (or, once per machine, trains) the supernet; :meth:`evaluate` never
    writes to a trial (the Objective does) and gives what a proxy trial records: the AP
    breakdown and the costs (counted for the spec as if trained alone).
    """

    def __init__(
        self,
        config: ProxyConfig,
        space: SpaceConfig,
        supernet: SupernetConfig | None = None,
        *,
        device: str | torch.device = "auto",
        progress: bool = True,
        cache_dir: str | Path | None = None,
        store: FeatureStore | None = None,
    ) -> None:
        if config.backbone_mode != "cached":
            raise UsageError("the supernet objective trains on cached backbone features: use backbone_mode cached")
        self.config = config.replace(seeds=1)
        self.space = space
        self.supernet = supernet or SupernetConfig()
        self.proxy = ProxyTask(self.config, device=device, progress=progress, cache_dir=cache_dir, store=store)
        self.store = self.proxy.store
        self.progress = bool(progress)
        self.model: Detector | None = None
        self.meta: dict[str, Any] = {}
        self.checkpoints: tuple[str, ...] = ()
        self._all: dict[str, dict[str, Tensor]] = {}
        self._state: dict[str, Tensor] = {}
        self._shots: dict[str, dict[str, Tensor]] = {}
        self._nas_space = NasFpnSpace(space)
        self._costs: dict[str, dict[str, int]] = {}
        self._subsets: dict[int, Inputs] = {}  # by canonical hash: the Objective counts them too
        split = self.supernet.split
        if split and split not in self._nas_space.distributions:
            names = list(self._nas_space.distributions)
            raise UsageError(
                f"supernet split {split!r} is not a decision of the space; one of {names[0]}, ..., {names[-1]}"
            )

    def key(self) -> str:
        return supernet_key(self.config, self.space, self.supernet)

    def cache_files(self) -> dict[str, Path]:
        """The cache files its scores depend on, by kind: the backbone stage and the supernet."""
        return {"stage": self.store.cache_path(), "supernet": self.cache_path()}

    def cache_path(self) -> Path:
        return supernet_path(self.store, self.config, self.space, self.supernet)

    def prepare(self) -> SupernetTask:
        """Load the dataset, the backbone features and the supernet (training it once if no
        worker on this machine has); idempotent."""
        if self.model is not None:
            return self
        store = self.store.prepare()
        blob = trained_supernet(store, self.config, self.space, self.supernet, progress=self.progress)
        self.meta = dict(blob["meta"])
        self.checkpoints = tuple(blob["checkpoints"])
        self._shots = blob.get("shots", {})
        model = build_supernet(
            self.config, self.space, num_classes=store.num_classes, with_backbone=False, seed=self.supernet.seed
        )
        self.model = model.to(store.device)
        self._all = blob["checkpoints"]
        self.use_checkpoint(self.checkpoints[-1])
        return self

    def shot(self, spec: ArchSpec) -> str | None:
        """The sub-supernet that scores ``spec`` (its choice of the split decision; None: one-shot)."""
        return str(self._nas_space.encode(spec)[self.supernet.split]) if self.supernet.split else None

    def use_checkpoint(self, epochs: str) -> None:
        """Score with the weights after ``epochs`` of the supernet's training (one of
        :attr:`checkpoints`; the last, the fully trained one, is the default)."""
        if epochs not in self._all:
            raise ValueError(f"no checkpoint at {epochs} epochs; have {', '.join(self.checkpoints)}")
        self._state = self._all[epochs]

    @property
    def backbone_build(self) -> str | None:
        return self.store.backbone_build

    def costs(self, spec: ArchSpec | str) -> dict[str, int]:
        """The proxy's counts, remembered for the last few architectures (the Objective asks
        before :meth:`evaluate` does, for the same spec)."""
        if not isinstance(spec, ArchSpec):
            return self.proxy.costs(spec)
        key = spec.canonical_hash()
        if key not in self._costs:
            if len(self._costs) >= 64:
                self._costs.pop(next(iter(self._costs)))
            self._costs[key] = self.proxy.costs(spec)
        return dict(self._costs[key])

    def latency(self, spec: ArchSpec | str, **settings: Any) -> dict[str, Any]:
        """The architecture's latency as the proxy measures it (a property of the network, not of its weights)."""
        return self.proxy.latency(spec, **settings)

    def val_subset(self, images: int) -> Inputs:
        """The first ``images`` val images (0 or more than there are: all of them) with their
        ground truth, built once per size (a fixed subset: the split's order is random)."""
        val = self.store.val
        assert val is not None
        if not images or images >= len(val):
            return val
        if images not in self._subsets:
            ids = set(val.split.image_ids[:images])
            gt = val.split.coco_gt
            sub_gt = {
                **gt,
                "images": [i for i in gt["images"] if i["id"] in ids],
                "annotations": [a for a in gt["annotations"] if a["image_id"] in ids],
            }
            split = dataclasses.replace(
                val.split, image_ids=val.split.image_ids[:images], files=val.split.files[:images],
                sizes=val.split.sizes[:images], boxes=val.split.boxes[:images], labels=val.split.labels[:images],
                coco_gt=sub_gt,
            )  # fmt: skip
            self._subsets[images] = Inputs(
                split=split, scales=val.scales[:images], targets=val.targets[:images],
                images=None if val.images is None else val.images[:images],
                features=None if val.features is None else [f[:images] for f in val.features],
                dataset=val.dataset,
            )  # fmt: skip
        return self._subsets[images]

    def evaluate(self, spec: ArchSpec, reporter: Reporter | None = None) -> dict[str, Any]:
        """Score ``spec`` with the shared weights: restore the trained state, wire, fine-tune and
        re-estimate BatchNorm statistics (if asked), report the AP of the first ``screen_images``
        val images (step 0; ``optuna.TrialPruned`` if the reporter says so), evaluate COCO AP
        (step 1). Raises :class:`TrialFailed` for a spec the supernet cannot wire (another cell
        count or level range)."""
        self.prepare()
        assert self.model is not None and self.store.train is not None and self.store.val is not None
        if isinstance(spec, str) or not isinstance(spec, ArchSpec):
            raise TrialFailed(f"the supernet scores architectures of its space only, not {spec!r}")
        costs = self.costs(spec)
        t0 = time.perf_counter()
        model, neck = self.model, self.model.neck
        assert isinstance(neck, SharedNeck)
        try:
            neck.use(spec)
            shot = self.shot(spec)
        except ValueError as exc:  # SpecError too
            raise TrialFailed(str(exc)) from None
        model.load_state_dict(self._state if shot is None else self._shots[shot])
        steps = self.supernet.finetune_steps
        if steps:
            per_epoch = max(1, len(self.store.train) // self.config.batch_size)
            train_detector(
                model, self.store.train, config=self.config, epochs=steps / per_epoch, device=self.store.device,
                seed=self.config.seed, progress=False, desc="fine-tune",
            )  # fmt: skip
        tf = time.perf_counter()
        recal = self.supernet.recal_batches
        recalibrate_norms(model, self.store.train, batches=recal, config=self.config, device=self.store.device)
        t1 = time.perf_counter()
        screen = self.supernet.screen_images
        if screen and reporter is not None and screen < len(self.store.val):
            val = self.val_subset(screen)
            screened = coco_ap_arrays(val.split.coco_gt, predict_arrays(model, val, device=self.store.device))
            reporter.report(screened["ap"], 0)
            if reporter.should_prune():
                raise optuna.TrialPruned(f"pruned on {screen} val images with AP {screened['ap']:.4f}")
        val = self.val_subset(self.supernet.val_images)
        dets = predict_arrays(model, val, device=self.store.device)
        metrics: dict[str, Any] = coco_ap_arrays(val.split.coco_gt, dets)
        t2 = time.perf_counter()
        metrics.update(costs)
        metrics.update(
            train_seconds=0.0,
            eval_seconds=t2 - t0,
            finetune_seconds=tf - t0,
            recal_seconds=t1 - tf,
            threads=torch.get_num_threads() if self.store.device.type == "cpu" else 0,
        )
        if self.store.backbone_build is not None:
            metrics[BACKBONE_BUILD] = self.store.backbone_build
        if reporter is not None:
            reporter.report(metrics["ap"], 1)
        return metrics
