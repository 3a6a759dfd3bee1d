"""The pyramid network ("neck"): a plain ``nn.Module`` interpreter of an :class:`ArchSpec`.

In the spirit of TF Model Garden's NAS-FPN decoder (block specs as data, one generic
interpreter) and mmcv's merge cells (one small base cell, the ops as subclasses). The
semantics follow the authors' TF code (see ``shared/DESIGN.md``):

* C3..C5 are projected to the pyramid width by 1x1 conv + norm where their channels differ;
  P6, P7 are max-pooled (kernel = stride = 2, ceil mode) from the projected P5, P6.
* Every level's spatial size comes from the actual feature maps, so any input size works,
  including sizes not divisible by 128. Resampling always ends at the target's exact size.
* A cell resamples its two inputs to its level (nearest upsampling or max pooling with
  kernel = stride = 2^diff), merges them (``sum`` or ``global_pool``), adds the unused
  same-level features (``ArchSpec.extra_inputs``) for output cells, then ReLU -> 3x3 conv -> norm.
  The cell's conv is configuration (:data:`CELL_CONVS`): the paper's dense 3x3, or a
  depthwise-separable 3x3 (depthwise 3x3 then pointwise 1x1, no norm between them, as TF's
  ``SeparableConv2D`` in NAS-FPNLite and SSDLite) for mobile necks.
* The architecture is repeated ``repeats`` times, each repeat with its own weights.

``build_neck`` is the one entry point the detector uses; ``"torchvision_fpn"`` gives
torchvision's ``FeaturePyramidNetwork`` with ``LastLevelP6P7`` behind the same interface.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from evo_fpn.arch.spec import REFERENCE_SPECS, ArchSpec, Cell

NormFactory = Callable[[int], nn.Module]
"""Builds a norm layer for ``channels`` (``nn.BatchNorm2d``, ``partial(nn.GroupNorm, 32)``, ...)."""

BACKBONE_CHANNELS: dict[str, tuple[int, int, int]] = {
    # torchvision ResNets: outputs of layer2, layer3, layer4 (strides 8, 16, 32).
    "resnet10": (128, 256, 512),  # ResNet(BasicBlock, [1, 1, 1, 1]), the paper's proxy backbone
    "resnet18": (128, 256, 512),
    "resnet34": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
    "resnet101": (512, 1024, 2048),
    "resnet152": (512, 1024, 2048),
    "resnext50_32x4d": (512, 1024, 2048),
    "wide_resnet50_2": (512, 1024, 2048),
    # torchvision ``model.features``: the last layer at strides 8, 16, 32 (measured).
    "mobilenet_v3_large": (40, 112, 960),
    "mobilenet_v3_small": (24, 48, 576),
    "efficientnet_b0": (40, 112, 1280),
}
"""C3, C4, C5 channels of named torchvision backbones (the proxy builds the backbones)."""

FPN_NAME = "torchvision_fpn"

CELL_CONVS: tuple[str, ...] = ("conv3x3", "separable3x3")
"""The conv after every cell's merge: dense 3x3 (the paper) or depthwise-separable 3x3 (NAS-FPNLite)."""


def cell_conv(kind: str, channels: int, bias: bool) -> nn.Module:
    """The cell's ``channels -> channels`` conv of ``kind`` (one of :data:`CELL_CONVS`)."""
    if kind == "conv3x3":
        return nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=bias)
    if kind == "separable3x3":
        return nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=False),
            nn.Conv2d(channels, channels, kernel_size=1, bias=bias),
        )
    raise ValueError(f"unknown cell conv {kind!r}; choose one of {', '.join(CELL_CONVS)}")


def _as_list(features: Mapping[str, Tensor] | Sequence[Tensor]) -> list[Tensor]:
    """Backbone output (an ``OrderedDict`` in level order, or a list) -> list of maps."""
    if isinstance(features, Mapping):
        return list(features.values())
    if isinstance(features, Tensor):
        raise TypeError("pass the backbone's C3..C5 maps as a list or OrderedDict, not one tensor")
    return list(features)


def resample(x: Tensor, size: Sequence[int], level_diff: int) -> Tensor:
    """Resample ``x`` to exactly ``size`` (H, W); ``level_diff`` = target level - source level.

    Finer -> coarser: max pooling with kernel = stride = 2^diff in ceil mode, so sizes that
    do not divide evenly keep their border. Coarser -> finer: nearest upsampling. A map
    whose size still differs (a backbone with unusual rounding) is snapped with nearest.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if level_diff > 0:
        k = 2**level_diff
        x = F.max_pool2d(x, kernel_size=k, stride=k, ceil_mode=True)
        if tuple(x.shape[-2:]) == size:
            return x
    return F.interpolate(x, size=size, mode="nearest")


def global_pool_merge(coarse: Tensor, fine: Tensor) -> Tensor:
    """The paper's global pooling op: ``coarse + fine * sigmoid(global_max_pool(coarse))``."""
    attention = torch.sigmoid(torch.amax(coarse, dim=(-2, -1), keepdim=True))
    return coarse + fine * attention


