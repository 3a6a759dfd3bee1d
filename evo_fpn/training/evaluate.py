"""COCO AP with pycocotools' ``COCOeval``, quietly, and well defined for empty inputs."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evo_fpn.record import AP_METRICS as METRIC_NAMES  # the first six entries of COCOeval.stats, in order

SIZE_METRICS: tuple[str, ...] = METRIC_NAMES[3:]
"""APs, APm, APl: COCOeval's area ranges after "all", in its order."""


def sizes_present(gt: Mapping[str, Any]) -> set[str]:
    """The metrics of :data:`SIZE_METRICS` that have ground truth (non-crowd) in ``gt``, by
    COCOeval's own area ranges (both ends inclusive, as it applies them to an ``area``)."""
    from pycocotools.cocoeval import Params

    ranges = Params(iouType="bbox").areaRng[1:]
    areas = [float(a["area"]) for a in gt.get("annotations", ()) if not a.get("iscrowd", 0)]
    return {name for name, (lo, hi) in zip(SIZE_METRICS, ranges, strict=True) if any(lo <= x <= hi for x in areas)}


def coco_ap(gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """AP breakdown of ``detections`` against a COCO-format ground-truth dict.

    ``detections`` are COCO results: ``{"image_id", "category_id", "bbox": [x, y, w, h],
    "score"}`` in original image coordinates. No detections gives 0.0 (pycocotools itself
    would fail on an empty list). An area range without ground truth (COCOeval's -1) is
    ``None``, not 0.0: the built-in 128-px digits have no object of COCO's "large" size, and a
    0.0 there read like a detector that failed on large objects. AP, AP50 and AP75 are always
    floats in [0, 1] (0.0 without any ground truth), so they can be a study's value.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections or not gt.get("annotations"):
        present = sizes_present(gt)
        return {name: 0.0 if name not in SIZE_METRICS or name in present else None for name in METRIC_NAMES}
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
    return _stats(ev.stats)


_GT_CACHE: list[tuple[Mapping[str, Any], str, Any]] = []
"""The last few ground truths, by identity, as each evaluator reads them: a split's ground
truth is indexed once per process, not once per trial (pycocotools' COCOeval only adds its
``ignore`` flags to the annotations, the same every time)."""


def _indexed(gt: Mapping[str, Any], kind: str) -> Any:
    for held, k, obj in _GT_CACHE:
        if held is gt and k == kind:
            return obj
    if kind == "arrays":
        from evo_fpn.training.coco_arrays import GroundTruth

        obj: Any = GroundTruth(gt)
    else:
        from pycocotools.coco import COCO

        obj = COCO()
        obj.dataset = copy.deepcopy(dict(gt))
        obj.dataset.setdefault("info", {})
        obj.createIndex()
    _GT_CACHE[:] = [*_GT_CACHE[-3:], (gt, kind, obj)]
    return obj


EVALUATORS: tuple[str, ...] = ("auto", "arrays", "pycocotools")


def coco_ap_arrays(
    gt: Mapping[str, Any],
    detections: np.ndarray,
    *,
    timings: dict[str, float] | None = None,
    evaluator: str = "auto",
) -> dict[str, float | None]:
    """:func:`coco_ap` of detections given as pycocotools' ``N x 7`` array ``[image_id, x, y, w,
    h, score, category_id]`` (:func:`evo_fpn.training.loop.predict_arrays`): the same numbers to
    the last digit, without a Python dict a detection or indexing the ground truth each call.

    ``evaluator``: ``arrays`` (:mod:`evo_fpn.training.coco_arrays`, pycocotools' matching and
    accumulation in array operations; its ``summarize``), ``pycocotools`` (the reference), or
    ``auto``: arrays where the ground truth qualifies (no crowd regions), else pycocotools.
    ``timings``: filled with the seconds of ``loadRes``, ``evaluate`` and ``accumulate + summarize``.
    """
    import time

    from pycocotools.cocoeval import COCOeval

    from evo_fpn.training import coco_arrays

    if evaluator not in EVALUATORS:
        raise ValueError(f"evaluator must be one of {', '.join(EVALUATORS)}, got {evaluator!r}")
    if not len(detections) or not gt.get("annotations"):
        return coco_ap(gt, [])
    dets = np.ascontiguousarray(detections, dtype=np.float64)
    if evaluator == "arrays" or (evaluator == "auto" and coco_arrays.supported(gt)):
        t0 = time.perf_counter()
        ev = COCOeval(iouType="bbox")  # pycocotools' summarize over our eval arrays
        ev.eval = coco_arrays.evaluate(_indexed(gt, "arrays"), dets)
        t1 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            ev.summarize()
        if timings is not None:
            timings.update({"loadRes": 0.0, "evaluate": t1 - t0, "accumulate + summarize": time.perf_counter() - t1})
        return _stats(ev.stats)
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        coco_gt = _indexed(gt, "pycocotools")
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), iouType="bbox")
        t1 = time.perf_counter()
        ev.evaluate()
        t2 = time.perf_counter()
        ev.accumulate()
        ev.summarize()
        t3 = time.perf_counter()
    if timings is not None:
        timings.update({"loadRes": t1 - t0, "evaluate": t2 - t1, "accumulate + summarize": t3 - t2})
    return _stats(ev.stats)


def _stats(raw: Any) -> dict[str, float | None]:
    stats = np.asarray(raw[: len(METRIC_NAMES)], dtype=float)
    return {
        name: None if v < 0 and name in SIZE_METRICS else float(max(v, 0.0))
        for name, v in zip(METRIC_NAMES, stats, strict=True)
    }


def gt_as_detections(gt: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ground truth as detections with score 1 (a perfect detector, for checks)."""
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in gt["annotations"]
        if not a.get("iscrowd", 0)
    ]
