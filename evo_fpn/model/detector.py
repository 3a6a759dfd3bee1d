"""RetinaNet with a searched neck: torchvision's head, anchors, focal loss and NMS, our pyramid.

The detector is split so that the proxy can skip the backbone: :meth:`Detector.forward`
runs backbone -> neck -> head, :meth:`Detector.forward_features` starts from C3..C5 maps
(for instance cached ones). Both paths end in the same torchvision code
(``RetinaNet.compute_loss`` while training, ``postprocess_detections`` otherwise), so a
trial on cached features and a full training differ only in where C3..C5 come from.

Images are already resized to the square input size by :mod:`evo_fpn.data.coco`, so
torchvision's ``GeneralizedRCNNTransform`` (resize + normalise) is replaced by a plain
normalisation here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.resnet import BasicBlock, ResNet

from evo_fpn.arch.spec import ArchSpec
from evo_fpn.errors import UsageError
from evo_fpn.model.neck import build_neck, no_norm

BACKBONES: tuple[str, ...] = (
    "resnet10",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
)
"""Backbones built from torchvision (``weights=None``; ``weights_path`` loads a local file)."""

HEAD_NORMS: tuple[str, ...] = ("group", "batch", "none")
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def norm_factory(name: str) -> Callable[[int], nn.Module] | None:
    """``group`` (GroupNorm: 16 groups, at least 4 channels each), ``batch`` (BatchNorm2d) or ``none``."""
    if name == "group":
        return lambda c: nn.GroupNorm(max(1, min(16, c // 4)), c)
    if name == "batch":
        return nn.BatchNorm2d
    if name == "none":
        return None
    raise UsageError(f"unknown norm {name!r}; choose one of {', '.join(HEAD_NORMS)}")


class Backbone(nn.Module):
    """A torchvision classifier cut to its stride-8/16/32 maps, returned as a list [C3, C4, C5]."""

    def __init__(self, name: str, *, weights_path: str | None = None) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise UsageError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
        self.name = name
        model = _classifier(name)
        if weights_path:
            _load_weights(model, weights_path)
        if name.startswith("resnet"):
            layers = {"layer2": "c3", "layer3": "c4", "layer4": "c5"}
            self.body = torchvision.models._utils.IntermediateLayerGetter(model, layers)
        else:
            features = model.features
            picks = _stride_picks(features)
            self.body = torchvision.models._utils.IntermediateLayerGetter(
                features, {str(i): f"c{3 + k}" for k, i in enumerate(picks)}
            )
        with torch.no_grad():
            was = self.body.training
            self.body.eval()
            shapes = [f.shape[1] for f in self.body(torch.zeros(1, 3, 64, 64)).values()]
            self.body.train(was)
        self.out_channels: tuple[int, int, int] = tuple(shapes)  # type: ignore[assignment]

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.body(x).values())


def _classifier(name: str) -> nn.Module:
    if name == "resnet10":
        return ResNet(BasicBlock, [1, 1, 1, 1])
    return getattr(torchvision.models, name)(weights=None)


def _stride_picks(features: nn.Sequential) -> list[int]:
    """Index of the last layer at stride 8, 16 and 32 in a ``features`` Sequential."""
    x = torch.zeros(1, 3, 64, 64)
    last: dict[int, int] = {}
    with torch.no_grad():
        features.eval()
        for i, layer in enumerate(features):
            x = layer(x)
            last[64 // x.shape[-1]] = i
        features.train()
    return [last[s] for s in (8, 16, 32)]


def _load_weights(model: nn.Module, path: str) -> None:
    """Load a local state_dict (a classifier's, or one saved from this backbone)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"backbone weights {p} not found; pass a local state_dict file (no downloads)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UsageError(f"cannot read backbone weights {p} ({exc}); save them with torch.save(state_dict)") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("body."): v for k, v in state.items()}
    if not set(state) & set(model.state_dict()):
        raise UsageError(f"backbone weights {p} match no parameter of this backbone; check the backbone name")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise UsageError(f"backbone weights {p} do not fit this backbone ({str(exc).splitlines()[0]})") from None


class Detector(nn.Module):
    """RetinaNet = optional backbone + neck + torchvision's head, anchors, loss and post-processing."""

    def __init__(
        self,
        *,
        backbone: Backbone | None,
        neck: nn.Module,
        num_classes: int,
        image_size: int,
        anchor_sizes: Sequence[float],
        anchor_scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        head_depth: int = 4,
        head_norm: str = "group",
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        anytime: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        if not 0 <= head_depth <= 4:
            raise ValueError(f"head_depth must lie in 0..4 (torchvision's head has 4 convs), got {head_depth}")
        if len(anchor_sizes) != 5:
            raise ValueError(f"need one anchor size per level P3..P7 (5), got {len(anchor_sizes)}")
        # The neck's levels pick their anchor sizes: a P3-P6 (Lite) neck uses the first four.
        self.levels: tuple[int, ...] = tuple(getattr(neck, "levels", (3, 4, 5, 6, 7)))
        if not set(self.levels) <= {3, 4, 5, 6, 7}:
            raise ValueError(f"the neck's levels {self.levels} must lie in P3..P7 (one anchor size each)")
        anchor_sizes = [anchor_sizes[level - 3] for level in self.levels]
        self.backbone = backbone
        self.image_size = int(image_size)
        # The paper's "anytime" option: while training, the (shared) head also scores every
        # repeat's pyramid and the losses are averaged (deep supervision); inference uses the last.
        self.anytime = bool(anytime) and hasattr(neck, "forward_repeats") and getattr(neck, "repeats", 1) > 1
        sizes = tuple(tuple(float(s) * k for k in anchor_scales) for s in anchor_sizes)
        anchors = AnchorGenerator(sizes, (tuple(float(a) for a in aspect_ratios),) * len(sizes))
        head = RetinaNetHead(
            neck.out_channels, anchors.num_anchors_per_location()[0], num_classes, norm_layer=norm_factory(head_norm)
        )
        for sub in (head.classification_head, head.regression_head):
            sub.conv = nn.Sequential(*list(sub.conv)[:head_depth])
        # torchvision's RetinaNet holds the neck as its "backbone" (it only needs .out_channels).
        self.retina = RetinaNet(
            neck,
            num_classes,
            min_size=image_size,
            max_size=image_size,
            anchor_generator=anchors,
            head=head,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
        )
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1) * 255, persistent=False)

    @property
    def neck(self) -> nn.Module:
        return self.retina.backbone

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (or 0..255 float) images -> normalised floats."""
        return (images.float() - self.mean) / self.std

    def forward(self, images: Tensor, targets: list[dict[str, Tensor]] | None = None):  # type: ignore[no-untyped-def]
        """Losses (``targets`` given, training) or detections in input pixels (otherwise)."""
        if self.backbone is None:
            raise RuntimeError("this detector has no backbone; call forward_features with C3..C5 maps")
        return self.forward_features(self.backbone(self.normalize(images)), targets)

    def forward_features(self, features: Sequence[Tensor], targets: list[dict[str, Tensor]] | None = None):  # type: ignore[no-untyped-def]
        """The same as :meth:`forward`, from C3..C5 maps."""
        if targets is not None and self.anytime and self.training:
            pyramids = [list(p.values()) for p in self.neck.forward_repeats(list(features))]
            losses = [self._loss(feats, targets) for feats in pyramids]
            return {k: sum(loss[k] for loss in losses) / len(losses) for k in losses[0]}
        feats = list(self.neck(list(features)).values())
        if targets is not None:
            return self._loss(feats, targets)
        head_outputs = self.retina.head(feats)
        image_list, anchors = self._anchors(feats)
        # As RetinaNet.forward: split outputs and anchors per level, then decode + NMS.
        per_level = [x.size(2) * x.size(3) for x in feats]
        num_a = head_outputs["cls_logits"].size(1) // sum(per_level)
        per_level = [n * num_a for n in per_level]
        split = {k: list(v.float().split(per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        return self.retina.postprocess_detections(split, split_anchors, image_list.image_sizes)

    def _anchors(self, feats: list[Tensor]) -> tuple[ImageList, list[Tensor]]:
        batch = feats[0].shape[0]
        hw = (self.image_size, self.image_size)
        image_list = ImageList(feats[0].new_empty((batch, 0, *hw)), [hw] * batch)
        return image_list, self.retina.anchor_generator(image_list, feats)

    def _loss(self, feats: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """torchvision's RetinaNet losses of one pyramid."""
        _, anchors = self._anchors(feats)
        return self.retina.compute_loss(targets, self.retina.head(feats), anchors)