def no_norm(channels: int) -> nn.Module:
    """The norm factory of a norm-free neck (its convs then get biases)."""
    return nn.Identity()


def _needs_bias(norm: nn.Module) -> bool:
    """A conv followed by a norm needs no bias (the norm's shift replaces it); one without does."""
    return isinstance(norm, nn.Identity)


def _projection(in_channels: int, channels: int, norm_layer: NormFactory) -> nn.Sequential:
    norm = norm_layer(channels)
    return nn.Sequential(nn.Conv2d(in_channels, channels, kernel_size=1, bias=_needs_bias(norm)), norm)


class MergeCell(nn.Module):
    """One merging cell: resample two inputs, merge, add unused features, ReLU -> conv -> norm.

    Subclasses define only :meth:`merge`; everything else (which nodes, which level, the
    unused-feature inputs, the output conv) is shared.
    """

    def __init__(
        self,
        *,
        spec: ArchSpec,
        index: int,
        channels: int,
        norm_layer: NormFactory,
        conv: str = "conv3x3",
    ) -> None:
        super().__init__()
        cell: Cell = spec.cells[index]
        self.level = cell.level
        self.inputs = tuple(cell.inputs)
        self.input_levels = tuple(spec.node_level(x) for x in cell.inputs)
        self.extras = tuple(spec.extra_inputs()[index])
        self.extra_levels = tuple(spec.node_level(x) for x in self.extras)
        names = [spec.node_name(x) for x in (*self.inputs, *self.extras)]
        self._desc = f"P{self.level} <- {cell.op}({names[0]}, {names[1]})" + "".join(f" + {n}" for n in names[2:])
        self.relu = nn.ReLU()
        self.norm = norm_layer(channels)
        self.conv = cell_conv(conv, channels, _needs_bias(self.norm))

    def merge(self, a: Tensor, b: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return self._desc

    def forward(self, nodes: Sequence[Tensor], sizes: Mapping[int, Sequence[int]]) -> Tensor:
        size = sizes[self.level]
        a, b = (
            resample(nodes[x], size, self.level - lvl) for x, lvl in zip(self.inputs, self.input_levels, strict=True)
        )
        out = self.merge(a, b)
        for x, lvl in zip(self.extras, self.extra_levels, strict=True):
            out = out + resample(nodes[x], size, self.level - lvl)
        return self.norm(self.conv(self.relu(out)))


class SumCell(MergeCell):
    """``a + b``."""

    def merge(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class GlobalPoolCell(MergeCell):
    """Global pooling (attention): the coarser input (higher level; on a tie, the first) is
    the attention source, as in the authors' code (mmdetection swaps the roles; we do not)."""

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.first_is_coarse = self.input_levels[0] >= self.input_levels[1]

    def merge(self, a: Tensor, b: Tensor) -> Tensor:
        return global_pool_merge(a, b) if self.first_is_coarse else global_pool_merge(b, a)


CELL_TYPES: dict[str, type[MergeCell]] = {"sum": SumCell, "global_pool": GlobalPoolCell}


class PyramidRepeat(nn.Module):
    """One pass of the architecture: pyramid in (one map per level), pyramid out."""

    def __init__(self, *, spec: ArchSpec, channels: int, norm_layer: NormFactory, conv: str = "conv3x3") -> None:
        super().__init__()
        self.levels = spec.levels
        self.cells = nn.ModuleList(
            CELL_TYPES[c.op](spec=spec, index=k, channels=channels, norm_layer=norm_layer, conv=conv)
            for k, c in enumerate(spec.cells)
        )
        self.output_nodes = {lvl: spec.num_inputs + k for lvl, k in spec.output_cells().items()}

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        sizes = {lvl: tuple(f.shape[-2:]) for lvl, f in zip(self.levels, feats, strict=True)}
        nodes = list(feats)
        for cell in self.cells:
            nodes.append(cell(nodes, sizes))
        return [nodes[self.output_nodes[lvl]] for lvl in self.levels]


class NasFpn(nn.Module):
    """A NAS-FPN neck interpreting ``spec``: backbone C-maps in, ``OrderedDict`` p3..p7 out.

    Example::

        >>> neck = NasFpn(spec=PUBLISHED_NASFPN, in_channels=(512, 1024, 2048), channels=256, repeats=7)
        >>> out = neck([torch.randn(1, 512, 80, 80), torch.randn(1, 1024, 40, 40), torch.randn(1, 2048, 20, 20)])
        >>> list(out), out["p7"].shape
        (['p3', 'p4', 'p5', 'p6', 'p7'], torch.Size([1, 256, 5, 5]))
    """

    def __init__(
        self,
        *,
        spec: ArchSpec,
        in_channels: Sequence[int],
        channels: int = 256,
        repeats: int = 1,
        norm_layer: NormFactory | None = None,
        conv: str = "conv3x3",
    ) -> None:
        super().__init__()
        spec.validate()
        in_channels = tuple(int(c) for c in in_channels)
        if not 1 <= len(in_channels) <= spec.num_inputs:
            raise ValueError(
                f"in_channels must give 1..{spec.num_inputs} backbone levels from P{spec.min_level}, "
                f"got {len(in_channels)}"
            )
        if any(c < 1 for c in in_channels):
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if conv not in CELL_CONVS:
            raise ValueError(f"unknown cell conv {conv!r}; choose one of {', '.join(CELL_CONVS)}")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.spec = spec
        self.in_channels = in_channels
        self.out_channels = channels
        self.repeats = repeats
        self.levels = tuple(spec.levels)
        self.names = [f"p{lvl}" for lvl in spec.levels]
        self.projections = nn.ModuleList(nn.Identity() if c == channels else _projection(c, channels, norm_layer)
                                         for c in in_channels)  # fmt: skip
        self.stages = nn.ModuleList(
            PyramidRepeat(spec=spec, channels=channels, norm_layer=norm_layer, conv=conv) for _ in range(repeats)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Convs as torchvision's FPN initialises them (kaiming uniform, a=1)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def input_pyramid(self, features: Mapping[str, Tensor] | Sequence[Tensor]) -> list[Tensor]:
        """Projected backbone maps, then max-pooled extra levels up to ``max_level``."""
        maps = _as_list(features)
        if len(maps) != len(self.projections):
            raise ValueError(
                f"expected {len(self.projections)} backbone maps (C{self.spec.min_level}..), got {len(maps)}"
            )
        feats = [proj(x) for proj, x in zip(self.projections, maps, strict=True)]
        while len(feats) < self.spec.num_inputs:
            feats.append(F.max_pool2d(feats[-1], kernel_size=2, stride=2, ceil_mode=True))
        return feats

    def forward_repeats(self, features: Mapping[str, Tensor] | Sequence[Tensor]) -> list[OrderedDict[str, Tensor]]:
        """The pyramid after every repeat (for "anytime" deep supervision); last = ``forward``."""
        feats = self.input_pyramid(features)
        outs = []
        for stage in self.stages:
            feats = stage(feats)
            outs.append(OrderedDict(zip(self.names, feats, strict=True)))
        return outs

    def forward(self, features: Mapping[str, Tensor] | Sequence[Tensor]) -> OrderedDict[str, Tensor]:
        feats = self.input_pyramid(features)
        for stage in self.stages:
            feats = stage(feats)
        return OrderedDict(zip(self.names, feats, strict=True))


class TorchvisionFpn(nn.Module):
    """torchvision's ``FeaturePyramidNetwork`` + ``LastLevelP6P7`` behind the NAS-FPN interface.

    P6/P7 are 3x3 stride-2 convs on P5, as in torchvision's ``retinanet_resnet50_fpn``. FPN
    has no repeats; ``norm_layer=None`` keeps torchvision's plain (norm-free) FPN.
    """

    def __init__(self, *, in_channels: Sequence[int], channels: int = 256, norm_layer: NormFactory | None = None):
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) != 3 or any(c < 1 for c in in_channels):
            raise ValueError(f"torchvision_fpn takes three positive C3..C5 channel counts, got {in_channels}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.in_channels = tuple(in_channels)
        self.out_channels = channels
        self.levels = (3, 4, 5, 6, 7)
        self.fpn = FeaturePyramidNetwork(
            in_channels, channels, extra_blocks=LastLevelP6P7(channels, channels), norm_layer=norm_layer
        )

    def forward(self, features: Mapping[str, Tensor] | Sequence[Tensor]) -> OrderedDict[str, Tensor]:
        maps = _as_list(features)
        if len(maps) != 3:
            raise ValueError(f"expected 3 backbone maps (C3..C5), got {len(maps)}")
        return self.fpn(OrderedDict((f"p{3 + i}", x) for i, x in enumerate(maps)))


def build_neck(
    arch: ArchSpec | str,
    in_channels: Sequence[int],
    channels: int,
    repeats: int,
    *,
    norm_layer: NormFactory | None = None,
    conv: str = "conv3x3",
) -> nn.Module:
    """The neck for ``arch``: an :class:`ArchSpec`, a reference name (``"published"``,
    ``"fpn"``), or ``"torchvision_fpn"`` (``repeats`` and ``conv`` are ignored for it).

    ``norm_layer=None`` means the neck's own default: BatchNorm for NAS-FPN necks, none for
    torchvision's FPN. Pass e.g. ``functools.partial(nn.GroupNorm, 32)`` for small batches.
    """
    if isinstance(arch, str):
        if arch == FPN_NAME:
            return TorchvisionFpn(in_channels=in_channels, channels=channels, norm_layer=norm_layer)
        if arch not in REFERENCE_SPECS:
            raise ValueError(
                f"unknown neck {arch!r}; use an ArchSpec, {FPN_NAME!r} or one of {sorted(REFERENCE_SPECS)}"
            )
        arch = REFERENCE_SPECS[arch]
    if not isinstance(arch, ArchSpec):
        raise TypeError(f"arch must be an ArchSpec or a name, got {type(arch).__name__}")
    return NasFpn(
        spec=arch, in_channels=in_channels, channels=channels, repeats=repeats, norm_layer=norm_layer, conv=conv
    )
