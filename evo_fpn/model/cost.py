"""Cost of a neck: parameters and FLOPs, counted by PyTorch, not by hand.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: it counts matmuls and
convolutions (a multiply-add is 2 FLOPs) and ignores cheap element-wise ops, pooling and
norms. Neck costs are per image (batch 1) on dummy C3..C5 maps of the sizes a backbone with
strides 8/16/32 gives (``ceil(size / stride)``, as torchvision's ResNets do), built on the
``meta`` device so counting a 7@256 neck at 640x640 costs no compute.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from evo_fpn.arch.spec import ArchSpec
from evo_fpn.model.neck import BACKBONE_CHANNELS, build_neck

BACKBONE_STRIDES: tuple[int, int, int] = (8, 16, 32)


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, *inputs: object) -> int:
    """FLOPs of one ``module(*inputs)`` forward pass, in eval mode and without gradients."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``640`` or ``(480, 640)`` -> ``(H, W)``; checks the values are positive."""
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or any(not isinstance(v, int) or v < 1 for v in hw):
        raise ValueError(f"image size must be a positive int or (H, W), got {image_size!r}")
    return int(hw[0]), int(hw[1])


def backbone_feature_shapes(
    in_channels: Sequence[int], image_size: int | Sequence[int], strides: Sequence[int] = BACKBONE_STRIDES
) -> list[tuple[int, int, int, int]]:
    """Shapes (1, C, H, W) of the backbone's C3..C5 maps for one image."""
    h, w = image_hw(image_size)
    if len(in_channels) != len(strides):
        raise ValueError(f"need {len(strides)} channel counts (C3..C5), got {len(in_channels)}")
    return [(1, int(c), math.ceil(h / s), math.ceil(w / s)) for c, s in zip(in_channels, strides, strict=True)]


def resolve_backbone_channels(backbone: str | Sequence[int]) -> tuple[int, int, int]:
    """A backbone name from :data:`BACKBONE_CHANNELS`, or explicit C3..C5 channels."""
    if isinstance(backbone, str):
        if backbone not in BACKBONE_CHANNELS:
            raise ValueError(
                f"unknown backbone {backbone!r}; use one of {', '.join(BACKBONE_CHANNELS)} or give C3,C4,C5 channels"
            )
        return BACKBONE_CHANNELS[backbone]
    channels = tuple(int(c) for c in backbone)
    if len(channels) != 3 or any(c < 1 for c in channels):
        raise ValueError(f"backbone channels must be three positive ints (C3,C4,C5), got {backbone!r}")
    return channels  # type: ignore[return-value]


def neck_cost(
    arch: ArchSpec | str,
    backbone_channels: str | Sequence[int],
    channels: int,
    repeats: int,
    image_size: int | Sequence[int],
    *,
    norm_layer: Callable[[int], nn.Module] | None = None,
    conv: str = "conv3x3",
) -> dict[str, int]:
    """Parameters and per-image FLOPs of the neck ``build_neck`` makes for these settings.

    Returns ``neck_params`` (input projections included), ``neck_flops`` (at ``image_size``),
    ``projection_params`` (the 1x1 input projections, or the FPN's lateral convs) and
    ``conv3x3_per_repeat`` (3x3 convs per repeat; torchvision's FPN counts as one repeat).
    ``norm_layer`` and ``conv`` as for ``build_neck`` (norms add parameters, no counted FLOPs).
    """
    in_channels = resolve_backbone_channels(backbone_channels)
    shapes = backbone_feature_shapes(in_channels, image_size)
    with torch.device("meta"):
        neck = build_neck(arch, in_channels, channels, repeats, norm_layer=norm_layer, conv=conv)
        inputs = [torch.empty(shape) for shape in shapes]
    projection = count_params(neck.projections if hasattr(neck, "projections") else neck.fpn.inner_blocks)
    conv3x3 = sum(1 for m in neck.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    return {
        "neck_params": count_params(neck),
        "neck_flops": count_flops(neck, inputs),
        "projection_params": projection,
        "conv3x3_per_repeat": conv3x3 // len(getattr(neck, "stages", [neck])),
    }


def detector_costs(
    config: Any, arch: ArchSpec | str, *, num_classes: int, backbone: tuple[int, int] | None = None
) -> dict[str, int]:
    """Neck and total parameters and per-image FLOPs of the RetinaNet that ``config`` (a
    :class:`~evo_fpn.training.config.ProxyConfig`) builds for ``arch``, at its image size.

    ``backbone``: ``(params, flops)`` of a backbone the trial does not run (cached features);
    ``None`` counts the backbone from the model. Built on the ``meta`` device: only the neck is
    counted per architecture; the head (and a counted backbone) once per configuration.
    """
    from evo_fpn.model.detector import neck_norm_layer

    fixed = _fixed_costs(config, arch, num_classes, backbone is None)
    norm = neck_norm_layer(arch, config.neck_norm, config.fpn_norm)
    neck = neck_cost(
        arch, fixed.neck_in_channels, config.width, config.repeats, config.image_size, norm_layer=norm,
        conv=config.cell_conv,
    )  # fmt: skip
    backbone_params, backbone_flops = backbone or (fixed.backbone_params, fixed.backbone_flops)
    return {
        "neck_params": neck["neck_params"],
        "total_params": backbone_params + neck["neck_params"] + fixed.head_params,
        "neck_flops": neck["neck_flops"],
        "total_flops": backbone_flops + neck["neck_flops"] + fixed.head_flops,
    }


class _Fixed(NamedTuple):
    neck_in_channels: tuple[int, ...]
    backbone_params: int
    backbone_flops: int
    head_params: int
    head_flops: int


_FIXED: dict[tuple[Any, ...], _Fixed] = {}


def _fixed_costs(config: Any, arch: ArchSpec | str, num_classes: int, count_backbone: bool) -> _Fixed:
    """What no wiring changes in ``config``'s detector (only the pyramid's levels do): the neck's
    input channels, the backbone's cost (when counted) and the head's. Counting them took most of
    a supernet trial's bookkeeping, so they are counted once per (configuration, levels)."""
    levels = arch if isinstance(arch, str) else (arch.min_level, arch.max_level)
    key = (config, num_classes, count_backbone, levels)
    if key not in _FIXED:
        s = config.image_size
        with torch.device("meta"):
            model = config.build_detector(arch, num_classes=num_classes, with_backbone=count_backbone)
        assert model.neck is not None
        backbone = (0, 0)
        if count_backbone:
            assert model.backbone is not None
            image = torch.empty(1, 3, s, s, device="meta")
            backbone = (count_params(model.backbone), count_flops(model.backbone, image))
        head = model.retina.head
        sizes = [-(-s // 2**level) for level in model.levels]  # ceil halvings of the image, one per pyramid level
        head_flops = count_flops(head, [torch.empty(1, config.width, n, n, device="meta") for n in sizes])
        if len(_FIXED) >= 64:
            _FIXED.clear()
        _FIXED[key] = _Fixed(tuple(model.neck.in_channels), *backbone, count_params(head), head_flops)
    return _FIXED[key]
