"""Where a supernet trial's time goes, stage by stage, against the floor of its forward pass.

:func:`profile` runs the steps of :meth:`evo_fpn.tasks.supernet.SupernetTask.evaluate` one at a
time for a few architectures (the legacy path: per-detection dicts and pycocotools, as the code
before issue 31 scored; then the shipped path), timing each: cost counting, restoring the state
and wiring, BatchNorm re-estimation, the neck + head forward over the val split, box decoding +
NMS (torchvision's ``postprocess_detections``), building the detection dicts, pycocotools'
``loadRes`` / ``evaluate`` / ``accumulate``. :func:`floor` is the forward pass's FLOPs (the cost
counter's neck + head, per image, times the val images and the re-estimation batches) over this
machine's measured 1-thread conv throughput: how far the forward is from the hardware.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from evo_fpn.arch.spec import ArchSpec
from evo_fpn.tasks.supernet import SupernetTask
from evo_fpn.training.evaluate import coco_ap_arrays
from evo_fpn.training.loop import autocast, detections_to_coco, postprocess_batch, recalibrate_norms

STAGES: tuple[str, ...] = (
    "costs", "restore + wire", "BN re-estimation", "neck + head forward", "decode + NMS",
    "detection dicts", "loadRes", "evaluate", "accumulate + summarize",
)  # fmt: skip


def _conv_gflops(channels: int, size: int, batch: int, repeats: int = 20, rounds: int = 5) -> float:
    """Measured GFLOP/s of one 3x3 conv (the cells' and the head's op) at the current thread
    count: the best of ``rounds`` (the machine's, less the load's, share)."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
    x = torch.randn(batch, channels, size, size)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            conv(x)
        flops = counter.get_total_flops()
        for _ in range(3):
            conv(x)
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(repeats):
                conv(x)
            best = min(best, time.perf_counter() - t)
        return flops * repeats / best / 1e9


