"""COCO AP through our wrapper: perfect detector 1.0, empty 0.0, quiet, sensitive to errors."""

from __future__ import annotations

import pytest

from evo_fpn.training.evaluate import METRIC_NAMES, coco_ap, gt_as_detections, sizes_present

GT = {
    "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 17, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 90, "bbox": [50, 50, 60, 60], "area": 3600, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 17, "bbox": [5, 90, 120, 100], "area": 12000, "iscrowd": 0},
    ],
    "categories": [{"id": 17, "name": "a"}, {"id": 90, "name": "b"}],
}


def test_perfect_detector_scores_one(capsys) -> None:
    metrics = coco_ap(GT, gt_as_detections(GT))
    assert set(metrics) == set(METRIC_NAMES)
    assert metrics == {k: pytest.approx(1.0, abs=1e-9) for k in METRIC_NAMES}
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed


def test_empty_detector_scores_zero() -> None:
    assert coco_ap(GT, []) == dict.fromkeys(METRIC_NAMES, 0.0)


def test_errors_lower_ap() -> None:
    dets = gt_as_detections(GT)
    dets[0] = {**dets[0], "bbox": [14, 14, 20, 20]}  # IoU 0.47: a miss at every threshold
    dets[2] = {**dets[2], "category_id": 90}  # wrong class
    metrics = coco_ap(GT, dets)
    assert 0.0 < metrics["ap"] < 1.0
    assert metrics["ap_small"] == 0.0 and metrics["ap_medium"] == pytest.approx(1.0, abs=1e-9)


SMALL_ONLY = {**GT, "annotations": [a for a in GT["annotations"] if a["area"] <= 32**2]}


def test_an_object_size_without_ground_truth_is_none_not_zero() -> None:
    """COCOeval's -1 (no ground truth of that size) is not a score: the digits' missing APl."""
    assert sizes_present(GT) == {"ap_small", "ap_medium", "ap_large"}
    assert sizes_present(SMALL_ONLY) == {"ap_small"}
    perfect = coco_ap(SMALL_ONLY, gt_as_detections(SMALL_ONLY))
    assert perfect["ap"] == pytest.approx(1.0) and perfect["ap_small"] == pytest.approx(1.0)
    assert perfect["ap_medium"] is None and perfect["ap_large"] is None
    # the same Nones without any detection (the path that bypasses pycocotools), and 0.0 elsewhere
    empty = coco_ap(SMALL_ONLY, [])
    assert empty == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, "ap_small": 0.0, "ap_medium": None, "ap_large": None}
    # a crowd region is not ground truth of its size (COCOeval ignores it)
    crowd = {**SMALL_ONLY, "annotations": [*SMALL_ONLY["annotations"], {**GT["annotations"][2], "iscrowd": 1}]}
    assert sizes_present(crowd) == {"ap_small"}