def neck_norm_layer(
    arch: ArchSpec | str, neck_norm: str, fpn_norm: str | None = None
) -> Callable[[int], nn.Module] | None:
    """The ``norm_layer`` :func:`~evo_fpn.model.neck.build_neck` gets for ``arch``: ``neck_norm`` for
    our cells; for torchvision's FPN ``fpn_norm``, or by default ``neck_norm`` except that
    BatchNorm keeps the baseline norm-free, as torchvision ships it."""
    if arch == "torchvision_fpn":  # torchvision's FPN takes None for "no norm"
        return norm_factory(fpn_norm if fpn_norm is not None else ("none" if neck_norm == "batch" else neck_norm))
    return norm_factory(neck_norm) or no_norm  # our neck takes None for "its default, BatchNorm"


def build_detector(
    arch: ArchSpec | str,
    *,
    num_classes: int,
    image_size: int,
    backbone: str = "resnet10",
    with_backbone: bool = True,
    weights_path: str | None = None,
    width: int = 64,
    repeats: int = 3,
    neck_norm: str = "batch",
    fpn_norm: str | None = None,
    anytime: bool = False,
    cell_conv: str = "conv3x3",
    anchor_sizes: Sequence[float] = (8, 16, 32, 64, 128),
    anchor_scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    head_depth: int = 4,
    head_norm: str = "group",
    **kwargs: float,
) -> Detector:
    """A RetinaNet for ``arch`` (a spec, ``"published"``, ``"fpn"`` or ``"torchvision_fpn"``).

    ``with_backbone=False`` builds only neck + head (for training on cached features);
    the backbone's C3..C5 channels still come from ``backbone``. Norms: :func:`neck_norm_layer`;
    ``anytime``: see :class:`Detector`; ``cell_conv``: :data:`evo_fpn.model.neck.CELL_CONVS`.
    """
    body = Backbone(backbone, weights_path=weights_path)
    channels = body.out_channels
    norm = neck_norm_layer(arch, neck_norm, fpn_norm)
    neck = build_neck(arch, channels, width, repeats, norm_layer=norm, conv=cell_conv)
    return Detector(
        backbone=body if with_backbone else None,
        neck=neck,
        num_classes=num_classes,
        image_size=image_size,
        anchor_sizes=anchor_sizes,
        anchor_scales=anchor_scales,
        aspect_ratios=aspect_ratios,
        head_depth=head_depth,
        head_norm=head_norm,
        anytime=anytime,
        **kwargs,
    )


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a fixed feature extractor."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
