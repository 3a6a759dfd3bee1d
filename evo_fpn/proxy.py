"""The proxy task: a spec goes in, COCO AP comes out, fast enough to run thousands of times.

How it is fast (measured; see ``benchmarks/bench_proxy.py``): the backbone is trained *once
per proxy configuration* (end to end, with torchvision's FPN as a stand-in neck), frozen, and
its C3..C5 maps of every train and val image are cached on disk, keyed by the configuration.
Every trial then trains only its own neck and a fresh RetinaNet head on the cached maps.
Workers on one machine share the cache (built under a file lock, written to a temp file and
renamed atomically). ``backbone_mode="end_to_end"`` trains everything per trial instead (the
paper's proxy; what ``python -m evo_fpn.train`` uses).

Optimisation settings dominate short budgets. A GroupNorm head (torchvision's ``norm_layer``)
learns from the first epoch where a plain one stalls, and AdamW (lr 1e-3, weight decay 0.05,
linear warm-up, cosine decay) trains the from-scratch backbone far faster than SGD: measured on
the default preset's 24-epoch backbone stage, val AP 0.265 against 0.110 with SGD at lr 0.05
(AdamW at lr 2e-3 was behind 1e-3 at epoch 8: 0.069 vs 0.077).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import multiprocessing.connection
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import optuna
import torch
from torch import Tensor
from tqdm.auto import tqdm

from evo_fpn.cli import UsageError, register_user_error
from evo_fpn.cost import count_flops, count_params
from evo_fpn.data import (
    RESIZE_MODES,
    DatasetError,
    DetectionDataset,
    Split,
    dataset_fingerprint,
    load_dataset,
)
from evo_fpn.detector import BACKBONES, HEAD_NORMS, Detector, build_detector, freeze
from evo_fpn.digits import DigitsConfig, build_digits, cache_root
from evo_fpn.evaluate import METRIC_NAMES, coco_ap
from evo_fpn.spec import ArchSpec

register_user_error(DatasetError)

CACHE_FORMAT_VERSION = 1


class TrialFailed(Exception):
    """The trial cannot produce a score (e.g. the loss became non-finite); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ProxyConfig:
    """Everything that decides a proxy score (not the device, not the progress bar).

    ``data=None`` uses the built-in digits dataset (the ``digits_*`` fields); otherwise a
    COCO-layout folder (see :mod:`evo_fpn.data`).
    """

    # data
    data: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    digits_train: int = 1500
    digits_val: int = 300
    digits_min_scale: int = 12
    digits_max_scale: int = 100
    digits_seed: int = 0
    image_size: int = 128
    resize: str = "plain"
    # model
    backbone: str = "resnet10"
    backbone_weights: str | None = None
    backbone_mode: str = "cached"
    backbone_epochs: float = 24.0
    backbone_seed: int = 0
    width: int = 64
    repeats: int = 3
    neck_norm: str = "batch"
    fpn_norm: str | None = None  # torchvision FPN's norm; None: neck_norm's, but none for "batch" (as shipped)
    norm_recal_batches: int = 0  # re-estimate the neck's BatchNorm statistics on this many train batches before eval
    anytime: bool = False  # deep supervision: the head also trains on every repeat's pyramid
    norm_decay: bool = True  # weight decay on norm weights and biases too (False: conv/linear weights only)
    head_depth: int = 4
    head_norm: str = "group"
    anchor_sizes: tuple[float, ...] = (8.0, 16.0, 32.0, 64.0, 128.0)
    anchor_scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # training
    epochs: float = 16.0
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    clip_grad: float = 10.0
    seed: int = 0
    seeds: int = 1  # trainings per trial, seeds seed..seed+seeds-1; the score is their mean AP
    reports: int = 3
    # evaluation
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(f"proxy config: {msg}")

        # ``epochs = 24`` in a TOML file is an int: make it 24.0, so that equal configs have
        # equal fingerprints (and share one backbone cache).
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("float", "tuple[float, ...]"):
                try:
                    floats = tuple(map(float, value)) if isinstance(value, tuple) else float(value)
                except (TypeError, ValueError):
                    raise UsageError(f"proxy config: {f.name} must be a number, got {value!r}") from None
                object.__setattr__(self, f.name, floats)

        need(self.backbone in BACKBONES, f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        need(self.backbone_mode in ("cached", "end_to_end"), "backbone_mode must be 'cached' or 'end_to_end'")
        need(self.resize in RESIZE_MODES, f"resize must be one of {', '.join(RESIZE_MODES)}")
        need(self.head_norm in HEAD_NORMS and self.neck_norm in HEAD_NORMS, f"norms must be one of {HEAD_NORMS}")
        need(self.fpn_norm is None or self.fpn_norm in HEAD_NORMS, f"fpn_norm must be one of {HEAD_NORMS} or unset")
        need(
            type(self.norm_recal_batches) is int and self.norm_recal_batches >= 0,
            f"norm_recal_batches must be an integer >= 0, got {self.norm_recal_batches!r}",
        )
        need(isinstance(self.anytime, bool), f"anytime must be true or false, got {self.anytime!r}")
        need(isinstance(self.norm_decay, bool), f"norm_decay must be true or false, got {self.norm_decay!r}")
        need(self.optimizer in ("sgd", "adamw"), "optimizer must be 'sgd' or 'adamw'")
        need(self.image_size >= 32, "image_size must be >= 32")
        need(self.width >= 8 and self.repeats >= 1, "width must be >= 8 and repeats >= 1")
        need(0 <= self.head_depth <= 4, "head_depth must lie in 0..4")
        need(self.epochs > 0 and self.backbone_epochs >= 0, "epochs must be > 0 and backbone_epochs >= 0")
        need(self.batch_size >= 1 and self.lr > 0, "batch_size must be >= 1 and lr > 0")
        need(0 <= self.warmup_fraction < 1, "warmup_fraction must lie in [0, 1)")
        need(self.reports >= 1, "reports must be >= 1")
        need(type(self.seeds) is int and self.seeds >= 1, f"seeds must be an integer >= 1, got {self.seeds!r}")
        need(len(self.anchor_sizes) == 5, "anchor_sizes needs one size per level P3..P7 (5 values)")
        need(self.digits_train >= 1 and self.digits_val >= 1, "digits_train and digits_val must be >= 1")

    # -- (de)serialisation and identity ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: ProxyConfig | None = None) -> ProxyConfig:
        """A config from (possibly partial) ``data`` over ``base`` (default: the class defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError(f"unknown proxy setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return dataclasses.replace(base or cls(), **values)

    def replace(self, **changes: Any) -> ProxyConfig:
        return ProxyConfig.from_dict(changes, base=self)

    def fingerprint(self) -> str:
        """Hash of everything that changes results (device and progress bar are not config).

        Fields added after results were first stored (:data:`_LATER_FIELDS`) are hashed only
        when they differ from their default, so existing studies and records keep theirs."""
        d = self.to_dict()
        return _hash({k: v for k, v in d.items() if k not in _LATER_FIELDS or v != _LATER_FIELDS[k]})

    def dataset_key(self) -> dict[str, Any]:
        if self.data is None:
            return {"digits": self.digits_config().fingerprint()}
        return {"data": dataset_fingerprint(self.data, (self.train_split, self.val_split))}

    def backbone_key(self) -> str:
        """Hash of what the cached backbone and its features depend on (not the trial's settings)."""
        fields = ("image_size", "resize", "backbone", "backbone_weights", "backbone_epochs", "backbone_seed", "width")
        fields += ("head_depth", "head_norm", "anchor_sizes", "anchor_scales", "aspect_ratios", "batch_size")
        fields += ("optimizer", "lr", "momentum", "weight_decay", "warmup_fraction", "clip_grad")
        d = self.to_dict()
        return _hash({"v": CACHE_FORMAT_VERSION, **self.dataset_key(), **{k: d[k] for k in fields}})

    def digits_config(self) -> DigitsConfig:
        return DigitsConfig(
            train_images=self.digits_train,
            val_images=self.digits_val,
            image_size=self.image_size,
            min_scale=min(self.digits_min_scale, self.image_size),
            max_scale=min(self.digits_max_scale, self.image_size),
            seed=self.digits_seed,
        )


_LATER_FIELDS: dict[str, Any] = {
    "seeds": 1,
    "fpn_norm": None,
    "norm_recal_batches": 0,
    "anytime": False,
    "norm_decay": True,
}
"""Fields added after fingerprints were first stored, with the default that leaves them out."""


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


PRESETS: dict[str, ProxyConfig] = {
    # 38-57 s per trial on a busy 2-core CPU (measured), plus a one-off ~2 minute backbone stage.
    "quick": ProxyConfig(
        digits_train=400,
        digits_val=100,
        image_size=96,
        digits_min_scale=10,
        digits_max_scale=80,
        anchor_sizes=(8.0, 16.0, 32.0, 64.0, 128.0),
        backbone_epochs=10.0,
        repeats=1,
        epochs=15.0,
        reports=2,
    ),
    # Two seeds per trial, side by side on 2 CPU cores (one thread each): half the seed noise
    # (signal-to-noise 9.19 against 5.07). Against the 8-epoch end-to-end reference one seed
    # ranks the first 8 benchmark architectures at Kendall tau 0.57 or 0.64 depending on the
    # seed, their mean at 0.64; over all 12, 0.70 each and 0.67. 266-328 s per trial on 2 cores
    # (measured), plus a one-off ~21 minute backbone stage (24 epochs). 16 trial epochs, not
    # 12: a seed's AP std fell from 0.027 to 0.011.
    "default": ProxyConfig(seeds=2),
    # The paper's proxy: ResNet-10, 512x512, 10 epochs, 3 repeats, trained end to end; for GPUs and COCO.
    "paper": ProxyConfig(
        data=None,
        image_size=512,
        backbone_mode="end_to_end",
        backbone_epochs=0.0,
        width=256,
        repeats=3,
        anchor_sizes=(32.0, 64.0, 128.0, 256.0, 512.0),
        epochs=10.0,
        batch_size=64,
        optimizer="sgd",
        lr=0.08,
        weight_decay=1e-4,
        train_split="train2017",
        val_split="val2017",
        reports=5,
    ),
}
"""Named configurations; the paper preset needs ``data`` (a COCO folder)."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda requested but CUDA is not available; use --device auto or cpu")
    return dev


# -- data held in memory -----------------------------------------------------------------------


MEMORY_LIMIT_BYTES = 2 * 1024**3
"""Splits whose resized images fit in this many bytes are decoded once and kept in memory."""


@dataclass
class _Inputs:
    """One split ready for training: images (uint8, in memory or decoded per batch) or cached
    C3..C5 maps (fp16), plus targets in resized pixels."""

    split: Split
    scales: list[tuple[float, float]]
    targets: list[dict[str, Tensor]]
    images: Tensor | None = None
    features: list[Tensor] | None = None
    dataset: DetectionDataset | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, idx: Sequence[int], device: torch.device) -> tuple[Tensor | list[Tensor], list[dict[str, Tensor]]]:
        index = torch.as_tensor(idx)
        targets = [{k: v.to(device) for k, v in self.targets[i].items()} for i in idx]
        if self.features is not None:
            return [f[index].to(device, non_blocking=True).float() for f in self.features], targets
        if self.images is not None:
            return self.images[index].to(device, non_blocking=True), targets
        assert self.dataset is not None  # large dataset: decode this batch now (PIL releases the GIL)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            images = list(pool.map(lambda i: self.dataset[i][0], idx))  # type: ignore[index]
        return torch.stack(images).to(device, non_blocking=True), targets


def _load_inputs(split: Split, image_size: int, resize: str, progress: bool) -> _Inputs:
    ds = DetectionDataset(split, image_size=image_size, resize=resize)
    targets, scales = [], []
    for i in range(len(ds)):
        sx, sy = ds.scale(i)
        factor = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        targets.append(
            {"boxes": torch.from_numpy(split.boxes[i]) * factor, "labels": torch.from_numpy(split.labels[i])}
        )
        scales.append((sx, sy))
    if len(ds) * 3 * image_size * image_size > MEMORY_LIMIT_BYTES:
        return _Inputs(split=split, scales=scales, targets=targets, dataset=ds)
    images = torch.empty((len(ds), 3, image_size, image_size), dtype=torch.uint8)
    for i in tqdm(range(len(ds)), desc=f"load {split.name}", disable=not progress, leave=False):
        images[i] = ds[i][0]
    return _Inputs(split=split, scales=scales, targets=targets, images=images)


# -- training --------------------------------------------------------------------------------


def _optimizer(params: list[torch.nn.Parameter], config: ProxyConfig, total_steps: int):  # type: ignore[no-untyped-def]
    groups: list[dict[str, Any]] = [{"params": params}]
    if not config.norm_decay:  # as the authors' code: decay conv/linear weights, not norms or biases
        groups = [{"params": [p for p in params if p.ndim > 1]}, {"params": [p for p in params if p.ndim <= 1]}]
        groups[1]["weight_decay"] = 0.0
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, int(config.warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return 0.001 + (1 - 0.001) * step / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_detector(
    model: Detector,
    train: _Inputs,
    *,
    config: ProxyConfig,
    epochs: float,
    device: torch.device,
    seed: int,
    progress: bool = True,
    eval_points: Sequence[int] = (),
    on_eval: Callable[[int, int], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    desc: str = "train",
) -> dict[str, Any]:
    """SGD/AdamW with warm-up + cosine decay and gradient clipping; seeded batches.

    ``on_eval(step, total)`` runs after the listed steps (for intermediate AP), ``on_step(step)``
    after every step (progress shown by another process). Raises
    :class:`TrialFailed` when the loss becomes non-finite. Returns timing and loss facts.
    """
    steps_per_epoch = max(1, len(train) // config.batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = _optimizer(params, config, total)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    if model.backbone is not None and not any(p.requires_grad for p in model.backbone.parameters()):
        model.backbone.eval()
    losses: list[float] = []
    seen, train_seconds = 0, 0.0
    eval_set = set(eval_points)
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    order: list[int] = []
    try:
        for step in range(1, total + 1):
            if len(order) < config.batch_size:
                order += torch.randperm(len(train), generator=gen).tolist()
            idx, order = order[: config.batch_size], order[config.batch_size :]
            t0 = time.perf_counter()
            inputs, targets = train.batch(idx, device)
            with _autocast(device):
                if isinstance(inputs, list):
                    loss_dict = model.forward_features(inputs, targets)
                else:
                    loss_dict = model(inputs, targets)
            loss = sum(v.float() for v in loss_dict.values())
            if not torch.isfinite(loss):
                parts = ", ".join(f"{k}={float(v.detach()):.3g}" for k, v in loss_dict.items())
                raise TrialFailed(f"non-finite loss at step {step}/{total} ({parts}); lower lr or check the data")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
            opt.step()
            sched.step()
            train_seconds += time.perf_counter() - t0
            seen += len(idx)
            losses.append(loss.item())
            bar.update(1)
            if on_step is not None:
                on_step(step)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
            if step in eval_set and on_eval is not None:
                on_eval(step, total)
                model.train()
                if model.backbone is not None and not any(p.requires_grad for p in model.backbone.parameters()):
                    model.backbone.eval()
    finally:
        bar.close()
    return {
        "steps": total,
        "train_seconds": train_seconds,
        "images_per_s": seen / max(train_seconds, 1e-9),
        "first_loss": float(np.mean(losses[: min(10, len(losses))])),
        "last_loss": float(np.mean(losses[-min(10, len(losses)) :])),
    }


@torch.no_grad()
def recalibrate_norms(
    model: Detector, train: _Inputs, *, batches: int, config: ProxyConfig, device: torch.device
) -> int:
    """Re-estimate the neck's BatchNorm statistics as SPOS and DetNAS do: reset them, then run
    ``batches`` training batches (fixed order) in train mode without gradients, averaging
    (momentum ``None``). Weights do not change, so evaluating before and after compares the
    same network. Returns the number of BatchNorm layers recalibrated (0: nothing to do)."""
    norms = [m for m in model.neck.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or batches < 1:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.eval()
    model.neck.train()
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(12345)).tolist()
    order = order * (1 + batches * config.batch_size // max(1, len(order)))
    try:
        for b in range(batches):
            inputs, _ = train.batch(order[b * config.batch_size : (b + 1) * config.batch_size], device)
            with _autocast(device):
                if isinstance(inputs, list):
                    model.neck(inputs)
                else:
                    assert model.backbone is not None
                    model.neck(model.backbone(model.normalize(inputs)))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was)
    return len(norms)


@torch.no_grad()
def predict(
    model: Detector, data: _Inputs, *, device: torch.device, batch_size: int = 32, progress: bool = True
) -> list[dict[str, Any]]:
    """COCO-format detections (original image coordinates, dataset category ids)."""
    model.eval()
    out: list[dict[str, Any]] = []
    split = data.split
    for start in tqdm(range(0, len(data), batch_size), desc="eval", disable=not progress, leave=False):
        idx = list(range(start, min(start + batch_size, len(data))))
        inputs, _ = data.batch(idx, device)
        with _autocast(device):
            dets = model.forward_features(inputs) if isinstance(inputs, list) else model(inputs)
        for i, det in zip(idx, dets, strict=True):
            sx, sy = data.scales[i]
            boxes = det["boxes"].float().cpu().numpy() / np.array([sx, sy, sx, sy], dtype=np.float32)
            for (x0, y0, x1, y1), score, label in zip(
                boxes.tolist(), det["scores"].float().cpu().tolist(), det["labels"].cpu().tolist(), strict=True
            ):
                out.append(
                    {
                        "image_id": split.image_ids[i],
                        "category_id": split.label_to_cat_id(int(label)),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": score,
                    }
                )
    return out


# -- the task ----------------------------------------------------------------------------------


class ProxyTask:
    """Trains and scores one architecture under a :class:`ProxyConfig` (see the module docstring).

    Example::

        task = ProxyTask(PRESETS["quick"])
        task.prepare()                      # dataset + backbone cache, once
        metrics = task.evaluate(PUBLISHED_NASFPN)
        metrics["ap"]
    """

    def __init__(
        self,
        config: ProxyConfig | str = "default",
        *,
        device: str | torch.device = "auto",
        progress: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
    ) -> None:
        if threads is not None:
            if threads < 1:
                raise UsageError(f"threads must be >= 1, got {threads}")
            # Process-wide. On a shared, busy CPU one thread per process is far faster: measured
            # 12 img/s with 1 thread vs 1.6 img/s with 2 (OpenMP threads spin on a loaded machine).
            torch.set_num_threads(threads)
        if isinstance(config, str):
            if config not in PRESETS:
                raise UsageError(f"unknown proxy preset {config!r}; choose one of {', '.join(PRESETS)}")
            config = PRESETS[config]
        if not isinstance(config, ProxyConfig):
            raise TypeError(f"config must be a ProxyConfig or a preset name, got {type(config).__name__}")
        self.config = config
        self.device = resolve_device(device)
        self.progress = bool(progress)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
        self._train: _Inputs | None = None
        self._val: _Inputs | None = None
        self._backbone_state: dict[str, Tensor] | None = None
        self._backbone_flops: int | None = None
        self._num_classes = 0
        self.prepare_seconds = 0.0

    # -- preparation ---------------------------------------------------------------------
    def prepare(self) -> ProxyTask:
        """Build/load the dataset and (cached mode) the trained backbone and its features."""
        if self._train is not None:
            return self
        t0 = time.perf_counter()
        cfg = self.config
        if cfg.data is None:
            if (cfg.train_split, cfg.val_split) != ("train", "val"):
                raise DatasetError(
                    f"splits {cfg.train_split}/{cfg.val_split} need a dataset folder (the paper preset trains on "
                    "COCO): set data (--data) to a COCO-layout folder"
                )
            root = build_digits(cfg.digits_config(), root=self.cache_dir)
        else:
            root = Path(cfg.data).expanduser()
        train_split, val_split = load_dataset(root, train_split=cfg.train_split, val_split=cfg.val_split)
        self._num_classes = train_split.num_classes
        if cfg.backbone_mode == "cached":
            self._prepare_cached(train_split, val_split)
        else:
            self._train = _load_inputs(train_split, cfg.image_size, cfg.resize, self.progress)
            self._val = _load_inputs(val_split, cfg.image_size, cfg.resize, self.progress)
        self.prepare_seconds = time.perf_counter() - t0
        return self

    @property
    def num_classes(self) -> int:
        self.prepare()
        return self._num_classes

    def cache_path(self) -> Path:
        return self.cache_dir / f"backbone-{self.config.backbone_key()}.pt"

    def _prepare_cached(self, train_split: Split, val_split: Split) -> None:
        path = self.cache_path()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            with open(self.cache_dir / f".{path.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per machine; others wait, then load
                if not path.is_file():
                    self._build_cache(train_split, val_split, path)
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a corrupt cache is rebuilt by deleting it
            raise DatasetError(f"{path}: unreadable backbone cache ({exc}); delete the file to rebuild it") from None
        train = _Inputs(train_split, blob["train_scales"], blob["train_targets"], features=blob["train"])
        val = _Inputs(val_split, blob["val_scales"], blob["val_targets"], features=blob["val"])
        if len(train) != len(train_split) or len(val) != len(val_split):
            raise DatasetError(f"{path}: backbone cache does not match the dataset; delete the file to rebuild it")
        self._train, self._val = train, val
        self._backbone_state = blob["backbone"]
        self._backbone_flops = int(blob["backbone_flops"])

    def _build_cache(self, train_split: Split, val_split: Split, path: Path) -> None:
        """Train backbone + torchvision FPN + head end to end, freeze it, store C3..C5 of every image."""
        cfg = self.config
        train = _load_inputs(train_split, cfg.image_size, cfg.resize, self.progress)
        val = _load_inputs(val_split, cfg.image_size, cfg.resize, self.progress)
        torch.manual_seed(cfg.backbone_seed)
        # The stand-in neck is torchvision's plain FPN whatever the trials' norms, so that the
        # cache key needs none of the trial settings.
        model = self._detector("torchvision_fpn", with_backbone=True, stage=True).to(self.device)
        t0 = time.perf_counter()
        if cfg.backbone_epochs > 0:
            train_detector(
                model,
                train,
                config=cfg.replace(norm_decay=True),  # the stage's recipe is not a trial setting
                epochs=cfg.backbone_epochs,
                device=self.device,
                seed=cfg.backbone_seed,
                progress=self.progress,
                desc="backbone stage",
            )
        stage_seconds = time.perf_counter() - t0
        stage_metrics = coco_ap(val_split.coco_gt, predict(model, val, device=self.device, progress=self.progress))
        backbone = freeze(model.backbone)
        feats = {}
        t1 = time.perf_counter()
        for name, data in (("train", train), ("val", val)):
            maps: list[list[Tensor]] = [[], [], []]
            with torch.no_grad():
                for start in tqdm(
                    range(0, len(data), 64), desc=f"cache {name}", disable=not self.progress, leave=False
                ):
                    assert data.images is not None
                    x = model.normalize(data.images[start : start + 64].to(self.device))
                    with _autocast(self.device):
                        out = backbone(x)
                    for k, f in enumerate(out):
                        maps[k].append(f.half().cpu())
            feats[name] = [torch.cat(m) for m in maps]
        cache_seconds = time.perf_counter() - t1
        backbone_cpu = backbone.to("cpu")
        blob = {
            "backbone": backbone_cpu.state_dict(),
            "backbone_flops": count_flops(backbone_cpu, torch.zeros(1, 3, cfg.image_size, cfg.image_size)),
            "train": feats["train"],
            "val": feats["val"],
            "train_targets": train.targets,
            "val_targets": val.targets,
            "train_scales": train.scales,
            "val_scales": val.scales,
            "meta": {
                "stage_seconds": stage_seconds,
                "stage_ap": stage_metrics["ap"],
                "stage_ap50": stage_metrics["ap50"],
                "cache_seconds": cache_seconds,
                "config": cfg.to_dict(),
            },
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            torch.save(blob, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def cache_meta(self) -> dict[str, Any]:
        """Timing facts of the cached backbone stage (empty in end-to-end mode)."""
        if self.config.backbone_mode != "cached" or not self.cache_path().is_file():
            return {}
        return dict(torch.load(self.cache_path(), map_location="cpu", weights_only=True)["meta"])

    def _detector(self, arch: ArchSpec | str, *, with_backbone: bool, stage: bool = False) -> Detector:
        cfg = self.config
        return build_detector(
            arch,
            num_classes=self._num_classes,
            image_size=cfg.image_size,
            backbone=cfg.backbone,
            with_backbone=with_backbone,
            weights_path=cfg.backbone_weights,
            width=cfg.width,
            repeats=cfg.repeats,
            neck_norm="batch" if stage else cfg.neck_norm,
            fpn_norm=None if stage else cfg.fpn_norm,
            anytime=False if stage else cfg.anytime,
            anchor_sizes=cfg.anchor_sizes,
            anchor_scales=cfg.anchor_scales,
            aspect_ratios=cfg.aspect_ratios,
            head_depth=cfg.head_depth,
            head_norm=cfg.head_norm,
            score_thresh=cfg.score_thresh,
            nms_thresh=cfg.nms_thresh,
            detections_per_img=cfg.detections_per_img,
        )

    # -- one trial -------------------------------------------------------------------------
    def build(self, spec: ArchSpec | str, seed: int | None = None) -> Detector:
        """The detector a trial trains: neck + head (cached mode) or the full model, seeded
        (``seed`` defaults to the config's)."""
        self.prepare()
        cfg = self.config
        torch.manual_seed(cfg.seed if seed is None else seed)
        cached = cfg.backbone_mode == "cached"
        model = self._detector(spec, with_backbone=not cached)
        return model.to(self.device)

    def costs(self, model: Detector) -> dict[str, int]:
        """Neck and total parameters and per-image FLOPs at the proxy image size."""
        cfg = self.config
        s = cfg.image_size
        was = model.training
        model.eval()
        with torch.no_grad():
            if model.backbone is not None:
                backbone = model.backbone.to("cpu")
                backbone_params = count_params(backbone)
                backbone_flops = count_flops(backbone, torch.zeros(1, 3, s, s))
                feats = backbone(model.normalize(torch.zeros(1, 3, s, s)))
                backbone.to(self.device)
            else:
                assert self._backbone_state is not None and self._backbone_flops is not None
                backbone_params = sum(v.numel() for k, v in self._backbone_state.items() if _is_param(k))
                backbone_flops = self._backbone_flops
                assert self._train is not None and self._train.features is not None
                feats = [f[:1].float() for f in self._train.features]
            neck, head = model.neck.to("cpu"), model.retina.head.to("cpu")
            neck_flops = count_flops(neck, feats)
            pyramid = list(neck(feats).values())
            head_flops = count_flops(head, pyramid)
            neck.to(self.device)
            head.to(self.device)
        model.train(was)
        neck_params, head_params = count_params(neck), count_params(head)
        return {
            "neck_params": neck_params,
            "total_params": backbone_params + neck_params + head_params,
            "neck_flops": neck_flops,
            "total_flops": backbone_flops + neck_flops + head_flops,
        }

    def evaluate(self, spec: ArchSpec | str, trial: optuna.Trial | None = None) -> dict[str, Any]:
        """Train ``spec`` under this proxy and return its metrics (``metrics["ap"]`` is the objective).

        With ``seeds`` > 1 it trains once per seed and every AP metric is the mean over seeds
        (``ap_seeds`` lists the APs). On a CPU the seeds train side by side in their own
        processes (:meth:`seed_processes`), so two seeds on 2 cores take about the wall time of
        one. Reports intermediate AP to ``trial`` (seed k's step s at step k * steps + s, so a
        pruner compares like with like; the last report is the mean), writes the user attrs of
        the contract, raises :class:`TrialFailed` on a non-finite loss.
        """
        self.prepare()
        assert self._train is not None
        cfg = self.config
        spec_json, spec_hash = (spec.to_json(), spec.canonical_hash()) if isinstance(spec, ArchSpec) else (spec, spec)
        if trial is not None:
            trial.set_user_attr("spec", spec_json)
            trial.set_user_attr("spec_hash", spec_hash)
        first = self.build(spec)
        costs = self.costs(first)
        if trial is not None:
            for k, v in costs.items():
                trial.set_user_attr(k, int(v))
        steps_per_epoch = max(1, len(self._train) // cfg.batch_size)
        total = max(1, int(round(cfg.epochs * steps_per_epoch)))
        procs = self.seed_processes()
        try:
            if procs == 1:
                runs = []
                for k in range(cfg.seeds):
                    model = first if k == 0 else self.build(spec, cfg.seed + k)
                    runs.append(self.train_seed(model, k, total, trial))
            else:
                runs = self._train_side_by_side(spec, procs, total, trial)
        except TrialFailed as exc:
            if trial is not None:
                trial.set_user_attr("fail_reason", exc.reason)
            raise
        finals = [run["final"] for run in runs]
        metrics: dict[str, Any] = {k: float(np.mean([f[k] for f in finals])) for k in METRIC_NAMES}
        metrics.update(costs)
        metrics.update(
            train_seconds=float(sum(run["train_seconds"] for run in runs)),
            eval_seconds=float(sum(run["eval_seconds"] for run in runs)),
            images_per_s=float(np.mean([run["images_per_s"] for run in runs])),
            threads=int(runs[0]["threads"]),
        )
        metrics.update(spec=spec_json, spec_hash=spec_hash)
        if cfg.seeds > 1:
            metrics["ap_seeds"] = [float(f["ap"]) for f in finals]
        if trial is not None:
            for k in (*METRIC_NAMES, "train_seconds", "eval_seconds", "images_per_s", "threads"):
                trial.set_user_attr(k, metrics[k])
            if cfg.seeds > 1:
                trial.set_user_attr("ap_seeds", metrics["ap_seeds"])
            trial.report(metrics["ap"], cfg.seeds * total)
        history = sorted(point for run in runs for point in run["history"])
        metrics.update(first_loss=runs[0]["first_loss"], last_loss=runs[-1]["last_loss"], history=history)
        return metrics

    def seed_processes(self) -> int:
        """How many processes train a trial's seeds at once: on a CPU one per seed, at most one
        per torch thread (each gets an equal share of the threads); 1 (in this process) on a GPU
        or with one seed. A seed's AP depends on its thread count, not on how many run at once:
        two seeds side by side with 1 thread each score exactly as two 1-thread runs in turn."""
        if self.device.type != "cpu" or self.config.seeds == 1:
            return 1
        return min(self.config.seeds, torch.get_num_threads())

    def _train_side_by_side(
        self, spec: ArchSpec | str, procs: int, total: int, trial: optuna.Trial | None
    ) -> list[dict[str, Any]]:
        """Train the seeds in ``procs`` seed processes (:mod:`evo_fpn.seed_process`); relay their
        progress and reports to this process's bar and ``trial`` (which alone decides pruning,
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
                child, conn = _start_seed_process((cfg, self.cache_dir, spec, ks, total, threads))
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
                        if trial is not None:
                            _report(trial, ap, step)
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
        self.last_model = None  # the models lived in the seed processes
        return [runs[k] for k in range(cfg.seeds)]

    def train_seed(
        self,
        model: Detector,
        k: int,
        total: int,
        trial: _Reports | None,
        on_step: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Train ``model`` (built with seed ``seed + k``) for ``total`` steps and evaluate it; its
        reports go to ``trial`` at ``k * total + step`` (all but the trial's very last, which
        :meth:`evaluate` reports as the mean)."""
        assert self._train is not None and self._val is not None
        cfg = self.config
        seed, offset, last = cfg.seed + k, k * total, k == cfg.seeds - 1
        eval_points = sorted({max(1, round(total * (k + 1) / cfg.reports)) for k in range(cfg.reports)})
        history: list[tuple[int, float]] = []
        eval_seconds = [0.0]
        final: dict[str, float] = {}

        def on_eval(step: int, total_steps: int) -> None:
            t0 = time.perf_counter()
            if cfg.norm_recal_batches:
                recalibrate_norms(model, self._train, batches=cfg.norm_recal_batches, config=cfg, device=self.device)
            metrics = coco_ap(
                self._val.split.coco_gt,  # type: ignore[union-attr]
                predict(model, self._val, device=self.device, progress=self.progress),  # type: ignore[arg-type]
            )
            eval_seconds[0] += time.perf_counter() - t0
            history.append((offset + step, metrics["ap"]))
            final.clear()
            final.update(metrics)
            if trial is not None and not (last and step == total_steps):
                _report(trial, metrics["ap"], offset + step)

        facts = train_detector(
            model,
            self._train,
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
        self.last_model = model
        threads = torch.get_num_threads() if self.device.type == "cpu" else 0
        return {**facts, "final": final, "history": history, "eval_seconds": eval_seconds[0], "threads": threads}


class _Reports(Protocol):
    """What :meth:`ProxyTask.train_seed` needs of a trial (an ``optuna.Trial`` or a seed process's relay)."""

    def report(self, value: float, step: int) -> None: ...
    def should_prune(self) -> bool: ...
    def set_user_attr(self, key: str, value: Any) -> None: ...


def _report(trial: _Reports, ap: float, step: int) -> None:
    """Report intermediate AP; stop the trial (``optuna.TrialPruned``) when its pruner says so."""
    trial.report(ap, step)
    if trial.should_prune():
        trial.set_user_attr("ap", ap)
        raise optuna.TrialPruned(f"pruned at step {step} with AP {ap:.4f}")


def _start_seed_process(args: tuple[Any, ...]) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start ``python -m evo_fpn.seed_process``, hand it ``args``; return it and its message pipe."""
    here = str(Path(__file__).resolve().parents[1])  # importable even when not installed
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    child = subprocess.Popen(
        [sys.executable, "-m", "evo_fpn.seed_process"],
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


__all__ = [
    "PRESETS",
    "ProxyConfig",
    "ProxyTask",
    "TrialFailed",
    "predict",
    "recalibrate_norms",
    "resolve_device",
    "train_detector",
]
