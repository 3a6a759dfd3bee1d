"""The fast scoring path gives the reference's numbers to the last digit on the project's data.

The reference is :func:`coco_ap` over per-detection dicts with pycocotools; the fast path is
one ``N x 7`` array (:func:`detections_to_array`) scored by :func:`coco_ap_arrays`, with
pycocotools or with :mod:`evo_fpn.training.coco_arrays` (its matching in array operations).
The detections are the built-in digits' val ground truth jittered, relabelled and mixed with
false positives, with tied scores, so every branch of COCO's matching (ties, misses, area
ranges, the 100 limit) is hit.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from evo_fpn.data.coco import load_split
from evo_fpn.data.digits import DigitsConfig, build_digits
from evo_fpn.training.evaluate import coco_ap, coco_ap_arrays
from evo_fpn.training.loop import Inputs, detections_to_array, detections_to_coco


@pytest.fixture(scope="module")
def val(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = build_digits(DigitsConfig(train_images=4, val_images=80, seed=3), tmp_path_factory.mktemp("digits"))
    split = load_split(Path(root), "val")
    rng = np.random.default_rng(0)
    scales = [(float(s), float(s)) for s in rng.uniform(0.4, 1.6, len(split))]  # resized pixels -> original
    return Inputs(split=split, scales=scales, targets=[])


def fake_detections(val: Inputs, seed: int, per_image: int) -> list[dict[str, torch.Tensor]]:
    """torchvision-style detections (boxes in resized pixels) of ``val``: jittered ground truth,
    some relabelled, plus random boxes; scores quantised so that many tie."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (boxes, labels) in enumerate(zip(val.split.boxes, val.split.labels, strict=True)):
        sx, sy = val.scales[i]
        n_fp = int(rng.integers(0, per_image))
        b = np.concatenate([boxes + rng.normal(0, 3, boxes.shape), rng.uniform(0, 100, (n_fp, 4))])
        b = np.stack([np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
                      np.maximum(b[:, 0], b[:, 2]) + 1, np.maximum(b[:, 1], b[:, 3]) + 1], axis=1)  # fmt: skip
        lab = np.concatenate([labels, rng.integers(0, val.split.num_classes, n_fp)])
        flip = rng.random(len(lab)) < 0.2
        lab[flip] = rng.integers(0, val.split.num_classes, int(flip.sum()))
        scores = np.round(rng.uniform(0.05, 1.0, len(lab)), 2)
        order = np.argsort(-scores, kind="stable")
        out.append({
            "boxes": torch.tensor(b[order] * np.array([sx, sy, sx, sy]), dtype=torch.float32),
            "scores": torch.tensor(scores[order], dtype=torch.float32),
            "labels": torch.tensor(lab[order], dtype=torch.int64),
        })  # fmt: skip
    return out


def test_the_array_is_the_dicts_to_the_last_bit(val: Inputs) -> None:
    dets = fake_detections(val, 0, 30)
    dicts = detections_to_coco(val, dets)
    arr = detections_to_array(val, dets)
    assert arr.shape == (len(dicts), 7)
    for row, d in zip(arr, dicts, strict=True):
        assert row[0] == d["image_id"] and row[6] == d["category_id"] and row[5] == d["score"]
        assert row[1:5].tolist() == d["bbox"]
    assert detections_to_array(val, [{k: v[:0] for k, v in d.items()} for d in dets]).shape == (0, 7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pycocotools_on_the_array_equals_the_reference(val: Inputs, seed: int) -> None:
    dets = fake_detections(val, seed, 150 if seed == 2 else 20)  # seed 2: over the 100 limit
    ref = coco_ap(val.split.coco_gt, detections_to_coco(val, dets))
    assert 0.0 < ref["ap"] < 1.0
    arr = detections_to_array(val, dets)
    assert coco_ap_arrays(val.split.coco_gt, arr, evaluator="pycocotools") == ref
    assert coco_ap_arrays(val.split.coco_gt, arr, evaluator="pycocotools") == ref  # the cached ground truth


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_the_array_evaluator_equals_pycocotools_to_the_last_digit(val: Inputs, seed: int) -> None:
    """Precision and recall arrays equal to the bit, so the AP breakdown too."""
    from pycocotools.cocoeval import COCOeval

    from evo_fpn.training.coco_arrays import GroundTruth, evaluate

    dets = fake_detections(val, seed, [20, 60, 150, 3, 100, 40][seed])  # seed 2: over the 100 limit
    arr = detections_to_array(val, dets)
    if seed == 5:  # detections of one category only, some images without any
        arr = arr[(arr[:, 6] == arr[0, 6]) & (arr[:, 0] % 3 != 0)]
    ref = coco_ap_arrays(val.split.coco_gt, arr, evaluator="pycocotools")
    assert coco_ap_arrays(val.split.coco_gt, arr, evaluator="arrays") == ref
    assert coco_ap_arrays(val.split.coco_gt, arr) == ref  # auto picks it: the digits have no crowd
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(val.split.coco_gt)
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(arr.copy()), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    ours = evaluate(GroundTruth(val.split.coco_gt), arr)
    np.testing.assert_array_equal(ours["precision"], ev.eval["precision"])
    np.testing.assert_array_equal(ours["recall"], ev.eval["recall"])


def test_ties_and_area_boundaries_match_pycocotools() -> None:
    """Equal IoUs (identical ground-truth boxes: pycocotools takes the last), boxes exactly on
    the area ranges' bounds, an ignored (out-of-range) ground truth matched first."""
    boxes = [[10, 10, 32, 32], [10, 10, 32, 32], [50, 50, 8, 128], [0, 0, 96, 96], [60, 0, 31, 33]]
    anns = [{"id": k + 1, "image_id": 1 + k % 2, "category_id": 3, "bbox": b, "area": float(b[2] * b[3]),
             "iscrowd": 0} for k, b in enumerate(boxes)]  # fmt: skip
    gt = {"images": [{"id": 1}, {"id": 2}], "annotations": anns, "categories": [{"id": 3}, {"id": 4}]}
    dets = np.array(
        [[1 + k % 2, *b, s, 3] for k, b in enumerate(boxes) for s in (0.9, 0.5)]
        + [[1, 11, 10, 32, 32, 0.9, 3], [2, 0, 0, 97, 96, 0.7, 3], [1, 0, 0, 5, 5, 0.9, 4]],
        dtype=np.float64,
    )
    assert coco_ap_arrays(gt, dets, evaluator="arrays") == coco_ap_arrays(gt, dets, evaluator="pycocotools")


def test_crowd_regions_go_to_pycocotools(val: Inputs) -> None:
    from evo_fpn.training.coco_arrays import supported

    gt = copy.deepcopy(val.split.coco_gt)
    assert supported(gt)
    gt["annotations"][0]["iscrowd"] = 1
    assert not supported(gt)
    arr = detections_to_array(val, fake_detections(val, 0, 20))
    assert coco_ap_arrays(gt, arr) == coco_ap_arrays(gt, arr, evaluator="pycocotools")


def test_no_detections_and_unknown_evaluator(val: Inputs) -> None:
    empty = coco_ap_arrays(val.split.coco_gt, np.zeros((0, 7)))
    assert empty == coco_ap(val.split.coco_gt, [])
    with pytest.raises(ValueError, match="evaluator"):
        coco_ap_arrays(val.split.coco_gt, detections_to_array(val, fake_detections(val, 0, 2)), evaluator="x")
