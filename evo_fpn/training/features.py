"""The data a trial trains on: the dataset, and the cached backbone features every
cached-feature objective shares.

:class:`FeatureStore` loads the dataset (the built-in digits, generated on first use, or a
COCO-layout folder) and, in ``cached`` mode, the backbone stage: a backbone trained *once per
configuration* end to end with torchvision's plain FPN as a stand-in neck, frozen, and the
C3..C5 maps of every train and val image stored on disk under
``backbone-<ProxyConfig.backbone_key()>.pt``. Workers on one machine share it: one builds it
under a file lock, writes a temp file and renames it atomically, the others wait and load it,
so no half-written file is ever read. The stage runs on :meth:`ProxyConfig.stage_config`, so
a trial setting cannot change the stage without changing its key.

The key names a configuration, not a build: the same configuration trained on another machine,
thread count or code version follows another trajectory and gives other features (measured:
torchvision FPN's proxy AP 0.2358 on one build, 0.2498 on another). :func:`state_digest` names
the build, and every cached-feature trial records it (``backbone_build``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from evo_fpn.data.coco import DatasetError, Split, load_dataset
from evo_fpn.data.digits import build_digits, cache_root
from evo_fpn.model.cost import count_flops
from evo_fpn.model.detector import freeze
from evo_fpn.training.cache import load_verified
from evo_fpn.training.config import STAGE_FIELDS, ProxyConfig
from evo_fpn.training.evaluate import coco_ap
from evo_fpn.training.loop import Inputs, autocast, load_inputs, predict, resolve_device, train_detector


class FeatureStore:
    """Dataset plus (``cached`` mode) the frozen backbone's features, ready for training.

    After :meth:`prepare`: ``train`` and ``val`` (:class:`~evo_fpn.training.loop.Inputs`),
    ``num_classes``, and in cached mode ``backbone_state`` and ``backbone_flops`` (what the
    trial's cost counting needs of the backbone it does not run) and ``backbone_build`` (its
    :func:`state_digest`).
    """

    def __init__(
        self,
        config: ProxyConfig,
        *,
        device: str | torch.device = "auto",
        progress: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(device)
        self.progress = bool(progress)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
        self.train: Inputs | None = None
        self.val: Inputs | None = None
        self.num_classes = 0
        self.backbone_state: dict[str, Tensor] | None = None
        self.backbone_flops: int | None = None
        self.backbone_build: str | None = None
        self.prepare_seconds = 0.0

    @property
    def cached(self) -> bool:
        return self.config.backbone_mode == "cached"

    def prepare(self) -> FeatureStore:
        """Build or load the dataset and (cached mode) the backbone stage; idempotent."""
        if self.train is not None:
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
        self.num_classes = train_split.num_classes
        if self.cached:
            self._load_cache(train_split, val_split)
        else:
            self.train = load_inputs(train_split, cfg.image_size, cfg.resize, self.progress)
            self.val = load_inputs(val_split, cfg.image_size, cfg.resize, self.progress)
        self.prepare_seconds = time.perf_counter() - t0
        return self

    def cache_path(self) -> Path:
        return self.cache_dir / f"backbone-{self.config.backbone_key()}.pt"

    def cache_meta(self) -> dict[str, Any]:
        """Timing facts of the cached backbone stage (empty in end-to-end mode or before it exists)."""
        if not self.cached or not self.cache_path().is_file():
            return {}
        return dict(torch.load(self.cache_path(), map_location="cpu", weights_only=True)["meta"])

    def _load_cache(self, train_split: Split, val_split: Split) -> None:
        path = self.cache_path()
        blob = load_verified(
            path,
            lambda: build_stage(
                self.config.stage_config(), train_split, val_split, device=self.device, progress=self.progress
            ),
            what="backbone stage",
        )
        train = Inputs(train_split, blob["train_scales"], blob["train_targets"], features=blob["train"])
        val = Inputs(val_split, blob["val_scales"], blob["val_targets"], features=blob["val"])
        if len(train) != len(train_split) or len(val) != len(val_split):
            raise DatasetError(f"{path}: backbone cache does not match the dataset; delete the file to rebuild it")
        self.train, self.val = train, val
        self.backbone_state = blob["backbone"]
        self.backbone_flops = int(blob["backbone_flops"])
        self.backbone_build = state_digest(self.backbone_state)


def state_digest(state: Mapping[str, Tensor]) -> str:
    """12 hex digits of SHA-256 over a state dict's names, dtypes, shapes and values: equal for
    the same weights, so trials can tell which build of a backbone stage they trained on."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def build_stage(
    config: ProxyConfig, train_split: Split, val_split: Split, *, device: torch.device, progress: bool
) -> dict[str, Any]:
    """Train backbone + torchvision FPN + head end to end on ``config`` (a
    :meth:`~ProxyConfig.stage_config`), freeze the backbone, return it with the C3..C5 maps of
    every image (fp16) and the stage's facts."""
    train = load_inputs(train_split, config.image_size, config.resize, progress)
    val = load_inputs(val_split, config.image_size, config.resize, progress)
    torch.manual_seed(config.backbone_seed)
    model = config.build_detector("torchvision_fpn", num_classes=train_split.num_classes, with_backbone=True)
    model = model.to(device)
    t0 = time.perf_counter()
    if config.backbone_epochs > 0:
        train_detector(
            model,
            train,
            config=config,
            epochs=config.backbone_epochs,
            device=device,
            seed=config.backbone_seed,
            progress=progress,
            desc="backbone stage",
        )
    stage_seconds = time.perf_counter() - t0
    stage_metrics = coco_ap(val_split.coco_gt, predict(model, val, device=device, progress=progress))
    assert model.backbone is not None
    backbone = freeze(model.backbone)
    feats = {}
    t1 = time.perf_counter()
    for name, data in (("train", train), ("val", val)):
        maps: list[list[Tensor]] = [[], [], []]
        with torch.no_grad():
            for start in tqdm(range(0, len(data), 64), desc=f"cache {name}", disable=not progress, leave=False):
                assert data.images is not None
                x = model.normalize(data.images[start : start + 64].to(device))
                with autocast(device):
                    out = backbone(x)
                for k, f in enumerate(out):
                    maps[k].append(f.half().cpu())
        feats[name] = [torch.cat(m) for m in maps]
    cache_seconds = time.perf_counter() - t1
    backbone_cpu = backbone.to("cpu")
    return {
        "backbone": backbone_cpu.state_dict(),
        "backbone_flops": count_flops(backbone_cpu, torch.zeros(1, 3, config.image_size, config.image_size)),
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
            "config": {k: config.to_dict()[k] for k in STAGE_FIELDS},
        },
    }
