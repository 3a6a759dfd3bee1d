"""The COCO loader: clear errors for what users can fix, COCO's handling for the rest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evo_fpn.data.coco import DatasetError, DetectionDataset, load_dataset, load_split, resize_geometry


def make_dataset(root: Path, split: str = "train", *, images=None, annotations=None, categories=None) -> Path:
    """A tiny COCO-layout split: 40x20 images, categories with gaps (3 and 7)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    images = (
        images
        if images is not None
        else [
            {"id": 10, "file_name": "a.png", "width": 40, "height": 20},
            {"id": 11, "file_name": "b.png", "width": 40, "height": 20},
        ]
    )
    for img in images:
        Image.new("RGB", (40, 20), (120, 30, 200)).save(root / split / img["file_name"])
    annotations = (
        annotations
        if annotations is not None
        else [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},
        ]
    )
    categories = categories if categories is not None else [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def test_noncontiguous_categories_and_negatives(tmp_path: Path) -> None:
    make_dataset(tmp_path, "train")
    make_dataset(tmp_path, "val")
    train, val = load_dataset(tmp_path)
    assert train.cat_ids == [3, 7] and train.num_classes == 2
    assert train.labels[0].tolist() == [1] and train.label_to_cat_id(1) == 7
    assert len(train) == 2 and train.boxes[1].shape == (0, 4)  # image without annotations kept
    assert train.boxes[0].tolist() == [[5, 5, 15, 15]]
    assert val.cat_ids == train.cat_ids


def test_malformed_json_names_file(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    (tmp_path / "annotations" / "instances_train.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"instances_train\.json: not valid JSON"):
        load_split(tmp_path, "train")


def test_missing_layout_parts(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_split(tmp_path / "nope", "train")
    (tmp_path / "annotations").mkdir()
    with pytest.raises(DatasetError, match=r"instances_train\.json not found"):
        load_split(tmp_path, "train")
    (tmp_path / "annotations" / "instances_train.json").write_text("{}")
    with pytest.raises(DatasetError, match="image folder"):
        load_split(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="missing list 'images'"):
        load_split(tmp_path, "train")


def test_missing_image_file(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    (tmp_path / "train" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image file\(s\) missing .* b\.png"):
        load_split(tmp_path, "train")


def test_bad_references(tmp_path: Path) -> None:
    make_dataset(tmp_path, annotations=[{"id": 5, "image_id": 99, "category_id": 7, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(DatasetError, match="unknown image id 99"):
        load_split(tmp_path, "train")
    make_dataset(tmp_path, annotations=[{"id": 5, "image_id": 10, "category_id": 4, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(DatasetError, match="unknown category id 4"):
        load_split(tmp_path, "train")
    make_dataset(tmp_path, annotations=[{"id": 5, "image_id": 10, "category_id": 7, "bbox": [0, 0]}])
    with pytest.raises(DatasetError, match=r"bbox \[x, y, width, height\]"):
        load_split(tmp_path, "train")


def test_boxes_clipped_zero_area_dropped_crowd_kept_for_eval(tmp_path: Path) -> None:
    anns = [
        {"id": 1, "image_id": 10, "category_id": 3, "bbox": [30, -5, 20, 10]},  # sticks out: clipped
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [5, 5, 0, 8]},  # zero width: dropped
        {"id": 3, "image_id": 10, "category_id": 3, "bbox": [45, 5, 5, 5]},  # fully outside: dropped
        {"id": 4, "image_id": 11, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 1},  # crowd
    ]
    make_dataset(tmp_path, annotations=anns)
    split = load_split(tmp_path, "train")
    assert split.boxes[0].tolist() == [[30, 0, 40, 5]]
    assert split.stats["dropped_zero_area"] == 2 and split.stats["clipped"] >= 2
    assert split.boxes[1].shape == (0, 4)  # crowd not trained on
    assert [a["iscrowd"] for a in split.coco_gt["annotations"]] == [0, 1]


def test_dropped_boxes_are_named_in_one_warning_line_per_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    anns = [
        {"id": 21, "image_id": 10, "category_id": 3, "bbox": [30, 10, -20, 20]},  # negative width (issue 29)
        {"id": 22, "image_id": 10, "category_id": 3, "bbox": [5, 5, 0, 8]},
        {"id": 23, "image_id": 11, "category_id": 7, "bbox": [1, 1, 5, 5]},  # kept
    ]
    make_dataset(tmp_path, annotations=anns)
    split = load_split(tmp_path, "train")
    assert split.stats["dropped_zero_area"] == 2 and split.stats["annotations"] == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "instances_train.json" in err[0]
    assert "dropped 2 annotation(s)" in err[0] and "ids 21, 22" in err[0]
    load_split(tmp_path, "train")  # the same file again in this process: said once
    assert capsys.readouterr().err == ""
    make_dataset(tmp_path / "clean")
    load_split(tmp_path / "clean", "train")
    assert capsys.readouterr().err == ""  # nothing dropped, nothing said


def test_resize_plain_and_letterbox(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    split = load_split(tmp_path, "train")
    image, target = DetectionDataset(split, image_size=80, resize="plain")[0]
    assert image.shape == (3, 80, 80)
    assert target["boxes"].tolist() == [[10, 20, 30, 60]]  # x * 2, y * 4
    image, target = DetectionDataset(split, image_size=80, resize="letterbox")[0]
    assert target["boxes"].tolist() == [[10, 10, 30, 30]]  # both * 2
    assert image[:, 40:, :].sum() == 0 and image[:, :40, :].sum() > 0  # padded at the bottom
    assert resize_geometry(40, 20, 80, "letterbox") == (2.0, 2.0, 80, 40)
    with pytest.raises(DatasetError, match="unknown resize mode"):
        DetectionDataset(split, image_size=80, resize="stretch")


def test_unreadable_or_mismatched_image(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    split = load_split(tmp_path, "train")
    (tmp_path / "train" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"a\.png: cannot read image"):
        DetectionDataset(split, image_size=64)[0]
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(tmp_path / "train" / "b.png")
    with pytest.raises(DatasetError, match="JSON says 40x20"):
        DetectionDataset(split, image_size=64)[1]
