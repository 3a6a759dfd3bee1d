"""Training and prediction of a detector: the loop every objective shares, and nothing else.

:func:`train_detector` is AdamW or SGD with linear warm-up, cosine decay and gradient
clipping on seeded batches; it reports through callbacks (intermediate evaluation, steps for
another process's progress bar) and raises :class:`~evo_fpn.errors.TrialFailed` on a
non-finite loss. :func:`predict` turns a detector's output into COCO results for
:func:`evo_fpn.training.evaluate.coco_ap`. :class:`Inputs` is one split ready for training: images,
or cached C3..C5 maps (:mod:`evo_fpn.training.features`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from evo_fpn.data.coco import DetectionDataset, Split
from evo_fpn.errors import TrialFailed, UsageError
from evo_fpn.model.detector import Detector
from evo_fpn.training.config import ProxyConfig


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


MEMORY_LIMIT_BYTES = 2 * 1024**3
"""Splits whose resized images fit in this many bytes are decoded once and kept in memory."""


@dataclass
class Inputs:
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


def load_inputs(split: Split, image_size: int, resize: str, progress: bool) -> Inputs:
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
        return Inputs(split=split, scales=scales, targets=targets, dataset=ds)
    images = torch.empty((len(ds), 3, image_size, image_size), dtype=torch.uint8)
    for i in tqdm(range(len(ds)), desc=f"load {split.name}", disable=not progress, leave=False):
        images[i] = ds[i][0]
    return Inputs(split=split, scales=scales, targets=targets, images=images)


def make_optimizer(params: list[torch.nn.Parameter], config: ProxyConfig, total_steps: int):  # type: ignore[no-untyped-def]
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


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def total_steps(images: int, batch_size: int, epochs: float) -> int:
    """Optimiser steps of ``epochs`` epochs over ``images`` images (whole batches, at least 1)."""
    return max(1, int(round(epochs * max(1, images // batch_size))))


def train_detector(
    model: Detector,
    train: Inputs,
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
    total = total_steps(len(train), config.batch_size, epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = make_optimizer(params, config, total)
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
            with autocast(device):
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
    model: Detector, train: Inputs, *, batches: int, config: ProxyConfig, device: torch.device
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
            with autocast(device):
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


def detections_to_coco(
    data: Inputs, dets: Sequence[dict[str, Tensor]], indices: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """COCO results of torchvision detections of ``data``'s images ``indices`` (default: all, in
    order): the dicts pycocotools reads, in original image coordinates and dataset category ids."""
    out: list[dict[str, Any]] = []
    split = data.split
    for i, det in zip(range(len(dets)) if indices is None else indices, dets, strict=True):
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


def detections_to_array(data: Inputs, dets: Sequence[dict[str, Tensor]]) -> np.ndarray:
    """The same results as :func:`detections_to_coco`, as pycocotools' ``N x 7`` array
    ``[image_id, x, y, w, h, score, category_id]`` (float64, the same numbers to the last bit:
    float32 boxes over float32 scales, then the width in float64), without a dict a detection."""
    split = data.split
    cat_of = np.asarray(split.cat_ids, dtype=np.float64)
    rows = []
    for i, det in enumerate(dets):
        n = int(det["scores"].numel())
        if not n:
            continue
        sx, sy = data.scales[i]
        boxes = det["boxes"].float().cpu().numpy() / np.array([sx, sy, sx, sy], dtype=np.float32)
        b = boxes.astype(np.float64)
        block = np.empty((n, 7), dtype=np.float64)
        block[:, 0] = split.image_ids[i]
        block[:, 1:3] = b[:, :2]
        block[:, 3:5] = b[:, 2:] - b[:, :2]
        block[:, 5] = det["scores"].float().cpu().numpy()
        block[:, 6] = cat_of[det["labels"].cpu().numpy()]
        rows.append(block)
    return np.concatenate(rows) if rows else np.zeros((0, 7), dtype=np.float64)


def detect(model: Detector, data: Inputs, *, device: torch.device, batch_size: int = 32) -> list[dict[str, Tensor]]:
    """torchvision's detections (boxes in input pixels, scores, labels) of every image of
    ``data``, in order, under ``torch.inference_mode``; from cached features, decoded a batch
    at a time (:func:`postprocess_batch`)."""
    model.eval()
    out: list[dict[str, Tensor]] = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            inputs, _ = data.batch(list(range(start, min(start + batch_size, len(data)))), device)
            with autocast(device):
                if not isinstance(inputs, list):
                    out.extend(model(inputs))
                    continue
                feats = list(model.neck(list(inputs)).values())
                head = model.retina.head(feats)
            out.extend(postprocess_batch(model, feats, head))
    return out


def postprocess_batch(model: Detector, feats: list[Tensor], head: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """``RetinaNet.postprocess_detections`` for a batch of equal-sized images, a level at a time
    for the whole batch instead of an (image, level) at a time: per image and level the
    ``topk_candidates`` best scores over ``score_thresh``, decoded and clipped, then per image
    class-wise NMS and the ``detections_per_img`` best. The same detections up to float
    rounding (ties and the vector width of elementwise ops; tests/test_evaluate_arrays.py)."""
    from torchvision.ops import boxes as box_ops

    retina = model.retina
    image_list, anchors = model._anchors(feats)
    batch = feats[0].shape[0]
    per_level = [x.size(2) * x.size(3) for x in feats]
    num_a = head["cls_logits"].size(1) // sum(per_level)
    per_level = [n * num_a for n in per_level]
    logits = head["cls_logits"].float().split(per_level, dim=1)
    regression = head["bbox_regression"].float().split(per_level, dim=1)
    image_shape = image_list.image_sizes[0]
    boxes, scores, labels, owner = [], [], [], []
    for lg, reg, anc in zip(logits, regression, anchors[0].split(per_level), strict=True):
        num_classes = lg.shape[-1]
        flat = torch.sigmoid(lg).flatten(1)  # (batch, anchors x classes)
        k = min(retina.topk_candidates, flat.shape[1])
        top, idx = flat.masked_fill(flat <= retina.score_thresh, -1.0).topk(k, dim=1)
        valid = top > retina.score_thresh
        img = torch.arange(batch).unsqueeze(1).expand(-1, k)[valid]
        idx = idx[valid]
        anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
        decoded = retina.box_coder.decode_single(reg[img, anchor_idx], anc[anchor_idx])
        boxes.append(box_ops.clip_boxes_to_image(decoded, image_shape))
        scores.append(top[valid])
        labels.append(idx % num_classes)
        owner.append(img)
    # each image's candidates in torchvision's order: level by level, best first within a level
    order = torch.sort(torch.cat(owner), stable=True).indices
    all_boxes, all_scores, all_labels = torch.cat(boxes)[order], torch.cat(scores)[order], torch.cat(labels)[order]
    counts = torch.bincount(torch.cat(owner), minlength=batch).tolist()
    out = []
    for b, s, lab in zip(all_boxes.split(counts), all_scores.split(counts), all_labels.split(counts), strict=True):
        keep = box_ops.batched_nms(b, s, lab, retina.nms_thresh)[: retina.detections_per_img]
        out.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
    return out


def predict_arrays(model: Detector, data: Inputs, *, device: torch.device, batch_size: int = 32) -> np.ndarray:
    """:func:`predict` as one ``N x 7`` array (:func:`detections_to_array`), for
    :func:`evo_fpn.training.evaluate.coco_ap_arrays`."""
    return detections_to_array(data, detect(model, data, device=device, batch_size=batch_size))


@torch.no_grad()
def predict(
    model: Detector, data: Inputs, *, device: torch.device, batch_size: int = 32, progress: bool = True
) -> list[dict[str, Any]]:
    """COCO-format detections (original image coordinates, dataset category ids)."""
    model.eval()
    out: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(data), batch_size), desc="eval", disable=not progress, leave=False):
        idx = list(range(start, min(start + batch_size, len(data))))
        inputs, _ = data.batch(idx, device)
        with autocast(device):
            dets = model.forward_features(inputs) if isinstance(inputs, list) else model(inputs)
        out.extend(detections_to_coco(data, dets, idx))
    return out
