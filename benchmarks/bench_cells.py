"""Why do our pyramids lose to torchvision's FPN? The same architectures under controlled changes.

    python -m benchmarks.bench_cells                       # resumable; rerun to continue
    python -m benchmarks.bench_cells --shard 1/2 &         # a second process shares the runs
    python -m benchmarks.bench_cells --settings default,none --archs published,fpn --seeds 3
    python -m benchmarks.bench_cells --mode reference --settings default,none
    python -m benchmarks.bench_cells --seeds 2 --list      # the runs still missing, train nothing
    python -m benchmarks.bench_cells --report              # the table from the records, train nothing
    python -m benchmarks.bench_cells --report --json       # the same rows as one JSON list

Every run trains one (architecture, setting, seed) and appends one JSON line to
``benchmarks/records/cells.jsonl`` (committed: a few hundred bytes a run) as soon as it
finishes, keyed by the fingerprint of the configuration it ran; a rerun skips what is there.

``--mode proxy`` is the default preset on its cached backbone (one seed per run, seeds
0..N-1; the preset's own score is the mean of its seeds). ``--mode reference`` is the 8-epoch
end-to-end reference of ``bench_fidelity`` (backbone from scratch, 6000 images) with the
same setting applied. A setting is a set of ProxyConfig changes (:data:`SETTINGS`);
``default`` is the shipped preset.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import records_io
from benchmarks.bench_fidelity import REFERENCES
from benchmarks.bench_proxy import parse_shard, spec_json
from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN, ArchSpec
from evo_fpn.tasks.proxy import PRESETS, ProxyConfig, ProxyTask

RECORDS = Path(__file__).resolve().parent / "records" / "cells.jsonl"

ARCHS: dict[str, ArchSpec | str] = {
    "torchvision_fpn": "torchvision_fpn",
    "published": PUBLISHED_NASFPN,
    "fpn": FPN_LIKE,
}


def _scaled_image(factor: float) -> dict[str, Any]:
    """The default preset's scenes at ``factor`` x the pixels: image, digit sizes and anchors
    scaled alike, so only the feature maps' resolution changes."""
    d = ProxyConfig()
    return {
        "image_size": round(d.image_size * factor),
        "digits_min_scale": round(d.digits_min_scale * factor),
        "digits_max_scale": round(d.digits_max_scale * factor),
        "anchor_sizes": tuple(a * factor for a in d.anchor_sizes),
    }


SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},  # the shipped defaults (1 repeat since the depth finding)
    # depth
    "repeats2": {"repeats": 2},
    "repeats3": {"repeats": 3},  # the shipped default before the depth finding: the ablations below ran on it
    # the norm in the cells (and, for the control, in torchvision's FPN), at 3 repeats where the gap was
    "bn_recal": {"repeats": 3, "norm_recal_batches": 50},  # BatchNorm statistics re-estimated on 50 train batches
    "group": {"repeats": 3, "neck_norm": "group"},
    "none": {"repeats": 3, "neck_norm": "none"},
    "fpn_batch": {"fpn_norm": "batch"},  # torchvision FPN with BatchNorm (NAS-FPN necks: unchanged)
    # the recipe: no weight decay on norm weights and biases (the authors' code decays conv weights only)
    "no_norm_decay": {"repeats": 3, "norm_decay": False},
    # deep supervision (a head on every repeat's pyramid)
    "anytime": {"repeats": 3, "anytime": True},
    # budget: the gap against training length (the default is 16 epochs)
    "epochs4": {"epochs": 4.0},
    "epochs8": {"epochs": 8.0},
    "epochs16": {"epochs": 16.0},
    "epochs32": {"epochs": 32.0},
    # the BatchNorm FPN control at 16 epochs, where published NAS-FPN and FPN are level end to end
    "fpn_batch16": {"fpn_norm": "batch", "epochs": 16.0},
    # map size: the same scenes at 1.5x the pixels, so P7 is 2x2 and P6 3x3 instead of 1x1 and
    # 2x2; a backbone stage of its own
    "image192": _scaled_image(1.5),
}
"""Controlled changes to the default preset (torchvision's FPN has no repeats or anytime, so
for it those settings equal ``default`` and are not run twice). Records are matched to a
setting by the network and recipe they trained (:func:`record_key`), not by the setting's name,
so a change of the shipped defaults keeps every record in its right row."""

LABELS: dict[str, str] = {
    "default": "shipped default (BatchNorm, 1 repeat; proxy 16 epochs, end to end 8)",
    "repeats2": "2 repeats",
    "repeats3": "3 repeats (the default until the depth finding)",
    "bn_recal": "3 repeats, BN statistics re-estimated (50 train batches)",
    "group": "3 repeats, GroupNorm in the cells",
    "none": "3 repeats, no norm in the cells",
    "fpn_batch": "BatchNorm in torchvision's FPN",
    "no_norm_decay": "3 repeats, no weight decay on norms and biases",
    "anytime": "3 repeats, anytime (a head on every repeat)",
    "epochs4": "4 epochs",
    "epochs8": "8 epochs",
    "epochs16": "16 epochs",
    "epochs32": "32 epochs",
    "fpn_batch16": "BatchNorm in torchvision's FPN, 16 epochs",
    "image192": "192 px (digits and anchors x1.5; P7 2x2)",
}
ARCH_LABELS = {"torchvision_fpn": "torchvision FPN", "published": "published NAS-FPN", "fpn": "FPN-like"}

