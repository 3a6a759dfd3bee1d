"""COCO AP with pycocotools' ``COCOeval``, quietly, and well defined for empty inputs."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evo_fpn.record import AP_METRICS as METRIC_NAMES  # the first six entries of COCOeval.stats, in order


def coco_ap(gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """AP breakdown of ``detections`` against a COCO-format ground-truth dict.

    ``detections`` are COCO results: ``{"image_id", "category_id", "bbox": [x, y, w, h],
    "score"}`` in original image coordinates. No detections gives 0.0 everywhere (pycocotools
    itself would fail on an empty list). COCOeval writes -1 for an area range without ground
    truth; we report 0.0 there so every value lies in [0, 1].
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections or not gt.get("annotations"):
        return dict.fromkeys(METRIC_NAMES, 0.0)
    dets = [dict(d) for d in detections]
    for k, d in enumerate(dets):
        x, y, w, h = (float(v) for v in d["bbox"])
        d["bbox"] = [x, y, w, h]
        d["score"] = float(d["score"])
        d.setdefault("id", k + 1)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(dict(gt))
        coco_gt.dataset.setdefault("info", {})
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = np.asarray(ev.stats[: len(METRIC_NAMES)], dtype=float)
    return {name: float(max(v, 0.0)) for name, v in zip(METRIC_NAMES, stats, strict=True)}


def gt_as_detections(gt: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ground truth as detections with score 1 (a perfect detector, for checks)."""
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in gt["annotations"]
        if not a.get("iscrowd", 0)
    ]
