"""Neck cost side by side: published NAS-FPN, the FPN-like spec, torchvision's FPN.

    python benchmarks/bench_neck.py                       # small CPU-friendly settings
    python benchmarks/bench_neck.py --backbone resnet50 --channels 256 --repeats 7 --image-size 640 --device cuda

Prints parameters, FLOPs (FlopCounterMode) and measured forward+backward time per batch,
each as a ratio to torchvision's FPN measured in the same run. Writes the numbers to
``benchmarks/results/bench_neck.json`` (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN
from evo_fpn.model.cost import backbone_feature_shapes, neck_cost, resolve_backbone_channels
from evo_fpn.model.neck import build_neck

ARCHS = {"torchvision_fpn": "torchvision_fpn", "fpn_like": FPN_LIKE, "published": PUBLISHED_NASFPN}


def time_steps(necks: dict[str, torch.nn.Module], feats: list[torch.Tensor], iters: int, device: torch.device):
    """Median seconds of one forward + backward pass per neck, the necks interleaved round-robin
    (so a busy machine slows them alike), after two warm-up rounds."""
    times: dict[str, list[float]] = {name: [] for name in necks}
    for i in range(iters + 2):
        for name, neck in necks.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = neck(feats)
            sum(o.float().square().mean() for o in out.values()).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=7)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    in_channels = resolve_backbone_channels(args.backbone)
    torch.manual_seed(0)
    feats = [
        torch.randn(args.batch, *s[1:], device=device) for s in backbone_feature_shapes(in_channels, args.image_size)
    ]
    necks = {name: build_neck(a, in_channels, args.channels, args.repeats).to(device) for name, a in ARCHS.items()}
    seconds = time_steps(necks, feats, args.iters, device)
    rows = {
        name: {
            **neck_cost(a, in_channels, args.channels, args.repeats, args.image_size),
            "seconds_per_step": seconds[name],
        }
        for name, a in ARCHS.items()
    }
    base = rows["torchvision_fpn"]
    print(
        f"{args.backbone}, {args.repeats}@{args.channels}, {args.image_size}x{args.image_size}, "
        f"batch {args.batch}, {device} (ratios to torchvision_fpn, same run)"
    )
    print(f"{'neck':16} {'params':>12} {'x':>6} {'GFLOPs/img':>11} {'x':>6} {'ms/step':>9} {'x':>6}")
    for name, r in rows.items():
        print(
            f"{name:16} {r['neck_params']:12,} {r['neck_params'] / base['neck_params']:6.2f} "
            f"{r['neck_flops'] / 1e9:11.3f} {r['neck_flops'] / base['neck_flops']:6.2f} "
            f"{r['seconds_per_step'] * 1e3:9.1f} {r['seconds_per_step'] / base['seconds_per_step']:6.2f}"
        )
    out = Path(__file__).resolve().parent / "results" / "bench_neck.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args) | {"device": str(device)}, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
