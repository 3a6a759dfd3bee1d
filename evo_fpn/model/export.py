"""A found neck alone as a file: ONNX (for onnxruntime, TensorRT, ...) or TorchScript.

The neck is exported at one image size: its inputs are the backbone's C3..C5 maps of that size
(``ceil(size / stride)`` for strides 8, 16, 32, as torchvision's backbones give them) and its
outputs are P-maps named ``p3`` .. ``p7``. Resampling sizes come from the actual maps in Python
(:func:`evo_fpn.model.neck.resample`), so tracing bakes them in: export again for another image
size. The batch dimension stays free.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``): it needs no extra package and
handles every op of the neck; opset :data:`OPSET` runs in onnxruntime. Example::

    python -m evo_fpn.export published --backbone resnet50 --width 256 --repeats 7 \\
        --format onnx --out neck.onnx --image-size 640
    python -m evo_fpn.export runs/train-x/spec.json --weights runs/train-x/model.pt \\
        --format torchscript --out neck.pt --image-size 256

or from Python: ``export_neck(neck, "neck.onnx", image_size=640)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from evo_fpn.model.cost import backbone_feature_shapes

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
OPSET = 17
"""ONNX opset: old enough for every current runtime (onnxruntime >= 1.11), new enough for the neck's ops."""


class NeckForExport(nn.Module):
    """The neck with plain tensors in and out (``c3, c4, c5`` -> ``(p3, ..., p7)``), as exporters want."""

    def __init__(self, neck: nn.Module) -> None:
        super().__init__()
        self.neck = neck

    def forward(self, c3: Tensor, c4: Tensor, c5: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.neck([c3, c4, c5]).values())


def example_inputs(
    neck: nn.Module, image_size: int | Sequence[int], batch: int = 1, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Random C3..C5 maps of the neck's input channels for images of ``image_size``."""
    generator = torch.Generator().manual_seed(seed)
    shapes = backbone_feature_shapes(neck.in_channels, image_size)
    return tuple(torch.randn((batch, *s[1:]), generator=generator) for s in shapes)  # type: ignore[return-value]


def output_names(neck: nn.Module) -> list[str]:
    return [f"p{level}" for level in getattr(neck, "levels", (3, 4, 5, 6, 7))]


def export_neck(neck: nn.Module, path: str | Path, *, image_size: int | Sequence[int], fmt: str = "onnx") -> Path:
    """Write ``neck`` (in eval mode) to ``path`` as ``fmt`` (:data:`FORMATS`) for images of ``image_size``.

    The file appears only when the export succeeded (written beside it, then renamed), so a
    failure leaves no half-written file. Returns the path.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    module = NeckForExport(neck)
    was_training = neck.training
    module.eval()
    inputs = example_inputs(neck, image_size)
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.tmp"))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # Expected and harmless here: tracing turns the map sizes into constants (the documented
            # fixed image size), and torch nudges towards its newer exporters.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            if fmt == "onnx":
                _onnx(module, inputs, tmp, output_names(neck))
            else:
                torch.jit.save(torch.jit.trace(module, inputs), tmp)
        os.replace(tmp, path)
    finally:
        neck.train(was_training)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _onnx(module: nn.Module, inputs: tuple[Tensor, ...], path: str, outputs: list[str]) -> None:
    names = ["c3", "c4", "c5"]
    torch.onnx.export(
        module,
        inputs,
        path,
        dynamo=False,
        opset_version=OPSET,
        input_names=names,
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in (*names, *outputs)},
    )
