"""COCO-format detection data: load, check, resize, and hand out tensors.

Any dataset in COCO layout works (the built-in digits are written in it too)::

    ROOT/annotations/instances_<split>.json     ROOT/<split>/<file_name>  (or ROOT/images/<split>/)

Problems a user can fix (bad JSON, a missing image, an annotation pointing nowhere) raise
:class:`DatasetError` with one line naming the file and the fix, at load time rather than deep
inside training. Problems COCO tools tolerate are handled as they do: boxes reaching outside
the image are clipped to it, boxes of zero area (after clipping) are dropped, crowd boxes are
ignored for training but kept for evaluation, images without annotations stay as negatives.
Category ids may be anything (COCO's 1..90 with gaps): they map to contiguous labels
``0..K-1`` for the detector and back for evaluation.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from evo_fpn.errors import DatasetError

RESIZE_MODES = ("plain", "letterbox")


@dataclass
class Split:
    """One split of a COCO dataset, checked and cleaned.

    ``boxes[i]`` are xyxy boxes in original pixel coordinates for image ``i`` (crowd
    boxes excluded), ``labels[i]`` their contiguous labels. ``coco_gt`` is a COCO-format
    dict of the cleaned annotations (crowd included) for pycocotools.
    """

    name: str
    image_dir: Path
    image_ids: list[int]
    files: list[str]
    sizes: list[tuple[int, int]]  # (width, height)
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    cat_ids: list[int]
    cat_names: list[str]
    coco_gt: dict[str, Any]
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def label_to_cat_id(self, label: int) -> int:
        return self.cat_ids[label]


def find_split(root: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """Locate ``(instances json, image folder)`` of ``split`` under ``root``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist; pass --data pointing at a COCO-layout folder")
    ann = root / "annotations" / f"instances_{split}.json"
    if not ann.is_file():
        raise DatasetError(
            f"{ann} not found; a COCO-layout dataset needs annotations/instances_{split}.json under {root}"
        )
    for images in (root / split, root / "images" / split):
        if images.is_dir():
            return ann, images
    raise DatasetError(f"image folder {root / split} not found; put the {split} images there (or in images/{split})")


def load_split(
    root: str | os.PathLike[str], split: str, *, categories: Sequence[int] | None = None, check_files: bool = True
) -> Split:
    """Read and check one split. ``categories`` pins the label order (use train's for val)."""
    ann_path, image_dir = find_split(root, split)
    try:
        doc = json.loads(ann_path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{ann_path}: not valid JSON ({exc}); fix or regenerate the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{ann_path}: cannot read ({exc})") from None
    return parse_coco(doc, ann_path=ann_path, image_dir=image_dir, categories=categories, check_files=check_files)


def parse_coco(
    doc: Any,
    *,
    ann_path: Path,
    image_dir: Path,
    categories: Sequence[int] | None = None,
    check_files: bool = True,
) -> Split:
    """Check and clean a parsed instances document (see the module docstring)."""
    where = str(ann_path)
    if not isinstance(doc, dict):
        raise DatasetError(f"{where}: top level must be a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DatasetError(
                f"{where}: missing list '{key}'; a COCO instances file needs images, annotations, categories"
            )
    try:
        cats = {int(c["id"]): str(c.get("name", c["id"])) for c in doc["categories"]}
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{where}: every category needs an integer 'id'") from None
    if not cats:
        raise DatasetError(f"{where}: no categories; add at least one to 'categories'")
    cat_ids = sorted(cats) if categories is None else list(categories)
    unknown = set(cats) - set(cat_ids)
    if unknown:
        raise DatasetError(f"{where}: categories {sorted(unknown)} are not in the training split's categories")
    cat_to_label = {c: i for i, c in enumerate(cat_ids)}

    image_ids, files, sizes, index = [], [], [], {}
    missing: list[str] = []
    for img in doc["images"]:
        try:
            iid, name = int(img["id"]), str(img["file_name"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{where}: every image needs an integer 'id' and a 'file_name' (got {img!r})") from None
        if iid in index:
            raise DatasetError(f"{where}: image id {iid} appears twice; image ids must be unique")
        path = image_dir / name
        if check_files and not path.is_file():
            missing.append(name)
            continue
        width, height = img.get("width"), img.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            width, height = _image_size(path)
        index[iid] = len(image_ids)
        image_ids.append(iid)
        files.append(name)
        sizes.append((width, height))
    if missing:
        raise DatasetError(
            f"{where}: {len(missing)} image file(s) missing from {image_dir}, e.g. {missing[0]}; "
            "copy them there or remove them from the JSON"
        )
    if not image_ids:
        raise DatasetError(f"{where}: no images; a split needs at least one image")

    boxes: list[list[list[float]]] = [[] for _ in image_ids]
    labels: list[list[int]] = [[] for _ in image_ids]
    gt_anns: list[dict[str, Any]] = []
    stats = {"annotations": 0, "clipped": 0, "dropped_zero_area": 0, "crowd": 0}
    dropped: list[str] = []
    for ann in doc["annotations"]:
        try:
            iid, cid = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"{where}: annotation {ann.get('id', '?') if isinstance(ann, dict) else ann!r} needs image_id, "
                "category_id and bbox [x, y, width, height]"
            ) from None
        if iid not in index:
            raise DatasetError(f"{where}: annotation {ann.get('id', '?')} refers to unknown image id {iid}")
        if cid not in cat_to_label:
            raise DatasetError(f"{where}: annotation {ann.get('id', '?')} has unknown category id {cid}")
        if not all(np.isfinite(v) for v in (x, y, w, h)):
            raise DatasetError(f"{where}: annotation {ann.get('id', '?')} has a non-finite bbox")
        i = index[iid]
        width, height = sizes[i]
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
        clipped = (x0, y0, x1, y1) != (x, y, x + w, y + h)
        stats["clipped"] += int(clipped)
        if x1 - x0 <= 0.5 or y1 - y0 <= 0.5:
            stats["dropped_zero_area"] += 1
            dropped.append(str(ann.get("id", "?")))
            continue
        crowd = int(bool(ann.get("iscrowd", 0)))
        stats["annotations"] += 1
        gt_anns.append(
            {
                "id": len(gt_anns) + 1,
                "image_id": iid,
                "category_id": cid,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0) if clipped else float(ann.get("area", (x1 - x0) * (y1 - y0))),
                "iscrowd": crowd,
            }
        )
        if crowd:
            stats["crowd"] += 1
            continue
        boxes[i].append([x0, y0, x1, y1])
        labels[i].append(cat_to_label[cid])

    if dropped:
        _warn_once(
            f"warning: {where}: dropped {len(dropped)} annotation(s) whose box has no area inside its image "
            f"(width or height <= 0.5 px after clipping, e.g. a negative width), ids {', '.join(dropped[:5])}"
            f"{', ...' if len(dropped) > 5 else ''}; fix or remove them in the JSON"
        )
    coco_gt = {
        "images": [
            {"id": iid, "width": s[0], "height": s[1], "file_name": f}
            for iid, s, f in zip(image_ids, sizes, files, strict=True)
        ],
        "annotations": gt_anns,
        "categories": [{"id": c, "name": cats.get(c, str(c))} for c in cat_ids],
    }
    return Split(
        name=ann_path.stem.removeprefix("instances_"),
        image_dir=image_dir,
        image_ids=image_ids,
        files=files,
        sizes=sizes,
        boxes=[np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes],
        labels=[np.asarray(lbl, dtype=np.int64) for lbl in labels],
        cat_ids=cat_ids,
        cat_names=[cats.get(c, str(c)) for c in cat_ids],
        coco_gt=coco_gt,
        stats=stats,
    )


_WARNED: set[str] = set()


def _warn_once(line: str) -> None:
    """One line on stderr, once per process (every worker and seed reads the same files)."""
    if line not in _WARNED:
        _WARNED.add(line)
        print(line, file=sys.stderr)


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc}); replace the file or drop it from the JSON") from None


