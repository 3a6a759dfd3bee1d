"""The proxy task's settings: :class:`ProxyConfig` (plain data, fingerprinted) and the presets.

A leaf below the feature store, the training loop and the proxy objective, so that each of them
reads the same settings without importing the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from evo_fpn.arch.spec import ArchSpec
from evo_fpn.data.coco import RESIZE_MODES, dataset_fingerprint
from evo_fpn.data.digits import DigitsConfig
from evo_fpn.errors import UsageError
from evo_fpn.model.detector import BACKBONES, HEAD_NORMS, Detector, build_detector
from evo_fpn.model.neck import CELL_CONVS

CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ProxyConfig:
    """Everything that decides a proxy score (not the device, not the progress bar).

    ``data=None`` uses the built-in digits dataset (the ``digits_*`` fields); otherwise a
    COCO-layout folder (see :mod:`evo_fpn.data.coco`).
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
    repeats: int = 1  # one pass, as torchvision's FPN: at 3 repeats every neck lost to FPN (docs/benchmarks/cells.md)
    neck_norm: str = "batch"
    fpn_norm: str | None = None  # torchvision FPN's norm; None: neck_norm's, but none for "batch" (as shipped)
    norm_recal_batches: int = 0  # re-estimate the neck's BatchNorm statistics on this many train batches before eval
    anytime: bool = False  # deep supervision: the head also trains on every repeat's pyramid
    norm_decay: bool = True  # weight decay on norm weights and biases too (False: conv/linear weights only)
    cell_conv: str = "conv3x3"  # the conv of every cell: conv3x3 (the paper) or separable3x3 (NAS-FPNLite)
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
        need(self.cell_conv in CELL_CONVS, f"cell_conv must be one of {', '.join(CELL_CONVS)}, got {self.cell_conv!r}")
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
        """Hash of what the cached backbone and its features depend on: :data:`STAGE_FIELDS`
        (the dataset through :meth:`dataset_key`), never the trial's settings."""
        d = self.to_dict()
        return _hash({"v": CACHE_FORMAT_VERSION, **self.dataset_key(), **{k: d[k] for k in STAGE_KEY_FIELDS}})

    def stage_config(self) -> ProxyConfig:
        """The configuration the backbone stage runs on: :data:`STAGE_FIELDS` from this one,
        every other field at its default. So the stage cannot depend on a setting its key
        leaves out (a trial's norm, repeats, epochs ...): those always read as the default."""
        return type(self)(**{k: getattr(self, k) for k in STAGE_FIELDS})

    def build_detector(self, arch: ArchSpec | str, *, num_classes: int, with_backbone: bool) -> Detector:
        """The RetinaNet these settings describe for ``arch``."""
        return build_detector(
            arch,
            num_classes=num_classes,
            image_size=self.image_size,
            backbone=self.backbone,
            with_backbone=with_backbone,
            weights_path=self.backbone_weights,
            width=self.width,
            repeats=self.repeats,
            neck_norm=self.neck_norm,
            fpn_norm=self.fpn_norm,
            anytime=self.anytime,
            cell_conv=self.cell_conv,
            anchor_sizes=self.anchor_sizes,
            anchor_scales=self.anchor_scales,
            aspect_ratios=self.aspect_ratios,
            head_depth=self.head_depth,
            head_norm=self.head_norm,
            score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img,
        )

    def digits_config(self) -> DigitsConfig:
        return DigitsConfig(
            train_images=self.digits_train,
            val_images=self.digits_val,
            image_size=self.image_size,
            min_scale=min(self.digits_min_scale, self.image_size),
            max_scale=min(self.digits_max_scale, self.image_size),
            seed=self.digits_seed,
        )


STAGE_KEY_FIELDS: tuple[str, ...] = (
    "image_size", "resize", "backbone", "backbone_weights", "backbone_epochs", "backbone_seed", "width",
    "head_depth", "head_norm", "anchor_sizes", "anchor_scales", "aspect_ratios", "batch_size",
    "optimizer", "lr", "momentum", "weight_decay", "warmup_fraction", "clip_grad",
)  # fmt: skip
"""The recipe fields of the backbone stage, hashed into the cache key (this exact list and order:
existing caches keep their names)."""
DATASET_FIELDS: tuple[str, ...] = (
    "data", "train_split", "val_split", "digits_train", "digits_val", "digits_min_scale", "digits_max_scale",
    "digits_seed",
)  # fmt: skip
"""Which images: in the key through :meth:`ProxyConfig.dataset_key`."""
STAGE_FIELDS: tuple[str, ...] = (*DATASET_FIELDS, *STAGE_KEY_FIELDS)
"""Everything the backbone stage may read (:meth:`ProxyConfig.stage_config` keeps only these)."""

_LATER_FIELDS: dict[str, Any] = {
    "seeds": 1,
    "fpn_norm": None,
    "norm_recal_batches": 0,
    "anytime": False,
    "norm_decay": True,
    "cell_conv": "conv3x3",
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
    # Two seeds per trial, side by side on 2 CPU cores (one thread each). One repeat since the
    # depth finding (docs/benchmarks/cells.md): at 3 repeats published NAS-FPN
    # scored 0.1765 against torchvision FPN's 0.2536, at 1 repeat 0.2549. At 1 repeat: signal-
    # to-noise 11.6 with two seeds against 7.9 with one (20 architectures); Kendall tau 0.70 over
    # the 12 benchmark architectures against the 8-epoch end-to-end reference. A one-off ~21-26
    # minute backbone stage (24 epochs). 16 trial epochs, not 12: a seed's AP std fell from
    # 0.027 to 0.011.
    "default": ProxyConfig(seeds=2),
    # NAS-FPNLite's choices (mobile backbone, depthwise-separable cells) on the default proxy's
    # data, for a P3-P6 space (studies/lite.toml); torchvision's MobileNetV3, weights=None (no
    # download): its backbone stage trains it from scratch like the ResNet-10 of the others.
    "lite": ProxyConfig(
        backbone="mobilenet_v3_large",
        cell_conv="separable3x3",
        repeats=1,
        backbone_epochs=12.0,
        epochs=8.0,
        reports=2,
    ),
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
