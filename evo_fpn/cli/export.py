"""Export a found neck alone to ONNX or TorchScript, for a detector outside evo-fpn.

    python -m evo_fpn.export published --backbone resnet50 --format onnx --out neck.onnx
    python -m evo_fpn.export best.json --backbone resnet18 --width 64 --repeats 3 \\
        --format torchscript --out neck.pt --image-size 512
    python -m evo_fpn.export runs/train-x/spec.json --weights runs/train-x/model.pt --format onnx --out neck.onnx

``SPEC`` is anything :func:`evo_fpn.cli.common.load_arch` reads (``published``, ``fpn``, inline
JSON, a spec / record / trial-params file). The file's inputs are the backbone's C3..C5 maps
(``c3``, ``c4``, ``c5``: the backbone's channels at strides 8, 16, 32 of ``--image-size``), its
outputs ``p3`` .. ``p7``; the batch size is free, the image size fixed. ``--weights`` loads a
``model.pt`` of ``python -m evo_fpn.train`` (its spec must be ``SPEC``); the settings not given
here (backbone, width, repeats, norm, cell conv) then come from that run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from evo_fpn.arch.spec import REFERENCE_SPECS
from evo_fpn.cli.common import ArgumentParser, UsageError, guard, image_size_arg, load_arch, positive_int
from evo_fpn.model.backbone_with_neck import load_trained, trained_record
from evo_fpn.model.cost import backbone_feature_shapes
from evo_fpn.model.detector import neck_norm_layer
from evo_fpn.model.export import FORMATS, export_neck, output_names
from evo_fpn.model.neck import BACKBONE_CHANNELS, CELL_CONVS, build_neck

DEFAULTS = {"width": 256, "repeats": 7, "neck_norm": "batch", "cell_conv": "conv3x3"}
"""The paper's 7@256 (as ``inspect``), the project's norm and cell conv."""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m evo_fpn.export", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("spec", help=f"{' | '.join(REFERENCE_SPECS)} | PATH.json | inline JSON")
    p.add_argument("--backbone", help=f"whose C3..C5 channels the neck takes: {', '.join(BACKBONE_CHANNELS)}")
    p.add_argument("--width", type=positive_int, help=f"pyramid channels (default {DEFAULTS['width']})")
    p.add_argument("--repeats", type=positive_int, help=f"pyramid repeats (default {DEFAULTS['repeats']})")
    p.add_argument("--format", choices=FORMATS, help="file format (default: from --out's suffix, .onnx or .pt)")
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--image-size", type=image_size_arg, default="640", help="S or HxW the neck is exported for")
    p.add_argument("--weights", help="a model.pt of python -m evo_fpn.train (default: freshly initialised)")
    return p


def _format(args: argparse.Namespace, out: Path) -> str:
    if args.format:
        return args.format
    by_suffix = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}
    if out.suffix.lower() not in by_suffix:
        raise UsageError(f"cannot tell the format from {out.name!r}: pass --format {' or '.join(FORMATS)}")
    return by_suffix[out.suffix.lower()]


def _out_path(text: str) -> Path:
    out = Path(text).expanduser()
    if out.is_dir():
        raise UsageError(f"--out {text} is a folder; name the file to write, e.g. {Path(text) / 'neck.onnx'}")
    if not out.parent.is_dir():
        raise UsageError(f"--out {text}: folder {out.parent} does not exist; create it first")
    return out


@guard
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = _out_path(args.out)
    fmt = _format(args, out)
    spec = load_arch(args.spec)
    run = dict(trained_record(args.weights)[1].get("config") or {}) if args.weights else {}
    backbone = args.backbone or run.get("backbone")
    if backbone is None:
        raise UsageError("pass --backbone (the neck's input channels depend on it), or --weights of a run")
    if backbone not in BACKBONE_CHANNELS:
        raise UsageError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONE_CHANNELS)}")
    width = args.width or run.get("width", DEFAULTS["width"])
    repeats = args.repeats or run.get("repeats", DEFAULTS["repeats"])
    norm, conv = (run.get(k, DEFAULTS[k]) for k in ("neck_norm", "cell_conv"))
    if conv not in CELL_CONVS:
        raise UsageError(f"the run's cell_conv {conv!r} is none of {', '.join(CELL_CONVS)}")
    channels = BACKBONE_CHANNELS[backbone]
    neck = build_neck(spec, channels, width, repeats, norm_layer=neck_norm_layer(spec, norm), conv=conv)
    if args.weights:
        load_trained(neck, args.weights)
    export_neck(neck, out, image_size=args.image_size, fmt=fmt)

    ins = ", ".join(f"c{3 + i} {tuple(s)}" for i, s in enumerate(backbone_feature_shapes(channels, args.image_size)))
    h, w = args.image_size
    print(f"wrote {out} ({fmt}): neck {spec.name or 'spec'} {spec.canonical_hash()}, {repeats}@{width} on {backbone}")
    print(f"  inputs   {ins}  (batch free; images {h}x{w})")
    print(f"  outputs  {', '.join(output_names(neck))}, {width} channels each")
    if args.weights:
        print(f"  weights  {args.weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
