"""pycocotools' bbox ``COCOeval.evaluate`` + ``accumulate`` in array operations, to the bit.

pycocotools matches detections to ground truth in Python loops, one call per (image, category,
area range) and one iteration per (threshold, detection, ground truth): most of a supernet
trial's scoring. This module does the same greedy matching for all (image, category, area
range, threshold) cells at once, one step per detection rank, and the same accumulation
(the same stable sorts, cumulative sums and divisions in float64, so the precision array is
pycocotools' own to the last bit); pycocotools' ``summarize`` then reads it. The IoU is
pycocotools' ``bbIou`` (``maskUtils.iou``) in the same float64 operations.

It covers what the project's ground truth has: boxes, no crowd regions, nonzero annotation
ids. :func:`supported` says whether a ground truth qualifies; anything else goes to
pycocotools (:func:`evo_fpn.training.evaluate.coco_ap_arrays`), which stays the reference:
tests/test_evaluate_arrays.py compares the two on random detections of the digits data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RNG = ((0.0, 1e5**2), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e5**2))
"""pycocotools' ``Params(iouType="bbox")`` defaults (the same expressions)."""


def supported(gt: Mapping[str, Any]) -> bool:
    """Whether :func:`evaluate` scores ``gt`` exactly as pycocotools: no crowd, no 0 id."""
    return all(not a.get("iscrowd", 0) and a.get("id", 0) != 0 and "ignore" not in a for a in gt["annotations"])


class GroundTruth:
    """A ground truth's boxes as arrays, grouped by (image, category) cell, built once per split."""

    def __init__(self, gt: Mapping[str, Any]) -> None:
        self.img_ids = sorted({int(i["id"]) for i in gt["images"]})
        self.cat_ids = sorted({int(c["id"]) for c in gt["categories"]})
        self.img_index = {i: n for n, i in enumerate(self.img_ids)}
        self.cat_index = {c: n for n, c in enumerate(self.cat_ids)}
        anns = [a for a in gt["annotations"] if a["image_id"] in self.img_index and a["category_id"] in self.cat_index]
        cat = np.array([self.cat_index[a["category_id"]] for a in anns], dtype=np.int64)
        cell = np.array([self.img_index[a["image_id"]] for a in anns], dtype=np.int64) * len(self.cat_ids) + cat
        area = np.array([float(a["area"]) for a in anns], dtype=np.float64)
        boxes = np.array([[float(v) for v in a["bbox"]] for a in anns], dtype=np.float64).reshape(-1, 4)
        # padded per cell, in the file's order within a cell (pycocotools keeps it)
        self.cells, first, counts = np.unique(cell, return_index=True, return_counts=True)
        g_max = int(counts.max()) if len(counts) else 0
        order = np.argsort(cell, kind="stable")
        slot = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
        row = np.repeat(np.arange(len(self.cells)), counts)
        self.boxes = np.zeros((len(self.cells), g_max, 4))
        self.areas = np.zeros((len(self.cells), g_max))
        self.valid = np.zeros((len(self.cells), g_max), dtype=bool)
        self.boxes[row, slot] = boxes[order]
        self.areas[row, slot] = area[order]
        self.valid[row, slot] = True
        # non-ignored ground truth of each (category, area range): pycocotools' npig
        self.npig = np.zeros((len(self.cat_ids), len(AREA_RNG)), dtype=np.int64)
        for a, (lo, hi) in enumerate(AREA_RNG):
            np.add.at(self.npig[:, a], cat[(area >= lo) & (area <= hi)], 1)


def bb_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``maskUtils.iou`` of boxes ``dt`` (..., 4) and ``gt`` (..., 4), broadcast, no crowd: the
    C code's float64 steps (``bbIou``), so the same numbers to the bit."""
    da = dt[..., 2] * dt[..., 3]
    ga = gt[..., 2] * gt[..., 3]
    w = np.minimum(dt[..., 0] + dt[..., 2], gt[..., 0] + gt[..., 2]) - np.maximum(dt[..., 0], gt[..., 0])
    h = np.minimum(dt[..., 1] + dt[..., 3], gt[..., 1] + gt[..., 3]) - np.maximum(dt[..., 1], gt[..., 1])
    i = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        o = i / (da + ga - i)
    return np.where((w > 0) & (h > 0), o, 0.0)


