"""The supernet's shared weights and their one-off training (the cache of the supernet objective).

See :mod:`evo_fpn.tasks.supernet` for what the weights are for and how a trial is scored.
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
from evo_fpn.errors import UsageError
from evo_fpn.model.detector import Detector, neck_norm_layer
from evo_fpn.model.neck import NasFpn, NormFactory
from evo_fpn.tasks.base import worker_id
from evo_fpn.training.cache import load_verified
from evo_fpn.training.config import ProxyConfig
from evo_fpn.training.features import FeatureStore
from evo_fpn.training.loop import total_steps, train_detector

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
    ``val_images``: score on the first this many val images only (0: all; a fixed subset, the
    split's order is random); ``screen_images``: first score on this many, report it to the
    pruner (step 0) and stop there if it says so (multi-fidelity; 0: off). Left out of the
    identity at 0, as the split fields.
    """

    epochs: float = 48.0
    sampling: str = "uniform"
    recal_batches: int = 0  # 20 before issue 31: none re-estimated ranked better (tau 0.84 vs 0.77) in 2/3 the time
    seed: int = 0
    checkpoints: int = 3
    finetune_steps: int = 0
    split: str = ""
    split_epochs: float = 8.0
    val_images: int = 0
    screen_images: int = 0

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
        if self.val_images < 0 or self.screen_images < 0:
            raise ValueError(f"val_images and screen_images must be >= 0, got {self.val_images}, {self.screen_images}")
        if self.screen_images and self.val_images and self.screen_images >= self.val_images:
            raise ValueError(f"screen_images ({self.screen_images}) must be fewer than val_images ({self.val_images})")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.split:  # one-shot: fingerprints and cache keys as before few-shot existed
            d.pop("split")
            d.pop("split_epochs")
        for field in ("val_images", "screen_images"):  # added by issue 31: identities as before at 0
            if not d[field]:
                d.pop(field)
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
        for scoring in ("recal_batches", "finetune_steps", "val_images", "screen_images"):
            d.pop(scoring, None)
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


def supernet_key(config: ProxyConfig, space: SpaceConfig, supernet: SupernetConfig) -> str:
    """Hash of what the shared weights depend on: the proxy's recipe and features, the space
    and the supernet's training settings (not a trial's seed, seeds or scoring)."""
    recipe = config.replace(seed=0, reports=1, epochs=supernet.epochs, norm_recal_batches=0)
    blob = {
        "v": SUPERNET_FORMAT_VERSION,
        "proxy": recipe.fingerprint(),
        "space": space.to_dict(),
        "supernet": supernet.training(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def supernet_path(store: FeatureStore, config: ProxyConfig, space: SpaceConfig, supernet: SupernetConfig) -> Path:
    return store.cache_dir / f"supernet-{supernet_key(config, space, supernet)}.pt"


def trained_supernet(
    store: FeatureStore, config: ProxyConfig, space: SpaceConfig, supernet: SupernetConfig, *, progress: bool
) -> dict[str, Any]:
    """The cached supernet blob, trained once per machine if missing (a few-shot supernet starts
    from its one-shot supernet's trained state, cached too); verified on load."""
    path = supernet_path(store, config, space, supernet)
    if not path.is_file() and progress:
        what = f"{supernet.epochs:g} epochs"
        if supernet.split:
            what = f"{supernet.split_epochs:g} epochs a part of {supernet.split}, from the one-shot"
        print(f"training the supernet once for this configuration ({what}) -> {path}")

    def build() -> dict[str, Any]:
        start = None
        if supernet.split:
            one = trained_supernet(store, config, space, supernet.one_shot(), progress=progress)
            start = one["checkpoints"][list(one["checkpoints"])[-1]]
        return train_supernet(store, config, space, supernet, progress=progress, start=start)

    return load_verified(path, build, what="supernet")
