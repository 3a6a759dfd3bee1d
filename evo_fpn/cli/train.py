"""Train one architecture at a larger budget: ``python -m evo_fpn.train --arch published``.

The same code as the proxy task (:class:`evo_fpn.tasks.proxy.ProxyTask`), with the backbone trained
end to end by default and a longer schedule. Saves ``model.pt`` (state_dict), ``metrics.json``
and ``spec.json`` to ``--out`` and prints the AP breakdown.

Examples::

    python -m evo_fpn.train --arch published --epochs 24
    python -m evo_fpn.train --arch best.json --data ~/coco --preset paper --device auto
    python -m evo_fpn.train --arch fpn --set width=128 --set lr=0.0005
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from evo_fpn.arch.spec import REFERENCE_SPECS, ArchSpec
from evo_fpn.cli.common import ArgumentParser, UsageError, guard, load_arch, parse_sets
from evo_fpn.tasks.proxy import PRESETS, ProxyConfig, ProxyTask
from evo_fpn.training.evaluate import METRIC_NAMES

NAMED = (*REFERENCE_SPECS, "torchvision_fpn")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m evo_fpn.train", description=__doc__.splitlines()[0])
    p.add_argument("--arch", required=True, help=f"{' | '.join(NAMED)} | PATH.json")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="proxy preset to start from")
    p.add_argument("--data", help="COCO-layout dataset folder (default: the built-in digits)")
    p.add_argument("--epochs", type=float, default=None, help="training epochs (default: 3x the preset's)")
    p.add_argument(
        "--mode",
        choices=("end_to_end", "cached"),
        default="end_to_end",
        help="train the backbone too (default) or only neck + head on the cached backbone",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--out", help="output folder (default: runs/train-<arch>-<time>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a proxy setting (TOML value, e.g. lr=0.0005)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    arch = load_arch(args.arch, allow_torchvision_fpn=True)
    base = PRESETS[args.preset]
    changes: dict[str, Any] = {"backbone_mode": args.mode, "seed": args.seed, "seeds": 1}  # one model to save
    changes["epochs"] = args.epochs if args.epochs is not None else 3 * base.epochs
    if args.data is not None:
        changes["data"] = args.data
    changes.update(parse_sets(args.set))
    config = ProxyConfig.from_dict(changes, base=base)
    if config.epochs <= 0:
        raise UsageError("--epochs must be > 0")
    if config.seeds != 1:
        raise UsageError("train trains and saves one model: drop proxy.seeds and pick the seed with --seed")
    if args.preset == "paper" and config.data is None:
        raise UsageError("the paper preset trains on COCO: pass --data pointing at a COCO folder")
    name = arch if isinstance(arch, str) else (arch.name or arch.canonical_hash())
    out = Path(args.out or f"runs/train-{name}-{time.strftime('%Y%m%d-%H%M%S')}").expanduser()
    out.mkdir(parents=True, exist_ok=True)

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    task = ProxyTask(config, device=args.device, progress=not args.no_progress)
    task.prepare()
    model, metrics = task.fit(arch)
    torch.save(model.state_dict(), out / "model.pt")
    record = {k: v for k, v in metrics.items() if k != "history"}
    record.update(arch=name, config=config.to_dict(), history=[list(h) for h in metrics["history"]])
    if isinstance(arch, ArchSpec):
        record.update(spec=arch.to_json(), spec_hash=arch.canonical_hash())
    else:
        record.update(spec=arch, spec_hash=arch)
    (out / "metrics.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    if isinstance(arch, ArchSpec):
        (out / "spec.json").write_text(arch.to_json(indent=2))

    print(f"trained {name} for {config.epochs:g} epochs ({config.backbone_mode}) on {task.device}")
    for key in METRIC_NAMES:
        value = metrics[key]
        shown = "-  (no objects of this size in the validation set)" if value is None else f"{value:.4f}"
        print(f"  {key:<10} {shown}")
    print(f"  params     {metrics['total_params']:,} (neck {metrics['neck_params']:,})")
    print(f"  GFLOPs     {metrics['total_flops'] / 1e9:.2f} per image (neck {metrics['neck_flops'] / 1e9:.3f})")
    print(f"  train      {metrics['train_seconds']:.0f} s, {metrics['images_per_s']:.1f} images/s")
    print(f"saved {out / 'model.pt'} and {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
