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
of that wiring on training batches (as SPOS and DetNAS do; GroupNorm cells need none), and
scores COCO AP on the val split. The supernet is trained once per (proxy configuration,
space, supernet settings), on the cached backbone features, and cached on disk next to them
(:func:`evo_fpn.training.cache.load_verified`: file lock, atomic write, checksum), so every worker on a machine
shares one. Whether its ranking can be trusted is measured, never assumed:
``python -m benchmarks.bench_supernet``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from evo_fpn.arch.space import NasFpnSpace, SpaceConfig
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.errors import TrialFailed, UsageError
from evo_fpn.model.detector import Detector, neck_norm_layer
from evo_fpn.model.neck import NasFpn, NormFactory
from evo_fpn.record import BACKBONE_BUILD, Reporter
from evo_fpn.tasks.base import worker_id
from evo_fpn.tasks.proxy import ProxyTask
from evo_fpn.training.cache import load_verified
from evo_fpn.training.config import ProxyConfig
from evo_fpn.training.evaluate import coco_ap
from evo_fpn.training.features import FeatureStore
from evo_fpn.training.loop import predict, recalibrate_norms, total_steps, train_detector

SUPERNET_FORMAT_VERSION = 1
SAMPLING = ("uniform", "fair")


@dataclass(frozen=True)
class SupernetConfig:
    """How the shared weights are trained and how a trial is scored (the ``[supernet]`` table).

    ``epochs`` over the cached training features (a proxy trial trains 16); ``sampling``:
    ``uniform`` (every decision uniform each step, SPOS) or ``fair`` (each decision cycles
    through its choices in shuffled rounds, FairNAS); ``recal_batches``: training batches that
    re-estimate a trial's BatchNorm statistics (0: keep the supernet's running averages);
    ``checkpoints``: also keep the weights after this many evenly spaced fractions of the
    training (for the benchmark's curve of fidelity against training length);
    ``finetune_steps``: optimiser steps that train a trial's wiring alone, starting from the
    shared weights, before it is scored (0: none; each step costs about what a proxy trial's does);
    ``split``: a decision of the space (e.g. ``cell0.op``) that splits it into one sub-supernet
    per choice (few-shot NAS; "": one-shot), each trained ``split_epochs`` more from the one-shot
    supernet of the same settings (itself trained once and cached). The two split fields leave
    the identity (:meth:`to_dict`) of a one-shot supernet as it was without them.
    """

    epochs: float = 48.0
    sampling: str = "uniform"
    recal_batches: int = 20
    seed: int = 0
    checkpoints: int = 3
    finetune_steps: int = 0
    split: str = ""
    split_epochs: float = 8.0

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}, got {self.sampling!r}")
        if self.recal_batches < 0:
            raise ValueError(f"recal_batches must be >= 0, got {self.recal_batches}")
        if not 1 <= self.checkpoints <= 10:
            raise ValueError(f"checkpoints must lie in 1..10, got {self.checkpoints}")
        if self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0, got {self.finetune_steps}")
        if not self.split_epochs > 0:
            raise ValueError(f"split_epochs must be > 0, got {self.split_epochs}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.split:  # one-shot: fingerprints and cache keys as before few-shot existed
            d.pop("split")
            d.pop("split_epochs")
        return d

    def one_shot(self) -> SupernetConfig:
        """The one-shot supernet a few-shot one starts from (itself, if it is one)."""
        return self.replace(split="", split_epochs=SupernetConfig.split_epochs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SupernetConfig:
        """A config from a (partial) ``[supernet]`` table; bad fields raise :class:`UsageError`."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise UsageError(f"unknown supernet setting {unknown[0]!r}; known: {', '.join(names)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"bad [supernet] settings: {exc}") from None

    def replace(self, **changes: Any) -> SupernetConfig:
        return dataclasses.replace(self, **changes)

    def training(self) -> dict[str, Any]:
        """The fields the trained weights depend on (the scoring settings ``recal_batches`` and
        ``finetune_steps`` do not retrain them)."""
        d = self.to_dict()
        for scoring in ("recal_batches", "finetune_steps"):
            d.pop(scoring)
        return d


class SharedNeck(nn.Module):
    """The shared weights of a space's NAS-FPN necks, wired as one architecture at a time.

    ``weights`` (a :class:`NasFpn` of any spec of the space) owns every parameter and buffer;
    :meth:`use` builds the interpreter of another spec on the ``meta`` device and points its
    projections and its cells' convs and norms at the owned modules, so gradients, running
    statistics and ``train()``/``eval()`` all reach the one set of weights. Interpreters are
    kept in a small cache, outside the module tree (no duplicate state dict entries).
    """

    def __init__(self, weights: NasFpn, norm_layer: NormFactory | None, cache_size: int = 64) -> None:
        super().__init__()
        self.weights = weights
        self.out_channels = weights.out_channels
        self.repeats = weights.repeats
        self.levels = tuple(weights.spec.levels)
        self._norm_layer = norm_layer
        self._cache_size = cache_size
        self._wired: OrderedDict[str, NasFpn] = OrderedDict()
        object.__setattr__(self, "_active", weights)  # not a submodule: the weights are registered once

    @property
    def spec(self) -> ArchSpec:
        """The architecture the weights are wired as now."""
        return self._active.spec

    def mismatch(self, spec: ArchSpec) -> str | None:
        """Why ``spec`` cannot be wired with these weights (``None``: it can)."""
        own = self.weights.spec
        if (spec.min_level, spec.max_level) != (own.min_level, own.max_level):
            return f"levels P{spec.min_level}-P{spec.max_level}, the supernet's are P{own.min_level}-P{own.max_level}"
        if len(spec.cells) != len(own.cells):
            return f"{len(spec.cells)} cells, the supernet has {len(own.cells)}"
        return None

    def use(self, spec: ArchSpec) -> SharedNeck:
        """Wire the shared weights as ``spec`` (``ValueError`` if it is not of this space)."""
        key = spec.to_json()
        net = self._wired.get(key)
        if net is None:
            why = self.mismatch(spec)
            if why is not None:
                raise ValueError(f"this supernet cannot score the architecture: it has {why}")
            with torch.device("meta"):
                net = NasFpn(
                    spec=spec,
                    in_channels=self.weights.in_channels,
                    channels=self.out_channels,
                    repeats=self.repeats,
                    norm_layer=self._norm_layer,
                )
            net.projections = self.weights.projections
            for stage, owner in zip(net.stages, self.weights.stages, strict=True):
                for cell, shared in zip(stage.cells, owner.cells, strict=True):  # type: ignore[call-overload]
                    cell.conv, cell.norm = shared.conv, shared.norm
            self._wired[key] = net
            if len(self._wired) > self._cache_size:
                self._wired.popitem(last=False)
        self._wired.move_to_end(key)
        object.__setattr__(self, "_active", net)
        return self

    def forward(self, features: Any) -> OrderedDict[str, Tensor]:
        return self._active(features)


def spec_sampler(
    space: NasFpnSpace, sampling: str, rng: random.Random, fixed: Mapping[str, Any] | None = None
) -> Callable[[], ArchSpec]:
    """Draws the architecture of each training step: ``uniform`` (SPOS) or ``fair`` (each
    decision's choices once per shuffled round, FairNAS; the constraint repair of
    :meth:`NasFpnSpace.decode` then moves a few of them). ``fixed`` holds decisions at one
    choice (a few-shot sub-supernet's part of the space); a draw that the repair moves out of
    the part is drawn again."""
    fixed = dict(fixed or {})
    rounds: dict[str, list[Any]] = {name: [] for name in space.distributions}

    def params() -> dict[str, Any]:
        if sampling == "uniform":  # as NasFpnSpace.sample
            return {name: rng.choice(d.choices) for name, d in space.distributions.items()}
        out = {}
        for name, dist in space.distributions.items():
            if not rounds[name]:
                rounds[name] = list(dist.choices)
                rng.shuffle(rounds[name])
            out[name] = rounds[name].pop()
        return out

    def draw() -> ArchSpec:
        for _ in range(1000):
            spec = space.decode({**params(), **fixed})
            if not fixed or all(space.encode(spec)[k] == v for k, v in fixed.items()):
                return spec
        raise ValueError(f"no architecture of the space keeps {fixed} through the constraint repair")

    return draw


def build_supernet(
    config: ProxyConfig, space: SpaceConfig, *, num_classes: int, with_backbone: bool, seed: int
) -> Detector:
    """The RetinaNet whose neck is the space's :class:`SharedNeck` (seeded initialisation)."""
    template = NasFpnSpace(space).sample(random.Random(0))
    torch.manual_seed(seed)
    model = config.build_detector(template, num_classes=num_classes, with_backbone=with_backbone)
    weights = model.neck
    assert isinstance(weights, NasFpn)
    model.retina.backbone = SharedNeck(weights, neck_norm_layer(template, config.neck_norm, config.fpn_norm))
    return model


def train_supernet(
    store: FeatureStore,
    config: ProxyConfig,
    space: SpaceConfig,
    supernet: SupernetConfig,
    *,
    progress: bool,
    start: dict[str, Tensor] | None = None,
) -> dict[str, Any]:
    """Train the shared weights on the store's training features, one sampled architecture
    per step; return the state (and the checkpoints) as a blob for the cache. A few-shot
    supernet (``supernet.split``) starts each sub-supernet from ``start``, the trained one-shot
    state, and returns them as ``shots`` (by choice) beside it."""
    store.prepare()
    assert store.train is not None
    model = build_supernet(
        config, space, num_classes=store.num_classes, with_backbone=not store.cached, seed=supernet.seed
    ).to(store.device)
    nas_space = NasFpnSpace(space)
    checkpoints: dict[str, dict[str, Tensor]] = {}
    shots: dict[str, dict[str, Tensor]] = {}
    t0 = time.perf_counter()
    if supernet.split:
        if start is None:
            raise ValueError("a few-shot supernet starts from the trained one-shot state: pass start")
        steps, first, last = 0, None, None
        for i, choice in enumerate(nas_space.distributions[supernet.split].choices):
            model.load_state_dict(start)
            fixed = {supernet.split: choice}
            draw = spec_sampler(nas_space, supernet.sampling, random.Random(supernet.seed + 1 + i), fixed)
            facts = _train_wirings(
                model, store, config, draw, epochs=supernet.split_epochs, seed=supernet.seed, progress=progress,
                desc=f"sub-supernet {supernet.split}={choice}",
            )  # fmt: skip
            shots[str(choice)] = _cpu_state(model)
            steps, first, last = steps + facts["steps"], first or facts["first_loss"], facts["last_loss"]
        checkpoints[f"{supernet.epochs:g}"] = start
        facts = {"steps": steps, "first_loss": first, "last_loss": last}
    else:
        total = total_steps(len(store.train), config.batch_size, supernet.epochs)
        marks = {max(1, round(total * k / supernet.checkpoints)): k for k in range(1, supernet.checkpoints)}

        def at(step: int) -> None:
            if step in marks:
                epochs = supernet.epochs * marks[step] / supernet.checkpoints
                checkpoints[f"{epochs:g}"] = _cpu_state(model)

        draw = spec_sampler(nas_space, supernet.sampling, random.Random(supernet.seed))
        facts = _train_wirings(
            model, store, config, draw, epochs=supernet.epochs, seed=supernet.seed, progress=progress,
            desc="supernet (once)", at=at,
        )  # fmt: skip
        checkpoints[f"{supernet.epochs:g}"] = _cpu_state(model)
    meta = {
        "seconds": time.perf_counter() - t0,
        "steps": facts["steps"],
        "first_loss": facts["first_loss"],
        "last_loss": facts["last_loss"],
        "threads": torch.get_num_threads() if store.device.type == "cpu" else 0,
        "device": str(store.device),
        "trained_by": worker_id(),  # which worker of a shared cache paid for it
    }
    return {"checkpoints": checkpoints, "shots": shots, "meta": meta}


def _train_wirings(
    model: Detector,
    store: FeatureStore,
    config: ProxyConfig,
    draw: Callable[[], ArchSpec],
    *,
    epochs: float,
    seed: int,
    progress: bool,
    desc: str,
    at: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train ``model``'s shared neck wired anew by ``draw`` before every step (``at(step)`` first)."""
    neck = model.neck
    assert isinstance(neck, SharedNeck) and store.train is not None
    neck.use(draw())

    def on_step(step: int) -> None:
        if at is not None:
            at(step)
        neck.use(draw())

    return train_detector(
        model, store.train, config=config, epochs=epochs, device=store.device, seed=seed, progress=progress,
        on_step=on_step, desc=desc,
    )  # fmt: skip


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


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
        split = self.supernet.split
        if split and split not in self._nas_space.distributions:
            names = list(self._nas_space.distributions)
            raise UsageError(
                f"supernet split {split!r} is not a decision of the space; one of {names[0]}, ..., {names[-1]}"
            )

    def key(self) -> str:
        """Hash of what the shared weights depend on: the proxy's recipe and features, the space
        and the supernet's training settings (not a trial's seed, seeds or scoring)."""
        recipe = self.config.replace(seed=0, reports=1, epochs=self.supernet.epochs, norm_recal_batches=0)
        blob = {
            "v": SUPERNET_FORMAT_VERSION,
            "proxy": recipe.fingerprint(),
            "space": self.space.to_dict(),
            "supernet": self.supernet.training(),
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

    def cache_path(self) -> Path:
        return self.store.cache_dir / f"supernet-{self.key()}.pt"

    def prepare(self) -> SupernetTask:
        """Load the dataset, the backbone features and the supernet (training it once if no
        worker on this machine has); idempotent."""
        if self.model is not None:
            return self
        store = self.store.prepare()
        path = self.cache_path()
        if not path.is_file() and self.progress:
            what = f"{self.supernet.epochs:g} epochs"
            if self.supernet.split:
                what = f"{self.supernet.split_epochs:g} epochs a part of {self.supernet.split}, from the one-shot"
            print(f"training the supernet once for this configuration ({what}) -> {path}")
        blob = load_verified(
            path,
            lambda: train_supernet(
                store, self.config, self.space, self.supernet, progress=self.progress, start=self._one_shot_state()
            ),
            what="supernet",
        )
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

    def _one_shot_state(self) -> dict[str, Tensor] | None:
        """A few-shot supernet's start: the trained state of its one-shot supernet (cached too)."""
        if not self.supernet.split:
            return None
        one = SupernetTask(self.config, self.space, self.supernet.one_shot(), progress=self.progress, store=self.store)
        return one.prepare()._all[one.checkpoints[-1]]

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
        return self.proxy.costs(spec)

    def latency(self, spec: ArchSpec | str, **settings: Any) -> dict[str, Any]:
        """The architecture's latency as the proxy measures it (a property of the network, not of its weights)."""
        return self.proxy.latency(spec, **settings)

    def evaluate(self, spec: ArchSpec, reporter: Reporter | None = None) -> dict[str, Any]:
        """Score ``spec`` with the shared weights: restore the trained state, wire, fine-tune
        (if asked), re-estimate BatchNorm statistics, evaluate COCO AP. Raises :class:`TrialFailed` for a spec the
        supernet cannot wire (another cell count or level range)."""
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
        metrics: dict[str, Any] = coco_ap(
            self.store.val.split.coco_gt, predict(model, self.store.val, device=self.store.device, progress=False)
        )
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


__all__ = ["SharedNeck", "SupernetConfig", "SupernetTask", "build_supernet", "spec_sampler", "train_supernet"]
