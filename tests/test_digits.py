"""The built-in dataset: deterministic, valid COCO, disjoint sources, cached."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from evo_fpn.data.coco import load_dataset
from evo_fpn.data.digits import DigitsConfig, _sources, build_digits

TINY = DigitsConfig(train_images=12, val_images=6, image_size=64, min_scale=8, max_scale=48)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = build_digits(TINY, root=tmp_path / "a")
    b = build_digits(TINY, root=tmp_path / "b")
    assert a.name == b.name and a.name.startswith("digits-")
    assert digest(a) == digest(b)
    c = build_digits(DigitsConfig(**{**TINY.to_dict(), "seed": 1}), root=tmp_path / "a")
    assert c != a and digest(c) != digest(a)


def test_valid_coco_through_pycocotools_and_our_loader(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    root = build_digits(TINY, root=tmp_path)
    coco = COCO(str(root / "annotations" / "instances_train.json"))
    assert len(coco.getImgIds()) == 12 and len(coco.getCatIds()) == 10
    assert len(coco.getAnnIds()) >= 12
    train, val = load_dataset(root)
    assert len(train) == 12 and len(val) == 6 and train.num_classes == 10
    sizes = np.concatenate([b[:, 3] - b[:, 1] for b in train.boxes])
    assert sizes.min() >= 4 and sizes.max() <= 48  # ink boxes inside the scale range
    assert train.stats["clipped"] == 0


def test_train_and_val_sources_are_disjoint() -> None:
    src = _sources(DigitsConfig())
    train, val = src["train"][0].reshape(len(src["train"][0]), -1), src["val"][0].reshape(len(src["val"][0]), -1)
    assert len(train) + len(val) == 1797
    train_rows = {r.tobytes() for r in train}
    # sklearn's digits contain a few exact duplicate glyphs; disjoint indices must leave almost none shared
    assert sum(r.tobytes() in train_rows for r in val) <= 3
    assert set(src["val"][1].tolist()) == set(range(10))


def test_cached_and_reused(tmp_path: Path) -> None:
    root = build_digits(TINY, root=tmp_path)
    stamp = (root / "annotations" / "instances_train.json").stat().st_mtime_ns
    assert build_digits(TINY, root=tmp_path) == root
    assert (root / "annotations" / "instances_train.json").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".digits-tmp")]


def test_env_cache_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVO_FPN_CACHE", str(tmp_path / "cache"))
    assert build_digits(TINY).parent == tmp_path / "cache"


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="min_scale"):
        DigitsConfig(min_scale=50, max_scale=20)
    with pytest.raises(ValueError, match="train_images"):
        DigitsConfig(train_images=0)
