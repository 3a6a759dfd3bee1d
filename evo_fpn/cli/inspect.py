"""Look at one architecture: its cells, canonical hash, and what its neck costs.

    python -m evo_fpn.inspect published                       # the paper's 7@256 on ResNet-50, 640x640
    python -m evo_fpn.inspect fpn --backbone resnet18 --channels 64 --repeats 3 --image-size 512
    python -m evo_fpn.inspect my_spec.json --json

``SPEC`` is anything :func:`evo_fpn.cli.common.load_arch` reads: ``published``, ``fpn``, inline
JSON, or a JSON file holding a spec (``ArchSpec.to_json``, the ``spec`` user attr of a trial,
a record with a ``spec`` key such as ``python -m evo_fpn.train``'s ``metrics.json``) or a
trial's params (``cell0.input_i`` ...). The defaults
(resnet50, 256 channels, 7 repeats, 640x640) are the paper's "R-50 NAS-FPN 7@256" model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from evo_fpn.arch.spec import REFERENCE_SPECS, ArchSpec
from evo_fpn.cli.common import ArgumentParser, UsageError, guard, image_size_arg, load_arch, positive_int
from evo_fpn.model.cost import neck_cost, resolve_backbone_channels
from evo_fpn.model.neck import BACKBONE_CHANNELS

DEFAULTS = {"backbone": "resnet50", "channels": 256, "repeats": 7, "image_size": "640"}


def parse_backbone(text: str) -> tuple[int, int, int]:
    """A backbone name, or ``C3,C4,C5`` channels -> the three channel counts."""
    try:
        if text in BACKBONE_CHANNELS:
            return resolve_backbone_channels(text)
        return resolve_backbone_channels([int(c) for c in text.split(",")])
    except ValueError:
        raise UsageError(
            f"unknown backbone {text!r}; use one of {', '.join(BACKBONE_CHANNELS)} "
            "or C3,C4,C5 channels like 512,1024,2048"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m evo_fpn.inspect", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("spec", help=f"{' | '.join(REFERENCE_SPECS)} | PATH.json | inline JSON")
    p.add_argument(
        "--backbone",
        default=DEFAULTS["backbone"],
        help=f"backbone for the input projections: {', '.join(BACKBONE_CHANNELS)}, or C3,C4,C5 channels "
        f"(default {DEFAULTS['backbone']})",
    )
    p.add_argument("--channels", type=positive_int, default=DEFAULTS["channels"], help="pyramid width (default 256)")
    p.add_argument("--repeats", type=positive_int, default=DEFAULTS["repeats"], help="pyramid repeats (default 7)")
    p.add_argument(
        "--image-size", type=image_size_arg, default=DEFAULTS["image_size"], help="S or HxW for FLOPs (default 640)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def describe(spec: ArchSpec, *, backbone: str, channels: int, repeats: int, image_size: tuple[int, int]) -> dict:
    """Everything ``inspect`` shows, as one JSON-ready dict."""
    in_channels = parse_backbone(backbone)
    cost = neck_cost(spec, in_channels, channels, repeats, image_size)
    return {
        "name": spec.name,
        "hash": spec.canonical_hash(),
        "min_level": spec.min_level,
        "max_level": spec.max_level,
        "cells": [c.to_dict() for c in spec.cells],
        "unused_inputs": [list(x) for x in spec.extra_inputs()],
        "backbone": backbone,
        "in_channels": list(in_channels),
        "channels": channels,
        "repeats": repeats,
        "image_size": list(image_size),
        **cost,
    }


def render(spec: ArchSpec, info: dict[str, Any]) -> str:
    h, w = info["image_size"]
    c3, c4, c5 = info["in_channels"]
    title = info["name"] or "spec"
    return "\n".join(
        [
            f"{title}: P{spec.min_level}..P{spec.max_level}, {len(spec.cells)} cells",
            "",
            spec.table(),
            "",
            f"canonical hash     {info['hash']}",
            f"neck               {info['repeats']}@{info['channels']} on {info['backbone']} (C3..C5 = {c3}/{c4}/{c5})",
            f"3x3 convs          {info['conv3x3_per_repeat']} per repeat",
            f"neck parameters    {info['neck_params']:,} (input projections {info['projection_params']:,})",
            f"neck FLOPs         {info['neck_flops'] / 1e9:.4g} G per image at {h}x{w} (multiply-add = 2 FLOPs)",
        ]
    )


@guard
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parse_backbone(args.backbone)
    spec = load_arch(args.spec)
    info = describe(
        spec, backbone=args.backbone, channels=args.channels, repeats=args.repeats, image_size=args.image_size
    )
    print(json.dumps(info) if args.json else render(spec, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