def floor(task: SupernetTask, spec: ArchSpec) -> dict[str, Any]:
    """The forward pass's compute floor for ``spec``: neck + head FLOPs over the val images
    (and the neck's over the re-estimation batches) at this machine's measured conv throughput."""
    costs = task.costs(spec)
    assert task.store.val is not None
    per_image = costs["total_flops"] - (task.store.backbone_flops or 0)  # neck + head
    n_val = len(task.store.val)
    recal_images = task.supernet.recal_batches * task.config.batch_size
    flops = per_image * n_val + costs["neck_flops"] * recal_images
    size = max(1, task.config.image_size // 8)
    gflops = _conv_gflops(task.config.width, size, task.config.batch_size)
    return {
        "neck_head_gflops_per_image": per_image / 1e9,
        "val_images": n_val,
        "recal_images": recal_images,
        "trial_gflops": flops / 1e9,
        "conv_gflops_per_s": gflops,
        "floor_seconds": flops / 1e9 / gflops,
        "threads": torch.get_num_threads(),
    }


def _forward(task: SupernetTask, batch_size: int, legacy: bool = True) -> tuple[list[Any], float, float]:
    """The val split through neck + head, then decoding + NMS (torchvision's, image by image,
    or ``postprocess_batch``'s), timed apart."""
    model, data = task.model, task.store.val
    assert model is not None and data is not None
    model.eval()
    fwd = post = 0.0
    out: list[Any] = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            t = time.perf_counter()
            inputs, _ = data.batch(idx, task.store.device)
            with autocast(task.store.device):
                feats = list(model.neck(list(inputs)).values())
                head = model.retina.head(feats)
            t1 = time.perf_counter()
            if not legacy:
                out.extend(postprocess_batch(model, feats, head))
                t2 = time.perf_counter()
                fwd, post = fwd + t1 - t, post + t2 - t1
                continue
            image_list, anchors = model._anchors(feats)
            per_level = [x.size(2) * x.size(3) for x in feats]
            num_a = head["cls_logits"].size(1) // sum(per_level)
            per_level = [n * num_a for n in per_level]
            split = {k: list(v.float().split(per_level, dim=1)) for k, v in head.items()}
            split_anchors = [list(a.split(per_level)) for a in anchors]
            out.extend(model.retina.postprocess_detections(split, split_anchors, image_list.image_sizes))
            t2 = time.perf_counter()
            fwd, post = fwd + t1 - t, post + t2 - t1
    return out, fwd, post


def profile_trial(task: SupernetTask, spec: ArchSpec, *, legacy: bool, batch_size: int = 32) -> dict[str, float]:
    """Seconds of each stage of one trial (``legacy``: the pre-issue-31 scoring path)."""
    import copy

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    task.prepare()
    assert task.model is not None and task.store.val is not None
    s: dict[str, float] = {}
    t = time.perf_counter()
    if legacy:  # the Objective's count, then evaluate's own
        task.proxy.costs(spec)
        task.proxy.costs(spec)
    else:  # counted once, remembered for evaluate
        task._costs.clear()
        task.costs(spec)
        task.costs(spec)
    s["costs"] = time.perf_counter() - t
    t = time.perf_counter()
    task.model.neck.use(spec)
    shot = task.shot(spec)
    task.model.load_state_dict(task._state if shot is None else task._shots[shot])
    s["restore + wire"] = time.perf_counter() - t
    t = time.perf_counter()
    recalibrate_norms(
        task.model, task.store.train, batches=task.supernet.recal_batches, config=task.config, device=task.store.device
    )
    s["BN re-estimation"] = time.perf_counter() - t
    dets, s["neck + head forward"], s["decode + NMS"] = _forward(task, batch_size, legacy)
    gt = task.store.val.split.coco_gt
    t = time.perf_counter()
    if legacy:
        coco = detections_to_coco(task.store.val, dets)
    else:
        arrays = predict_arrays_from(task, dets)
    s["detection dicts"] = time.perf_counter() - t
    with contextlib.redirect_stdout(io.StringIO()):
        t = time.perf_counter()
        if legacy:
            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(dict(gt))
            coco_gt.dataset.setdefault("info", {})
            coco_gt.createIndex()
            for k, d in enumerate(coco):
                d["id"] = k + 1
            coco_dt = coco_gt.loadRes(coco)
            ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
            s["loadRes"] = time.perf_counter() - t
            t = time.perf_counter()
            ev.evaluate()
            s["evaluate"] = time.perf_counter() - t
            t = time.perf_counter()
            ev.accumulate()
            ev.summarize()
            s["accumulate + summarize"] = time.perf_counter() - t
        else:
            stages: dict[str, float] = {}
            coco_ap_arrays(gt, arrays, timings=stages)
            s.update(stages)
    return s


def predict_arrays_from(task: SupernetTask, dets: Sequence[dict[str, Any]]) -> np.ndarray:
    """The shipped path's detections array from already decoded detections (for timing apart)."""
    from evo_fpn.training.loop import detections_to_array

    assert task.store.val is not None
    return detections_to_array(task.store.val, dets)


def profile(task: SupernetTask, specs: Sequence[ArchSpec], *, legacy: bool) -> dict[str, Any]:
    """Median seconds of each stage over ``specs`` and each stage's share of their sum."""
    runs = [profile_trial(task, spec, legacy=legacy) for spec in specs]
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in STAGES}
    total = sum(med.values())
    return {"stages": med, "total": total, "trials": len(runs)}


def print_profile(old: dict[str, Any], new: dict[str, Any], fl: dict[str, Any]) -> None:
    head = f"stage (median of {old['trials']})"
    print(f"{head:<26} {'previous s':>10} {'share':>6} {'shipped s':>10} {'share':>6}")
    for k in STAGES:
        a, b = old["stages"][k], new["stages"][k]
        print(f"{k:<26} {a:10.3f} {a / old['total']:6.1%} {b:10.3f} {b / max(new['total'], 1e-9):6.1%}")
    print(f"{'total':<26} {old['total']:10.3f} {'':>6} {new['total']:10.3f}")
    print(
        f"floor: neck + head {fl['neck_head_gflops_per_image']:.3f} GFLOPs an image x {fl['val_images']} val images "
        f"+ neck over {fl['recal_images']} re-estimation images = {fl['trial_gflops']:.1f} GFLOPs; measured 3x3 conv "
        f"{fl['conv_gflops_per_s']:.1f} GFLOP/s on {fl['threads']} thread -> {fl['floor_seconds']:.3f} s a trial"
    )