LEGACY_BASE: dict[str, Any] = {"repeats": 3}
"""Records written before the default became 1 repeat carry no ``config``: they ran on the
base configuration with these fields (checked against their fingerprint when read)."""


def base_config(mode: str) -> ProxyConfig:
    """One seed of the default preset (proxy) or the 8-epoch end-to-end reference."""
    return PRESETS["default"].replace(seeds=1) if mode == "proxy" else REFERENCES["adamw-8ep"]


def config_for(mode: str, setting: str) -> ProxyConfig:
    return base_config(mode).replace(**SETTINGS[setting])


def _as_built(config: ProxyConfig | dict[str, Any], arch: str) -> dict[str, Any]:
    """The fields of ``config`` that change the detector ``arch`` trains (for
    torchvision's FPN: not repeats, anytime or BatchNorm recalibration; its norm as built)."""
    d = dict(config.to_dict() if isinstance(config, ProxyConfig) else config)
    if arch == "torchvision_fpn":
        norm = d["fpn_norm"] or ("none" if d["neck_norm"] == "batch" else d["neck_norm"])
        for k in ("repeats", "anytime", "norm_recal_batches", "neck_norm", "fpn_norm"):
            d.pop(k)
        d["built_norm"] = norm
    else:
        d.pop("fpn_norm")
    d.pop("seed", None)
    return d


def run_key(config: ProxyConfig | dict[str, Any], arch: str) -> str:
    """What one (arch, seed) run trained, as a string: equal for runs that trained the same thing."""
    return json.dumps(_as_built(config, arch), sort_keys=True)


def record_config(record: dict[str, Any]) -> dict[str, Any] | None:
    """The full configuration a record ran (``None``: a stale record that matches no known base)."""
    if "config" in record:
        return record["config"]
    config = base_config(record["mode"]).replace(**LEGACY_BASE).replace(**record.get("changes", {}))
    return config.to_dict() if config.fingerprint() == record["fingerprint"] else None


def record_key(record: dict[str, Any]) -> str | None:
    config = record_config(record)
    return None if config is None else run_key(config, record["arch"])


def applies(arch: str, setting: str, mode: str = "proxy") -> bool:
    """Whether ``setting`` trains something for ``arch`` that no setting before it trains (else
    its runs and its row would repeat that one's: ``fpn_batch16`` in the proxy is ``fpn_batch``)."""
    if setting == "default":
        return True
    built = _as_built(config_for(mode, setting), arch)
    earlier = list(SETTINGS)[: list(SETTINGS).index(setting)]
    return all(built != _as_built(config_for(mode, other), arch) for other in earlier)


def load_records(path: Path = RECORDS) -> list[dict[str, Any]]:
    return records_io.load_records(path)