def resize_geometry(width: int, height: int, size: int, mode: str) -> tuple[float, float, int, int]:
    """Scale factors and new size ``(sx, sy, new_w, new_h)`` to fit an image into ``size x size``.

    ``plain`` stretches to the square; ``letterbox`` keeps the aspect ratio and pads
    right/bottom, so mapping boxes back is a division by the scale either way.
    """
    if mode == "plain":
        return size / width, size / height, size, size
    if mode == "letterbox":
        s = size / max(width, height)
        return s, s, max(1, round(width * s)), max(1, round(height * s))
    raise DatasetError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")


class DetectionDataset(torch.utils.data.Dataset):
    """A :class:`Split` as square ``uint8`` image tensors with boxes in resized pixels."""

    def __init__(self, split: Split, *, image_size: int, resize: str = "plain") -> None:
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        resize_geometry(1, 1, image_size, resize)  # checks the mode
        self.split = split
        self.image_size = image_size
        self.resize = resize

    def __len__(self) -> int:
        return len(self.split)

    def scale(self, i: int) -> tuple[float, float]:
        """Factors that map original pixel coordinates of image ``i`` to resized ones."""
        w, h = self.split.sizes[i]
        sx, sy, _, _ = resize_geometry(w, h, self.image_size, self.resize)
        return sx, sy

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        path = self.split.image_dir / self.split.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = self.split.sizes[i]
                if im.size != (w, h):
                    raise DatasetError(
                        f"{path}: image is {im.size[0]}x{im.size[1]} but the JSON says {w}x{h}; fix width/height"
                    )
                sx, sy, nw, nh = resize_geometry(w, h, self.image_size, self.resize)
                if (nw, nh) != (w, h):
                    im = im.resize((nw, nh), Image.BILINEAR)
                arr = np.array(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(
                f"{path}: cannot read image ({exc}); replace the file or drop it from the JSON"
            ) from None
        image = torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8)
        image[:, : arr.shape[0], : arr.shape[1]] = torch.from_numpy(arr).permute(2, 0, 1)
        boxes = torch.from_numpy(self.split.boxes[i] * np.array([sx, sy, sx, sy], dtype=np.float32))
        return image, {"boxes": boxes, "labels": torch.from_numpy(self.split.labels[i]), "index": torch.tensor(i)}


def load_dataset(
    root: str | os.PathLike[str], *, train_split: str = "train", val_split: str = "val"
) -> tuple[Split, Split]:
    """Load train and val of one dataset; val uses train's category order."""
    train = load_split(root, train_split)
    val = load_split(root, val_split, categories=train.cat_ids)
    return train, val


def dataset_fingerprint(root: str | os.PathLike[str], splits: Sequence[str]) -> str:
    """Cheap identity of a user dataset (path, size and mtime of its JSON files) for cache keys."""
    parts = [str(Path(root).expanduser().resolve())]
    for split in splits:
        ann, _ = find_split(root, split)
        st = ann.stat()
        parts.append(f"{split}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)
