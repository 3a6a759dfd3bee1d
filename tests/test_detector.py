"""RetinaNet assembly: backbones, our neck or torchvision's FPN, head depth, local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evo_fpn.arch.spec import PUBLISHED_NASFPN
from evo_fpn.cli.common import UsageError
from evo_fpn.model.detector import Backbone, build_detector


def targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},  # a negative image
    ]


@pytest.mark.parametrize("name", ["resnet10", "mobilenet_v3_small"])
def test_backbone_gives_strides_8_16_32(name: str) -> None:
    body = Backbone(name)
    maps = body(torch.zeros(1, 3, 64, 64))
    assert [m.shape[-1] for m in maps] == [8, 4, 2]
    assert tuple(m.shape[1] for m in maps) == body.out_channels


@pytest.mark.parametrize("arch", [PUBLISHED_NASFPN, "torchvision_fpn"])
def test_losses_and_detections(arch) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_detector(arch, num_classes=3, image_size=64, width=16, repeats=2, head_depth=2)
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    losses = model(images, targets())
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        dets = model(images)
        feats = model.backbone(model.normalize(images))
        same = model.forward_features(feats)
    assert len(dets) == 2 and set(dets[0]) == {"boxes", "scores", "labels"}
    assert torch.equal(dets[0]["boxes"], same[0]["boxes"])  # both paths are one code path
    assert len(model.retina.head.classification_head.conv) == 2


def test_feature_only_detector_has_no_backbone() -> None:
    model = build_detector("fpn", num_classes=2, image_size=64, width=16, repeats=1, with_backbone=False)
    assert model.backbone is None
    with pytest.raises(RuntimeError, match="forward_features"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_local_backbone_weights(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = Backbone("resnet10")
    path = tmp_path / "r10.pt"
    torch.save(source.state_dict(), path)
    loaded = Backbone("resnet10", weights_path=str(path))
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(UsageError, match="not found"):
        Backbone("resnet10", weights_path=str(tmp_path / "missing.pt"))
    torch.save({"unrelated.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(UsageError, match="match no parameter"):
        Backbone("resnet10", weights_path=str(tmp_path / "bad.pt"))
    with pytest.raises(UsageError, match="unknown backbone"):
        Backbone("vgg16")