def evaluate(truth: GroundTruth, dets: np.ndarray) -> dict[str, np.ndarray]:
    """pycocotools' ``eval`` dict (``precision`` T x R x K x A x M, ``recall`` T x K x A x M) of
    ``dets`` (``N x 7``: image id, x, y, w, h, score, category id, in the order loadRes reads)."""
    T, R, K, A, M = len(IOU_THRS), len(REC_THRS), len(truth.cat_ids), len(AREA_RNG), len(MAX_DETS)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    keep = np.array([int(c) in truth.cat_index for c in dets[:, 6]], dtype=bool)
    dets = dets[keep]
    img = np.array([truth.img_index[int(i)] for i in dets[:, 0]], dtype=np.int64)
    cat = np.array([truth.cat_index[int(c)] for c in dets[:, 6]], dtype=np.int64)
    # each (image, category) cell's detections as pycocotools orders them: a stable sort by score, top 100
    order = np.lexsort((np.arange(len(dets)), -dets[:, 5], cat, img))
    dets, img, cat = dets[order], img[order], cat[order]
    cell = img * K + cat
    _, starts, counts = np.unique(cell, return_index=True, return_counts=True)
    rank = np.arange(len(dets)) - np.repeat(starts, counts)
    top = rank < MAX_DETS[-1]
    dets, img, cat, cell, rank = dets[top], img[top], cat[top], cell[top], rank[top]
    area = dets[:, 3] * dets[:, 4]
    dtm = np.zeros((A, T, len(dets)), dtype=bool)
    dt_ig = np.zeros((A, T, len(dets)), dtype=bool)
    _match(truth, dets, cell, rank, dtm, dt_ig)
    for a, (lo, hi) in enumerate(AREA_RNG):
        dt_ig[a] |= ~dtm[a] & ((area < lo) | (area > hi))[None, :]
    for k in range(K):
        of_k = np.flatnonzero(cat == k)  # by image, then rank: pycocotools' concatenation
        for a in range(A):
            npig = int(truth.npig[k, a])
            if npig == 0:
                continue
            for m, max_det in enumerate(MAX_DETS):
                sel = of_k[rank[of_k] < max_det]
                inds = np.argsort(-dets[sel, 5], kind="mergesort")
                sel = sel[inds]
                tps = np.logical_and(dtm[a][:, sel], np.logical_not(dt_ig[a][:, sel]))
                fps = np.logical_and(np.logical_not(dtm[a][:, sel]), np.logical_not(dt_ig[a][:, sel]))
                tp_sum = np.cumsum(tps, axis=1).astype(dtype=float)
                fp_sum = np.cumsum(fps, axis=1).astype(dtype=float)
                nd = len(sel)
                if not nd:
                    recall[:, k, a, m] = 0
                    precision[:, :, k, a, m] = 0
                    continue
                rc = tp_sum / npig
                pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
                recall[:, k, a, m] = rc[:, -1]
                env = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                for t in range(T):
                    at = np.searchsorted(rc[t], REC_THRS, side="left")
                    precision[t, :, k, a, m] = np.where(at < nd, env[t, np.minimum(at, nd - 1)], 0.0)
    return {"precision": precision, "recall": recall}


def _match(
    truth: GroundTruth, dets: np.ndarray, cell: np.ndarray, rank: np.ndarray, dtm: np.ndarray, dt_ig: np.ndarray
) -> None:
    """pycocotools' greedy matching (``evaluateImg``), every cell, area range and threshold at
    once, one step per detection rank: each detection in score order takes the unmatched ground
    truth of highest IoU >= the threshold (the last of equals), non-ignored ground truth first.
    Fills ``dtm`` (matched) and ``dt_ig`` (matched to ignored ground truth), both A x T x N."""
    if not len(truth.cells) or not len(dets):
        return
    where = np.searchsorted(truth.cells, cell)
    has = (where < len(truth.cells)) & (truth.cells[np.minimum(where, len(truth.cells) - 1)] == cell)
    det = np.flatnonzero(has)  # detections in a cell with ground truth
    c = where[det]
    valid = truth.valid[c]
    ious = np.where(valid, bb_iou(dets[det, None, 1:5], truth.boxes[c]), -np.inf)  # (n, G)
    thr = np.minimum(IOU_THRS, 1 - 1e-10)
    cand = (ious >= thr[0]).any(axis=1)  # only these can match at any threshold
    det, c, ious = det[cand], c[cand], ious[cand]
    if not len(det):
        return
    cells, c_row = np.unique(c, return_inverse=True)
    _, first = np.unique(c_row, return_index=True)
    step = np.arange(len(det)) - first[c_row]  # the k-th candidate of its cell (det is in (cell, rank) order)
    n_cells, G = len(cells), ious.shape[1]
    ignored = np.stack([(truth.areas[cells] < lo) | (truth.areas[cells] > hi) for lo, hi in AREA_RNG])  # (A, cells, G)
    gtm = np.zeros((len(AREA_RNG), n_cells, len(thr), G), dtype=bool)
    for s in range(int(step.max()) + 1):
        now = np.flatnonzero(step == s)
        rows = c_row[now]
        iou = ious[now]  # (n, G)
        free = ~gtm[:, rows] & (iou[None, :, None, :] >= thr[None, None, :, None])  # (A, n, T, G)
        m = np.full(free.shape[:3], -1)
        for group in (~ignored[:, rows], ignored[:, rows]):  # (A, n, G)
            ok = free & group[:, :, None, :] & (m[..., None] < 0)
            vals = np.where(ok, iou[None, :, None, :], -np.inf)
            best = vals.max(axis=-1)
            last = G - 1 - np.argmax((vals == best[..., None])[..., ::-1], axis=-1)
            m = np.where(np.isfinite(best) & (m < 0), last, m)
        hit = m >= 0  # (A, n, T)
        a_i, n_i, t_i = np.nonzero(hit)
        gtm[a_i, rows[n_i], t_i, m[hit]] = True
        dtm[a_i, t_i, det[now][n_i]] = True
        dt_ig[a_i, t_i, det[now][n_i]] = ignored[a_i, rows[n_i], m[hit]]