def done_keys(records: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    return {(key, r["arch"], r["seed"]) for r in records if (key := record_key(r)) is not None}


def jobs(modes: list[str], settings: list[str], archs: list[str], seeds: int) -> list[tuple[str, str, str, int]]:
    """(mode, setting, arch, seed), seed-major: every pair gets its first seed before any its second."""
    return [
        (mode, setting, arch, seed)
        for mode in modes
        for seed in range(seeds)
        for setting in settings
        for arch in archs
        if applies(arch, setting, mode)
    ]


def run_one(mode: str, setting: str, arch: str, seed: int, *, device: str) -> dict[str, Any]:
    config = config_for(mode, setting)
    task = ProxyTask(config.replace(seed=seed), device=device, progress=False).prepare()
    t0 = time.perf_counter()
    metrics = task.evaluate(ARCHS[arch])
    return {
        "fingerprint": config.fingerprint(),
        "mode": mode,
        "setting": setting,
        "changes": SETTINGS[setting],
        "arch": arch,
        "seed": seed,
        "spec": spec_json(ARCHS[arch]),
        "config": config.replace(seed=seed).to_dict(),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "threads": torch.get_num_threads(),
        **{k: v for k, v in metrics.items() if k not in ("spec", "spec_hash", "history")},
    }


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (mode, setting, arch) over the records that trained what the setting trains now."""
    keyed = [(record_key(r), r) for r in records]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for mode in ("proxy", "reference"):
        for setting in SETTINGS:
            for arch in ARCHS:
                if not applies(arch, setting, mode):
                    continue
                key = run_key(config_for(mode, setting), arch)
                runs = [r for k, r in keyed if k == key and r["mode"] == mode and r["arch"] == arch]
                if runs:
                    groups[(mode, setting, arch)] = runs
    rows = []
    for (mode, setting, arch), runs in groups.items():
        runs = sorted({r["seed"]: r for r in runs}.values(), key=lambda r: r["seed"])
        aps = [r["ap"] for r in runs]
        rows.append(
            {
                "arch": arch,
                "setting": setting,
                "mode": mode,
                "ap_mean": statistics.fmean(aps),
                "ap_std": statistics.stdev(aps) if len(aps) >= 2 else None,
                "seeds": len(aps),
                "ap_seeds": aps,
                "ap50_mean": statistics.fmean(r["ap50"] for r in runs),
                "neck_flops": runs[0]["neck_flops"],
                "neck_params": runs[0]["neck_params"],
                "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in runs),
                "threads": sorted({r["threads"] for r in runs}),
            }
        )
    order_s, order_a = list(SETTINGS), list(ARCHS)
    rows.sort(key=lambda r: (r["mode"] != "proxy", order_s.index(r["setting"]), order_a.index(r["arch"])))
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'mode':<9} {'setting':<14} {'arch':<16} {'AP mean':>8} {'std':>7} {'seeds':>5} {'neck MFLOPs':>12} "
          f"{'neck params':>12} {'train s':>8}")  # fmt: skip
    for r in rows:
        std = f"{r['ap_std']:.4f}" if r["ap_std"] is not None else "-"
        print(
            f"{r['mode']:<9} {r['setting']:<14} {r['arch']:<16} {r['ap_mean']:8.4f} {std:>7} {r['seeds']:5d} "
            f"{r['neck_flops'] / 1e6:12.1f} {r['neck_params']:12,d} {r['train_seconds_mean']:8.0f}"
        )


def print_markdown(rows: list[dict[str, Any]]) -> None:
    """The table as docs/benchmarks/cells.md shows it."""
    print("| mode | setting | architecture | AP mean | std | seeds (APs) | neck MFLOPs | neck params |")
    print("|---|---|---|--:|--:|---|--:|--:|")
    for r in rows:
        mode = "proxy" if r["mode"] == "proxy" else "end to end"
        std = f"{r['ap_std']:.4f}" if r["ap_std"] is not None else "–"
        aps = ", ".join(f"{a:.4f}" for a in r["ap_seeds"])
        print(
            f"| {mode} | `{r['setting']}`: {LABELS[r['setting']]} | {ARCH_LABELS[r['arch']]} | {r['ap_mean']:.4f} "
            f"| {std} | {r['seeds']} ({aps}) | {r['neck_flops'] / 1e6:.1f} | {r['neck_params']:,} |"
        )


def _names(text: str, known: dict[str, Any], what: str, parser: argparse.ArgumentParser) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        parser.error(f"unknown {what} {', '.join(bad) or '(none)'}; choose from {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names from SETTINGS")
    p.add_argument("--archs", default=",".join(ARCHS), help="comma-separated: torchvision_fpn, published, fpn")
    p.add_argument("--mode", default="proxy", choices=("proxy", "reference", "both"))
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per (setting, arch)")
    p.add_argument("--max-runs", type=int, default=0, help="stop after this many runs (0: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared, busy CPU)")
    p.add_argument("--shard", default="0/1", help="I/N: every N-th missing run from the I-th")
    p.add_argument("--list", action="store_true", help="print the missing runs this process would train, train nothing")
    p.add_argument("--report", action="store_true", help="print the table from the records, train nothing")
    p.add_argument("--json", action="store_true", help="with --report: the rows as one JSON list")
    p.add_argument("--markdown", action="store_true", help="with --report: the docs page's table")
    p.add_argument("--records", type=Path, default=RECORDS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    shard, shards = parse_shard(p, args.shard)
    settings = _names(args.settings, SETTINGS, "setting", p)
    archs = _names(args.archs, ARCHS, "architecture", p)
    modes = ["proxy", "reference"] if args.mode == "both" else [args.mode]
    if not args.report:
        torch.set_num_threads(args.threads)
        args.records.parent.mkdir(parents=True, exist_ok=True)
        done = done_keys(load_records(args.records))
        todo = [
            j
            for j in jobs(modes, settings, archs, args.seeds)
            if (run_key(config_for(j[0], j[1]), j[2]), j[2], j[3]) not in done
        ]
        mine = todo[shard::shards][: args.max_runs or None]
        print(f"{len(todo)} runs missing; this process runs {len(mine)}", file=sys.stderr, flush=True)
        if args.list:
            for mode, setting, arch, seed in mine:
                print(f"{mode:<9} {setting:<13} {arch:<16} seed {seed}")
            return 0
        for mode, setting, arch, seed in mine:
            rec = run_one(mode, setting, arch, seed, device=args.device)
            with args.records.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{mode:<9} {setting:<10} {arch:<16} seed {seed}  AP {rec['ap']:.4f}  {rec['wall_seconds']:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    rows = summarise(load_records(args.records))
    if args.json:
        print(json.dumps(rows))
    elif args.markdown:
        print_markdown(rows)
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
