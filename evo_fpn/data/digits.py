"""A built-in detection dataset that needs no download: handwritten digits on cluttered canvases.

Source glyphs are scikit-learn's bundled 8x8 handwritten digits (real handwriting from 43
writers; the data ships inside the wheel). Each canvas gets a few digits pasted at widely
varying sizes (default 12..100 px on 128 px canvases, so objects land on several pyramid
levels), over a textured background with line and box clutter. Train and val draw from
disjoint source glyphs. The result is written to disk in COCO format (PNG images + an
instances JSON per split) so it goes through the same loader as any user dataset.

Generation is deterministic (same config -> same bytes), takes seconds, and is cached by
its configuration: ``$EVO_FPN_CACHE`` (default ``~/.cache/evo-fpn``) / ``digits-<hash>``.
Concurrent builders are safe: each builds in a private temp folder and renames it into
place atomically; the loser discards its copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

DIGITS_FORMAT_VERSION = 1
"""Bump when the renderer changes, so stale caches are not reused."""


def cache_root() -> Path:
    """Where generated data and caches live: ``$EVO_FPN_CACHE`` or ``~/.cache/evo-fpn``."""
    env = os.environ.get("EVO_FPN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evo-fpn"


@dataclass(frozen=True)
class DigitsConfig:
    """Size and difficulty of the built-in dataset."""

    train_images: int = 1500
    val_images: int = 300
    image_size: int = 128
    min_scale: int = 12
    max_scale: int = 100
    max_objects: int = 4
    clutter: int = 6
    val_source_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train_images < 1 or self.val_images < 1:
            raise ValueError("train_images and val_images must be >= 1")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 4 <= self.min_scale <= self.max_scale <= self.image_size:
            raise ValueError(
                f"need 4 <= min_scale <= max_scale <= image_size, got {self.min_scale}, {self.max_scale}, "
                f"{self.image_size}"
            )
        if self.max_objects < 1 or self.clutter < 0:
            raise ValueError("max_objects must be >= 1 and clutter >= 0")
        if not 0.05 <= self.val_source_fraction <= 0.95:
            raise ValueError("val_source_fraction must lie in [0.05, 0.95]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        body = json.dumps({"v": DIGITS_FORMAT_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:12]


CATEGORIES = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
"""COCO categories: ids 1..10 for digits 0..9 (COCO ids start at 1)."""


def build_digits(config: DigitsConfig | None = None, root: str | os.PathLike[str] | None = None) -> Path:
    """Generate (or reuse) the dataset; return its folder.

    Layout (the COCO layout :func:`evo_fpn.data.coco.load_split` reads)::

        <folder>/annotations/instances_train.json   <folder>/train/000000.png ...
        <folder>/annotations/instances_val.json     <folder>/val/000000.png ...
    """
    config = config or DigitsConfig()
    base = Path(root).expanduser() if root is not None else cache_root()
    final = base / f"digits-{config.fingerprint()}"
    if (final / "annotations" / "instances_val.json").is_file():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-tmp-", dir=base))
    try:
        _write(config, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first (the target exists and is not empty): use theirs.
            if not (final / "annotations" / "instances_val.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _sources(config: DigitsConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split scikit-learn's 1797 glyphs into disjoint train and val pools."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(config.seed).permutation(len(images))
    n_val = int(round(len(images) * config.val_source_fraction))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return {"train": (images[train_idx], labels[train_idx]), "val": (images[val_idx], labels[val_idx])}


def _write(config: DigitsConfig, folder: Path) -> None:
    (folder / "annotations").mkdir(parents=True)
    sources = _sources(config)
    for split_no, (split, count) in enumerate((("train", config.train_images), ("val", config.val_images))):
        (folder / split).mkdir()
        rng = np.random.default_rng([config.seed, split_no, DIGITS_FORMAT_VERSION])
        glyphs, labels = sources[split]
        images, annotations = [], []
        for i in range(count):
            canvas, boxes = _render(rng, glyphs, labels, config)
            name = f"{i:06d}.png"
            Image.fromarray(canvas).save(folder / split / name, optimize=False, compress_level=6)
            images.append({"id": i + 1, "file_name": name, "width": config.image_size, "height": config.image_size})
            for x0, y0, x1, y1, label in boxes:
                w, h = x1 - x0, y1 - y0
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": int(label) + 1,
                        "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)],
                        "area": round(w * h, 2),
                        "iscrowd": 0,
                    }
                )
        doc = {
            "info": {"description": "evo-fpn built-in digits", "config": config.to_dict()},
            "images": images,
            "annotations": annotations,
            "categories": CATEGORIES,
        }
        (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc, sort_keys=True))


def _render(
    rng: np.random.Generator, glyphs: np.ndarray, labels: np.ndarray, config: DigitsConfig
) -> tuple[np.ndarray, list[tuple[float, float, float, float, int]]]:
    """One canvas: background texture, clutter, then 1..max_objects digits with tight boxes."""
    size = config.image_size
    canvas = _background(rng, size)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, config.clutter + 1))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(-0.1 * size, 1.1 * size, 4))
        if rng.random() < 0.6:
            draw.line((x0, y0, x1, y1), fill=color, width=int(rng.integers(1, 4)))
        else:
            draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=color, width=1)
    canvas = np.asarray(img, dtype=np.float32)

    boxes: list[tuple[float, float, float, float, int]] = []
    log_lo, log_hi = np.log(config.min_scale), np.log(config.max_scale)
    for _ in range(int(rng.integers(1, config.max_objects + 1))):
        for _attempt in range(20):
            h = int(round(np.exp(rng.uniform(log_lo, log_hi))))
            w = max(4, int(round(h * rng.uniform(0.75, 1.15))))
            if w > size or h > size:
                continue
            x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            k = int(rng.integers(0, len(glyphs)))
            alpha = np.asarray(Image.fromarray(glyphs[k]).resize((w, h), Image.BILINEAR), dtype=np.float32)
            alpha = np.clip(alpha * 1.3, 0.0, 1.0)
            ys, xs = np.nonzero(alpha > 0.35)
            if len(xs) == 0:
                continue
            box = (float(x + xs.min()), float(y + ys.min()), float(x + xs.max() + 1), float(y + ys.max() + 1))
            if any(_overlap(box, b) > 0.0 for b in boxes):
                continue
            region = canvas[y : y + h, x : x + w]
            bg = region.mean(axis=(0, 1))
            color = _contrasting(rng, bg)
            canvas[y : y + h, x : x + w] = region * (1 - alpha[..., None]) + color * alpha[..., None]
            boxes.append((*box, int(labels[k])))
            break
    noise = rng.normal(0.0, 6.0, canvas.shape).astype(np.float32)
    return np.clip(canvas + noise, 0, 255).astype(np.uint8), boxes


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour gradient plus coarse blotches: texture without objects."""
    corners = rng.uniform(0, 255, (2, 2, 3)).astype(np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    top = corners[0, 0] * (1 - t[:, None]) + corners[0, 1] * t[:, None]
    bottom = corners[1, 0] * (1 - t[:, None]) + corners[1, 1] * t[:, None]
    grad = top[None] * (1 - t[:, None, None]) + bottom[None] * t[:, None, None]
    blotch = rng.normal(0, 18, (4, 4, 3)).astype(np.float32)
    blotch = np.asarray(
        Image.fromarray(np.clip(blotch + 128, 0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
        dtype=np.float32,
    )
    return np.clip(grad + blotch - 128, 0, 255).astype(np.uint8)


def _contrasting(rng: np.random.Generator, bg: np.ndarray) -> np.ndarray:
    """A random colour whose brightness differs clearly from the background's."""
    lum = float(bg.mean())
    target = rng.uniform(0, max(lum - 70, 1)) if lum > 127 else rng.uniform(min(lum + 70, 254), 255)
    color = rng.uniform(-40, 40, 3) + target
    return np.clip(color, 0, 255).astype(np.float32)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection area of two xyxy boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)
