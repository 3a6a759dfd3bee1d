"""Does a search pay? Found necks against the FPN a user already has, on one table.

    python -m benchmarks.bench_payoff --report --json        # one JSON list, a row per (arch, mode, epochs)
    python -m benchmarks.bench_payoff --report               # the same rows as a table
    python -m benchmarks.bench_payoff --export-screen sqlite:///studies/screen.db:screen

The baselines' rows are ``bench_cells``' records (``benchmarks/records/cells.jsonl``): torchvision's
FPN as it ships (``torchvision_fpn``), with BatchNorm (``fpn_batch``) and published NAS-FPN
(``published``), in the default proxy (``mode: proxy``, 16 epochs on the cached backbone stage)
and end to end (``mode: reference``, 8 and 16 epochs). Found necks (``found-1``, ``found-2``, ...,
``found: true``) come from ``benchmarks/records/payoff.jsonl``, one line per trained seed, which
the search's finalist and retraining stages write. ``--export-screen STORAGE:STUDY`` writes a
screening study's compact record (trial number, state, spec hash, value, costs; a few hundred
bytes a trial) to ``benchmarks/records/screens/STUDY.jsonl``, so later work can build on the
scores without the database.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import bench_cells
from evo_fpn.arch.spec import PUBLISHED_NASFPN

RECORDS = Path(__file__).resolve().parent / "records"
FOUND = RECORDS / "payoff.jsonl"
SCREENS = RECORDS / "screens"

BASELINES: dict[tuple[str, str, str], tuple[str, float]] = {
    # (bench_cells mode, setting, arch) -> (payoff arch, epochs)
    ("proxy", "default", "torchvision_fpn"): ("torchvision_fpn", 16.0),
    ("proxy", "fpn_batch", "torchvision_fpn"): ("fpn_batch", 16.0),
    ("proxy", "default", "published"): ("published", 16.0),
    ("reference", "default", "torchvision_fpn"): ("torchvision_fpn", 8.0),
    ("reference", "default", "published"): ("published", 8.0),
    ("reference", "epochs16", "torchvision_fpn"): ("torchvision_fpn", 16.0),
    ("reference", "epochs16", "published"): ("published", 16.0),
    ("reference", "fpn_batch16", "torchvision_fpn"): ("fpn_batch", 16.0),
}
"""The baseline rows and where their records live (proxy trials train 16 epochs on the stage)."""

COST_KEYS = ("neck_flops", "total_flops", "neck_params", "total_params")


def baseline_rows() -> list[dict[str, Any]]:
    rows = []
    for r in bench_cells.summarise(bench_cells.load_records()):
        key = (r["mode"], r["setting"], r["arch"])
        if key not in BASELINES:
            continue
        arch, epochs = BASELINES[key]
        rows.append(
            {
                "arch": arch,
                "found": False,
                "mode": r["mode"],
                "epochs": epochs,
                "ap_mean": r["ap_mean"],
                "ap_std": r["ap_std"],
                "seeds": r["seeds"],
                "ap_seeds": r["ap_seeds"],
                "neck_flops": r["neck_flops"],
                "spec_hash": PUBLISHED_NASFPN.canonical_hash() if arch == "published" else None,
            }
        )
    return rows


def found_rows(path: Path = FOUND) -> list[dict[str, Any]]:
    """One row per (found neck, mode, epochs) over its recorded seeds (the latest record of a seed wins)."""
    if not path.is_file():
        return []
    groups: dict[tuple[str, str, float], dict[int, dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            groups.setdefault((r["arch"], r["mode"], float(r["epochs"])), {})[int(r["seed"])] = r
    rows = []
    for (arch, mode, epochs), by_seed in groups.items():
        runs = [by_seed[s] for s in sorted(by_seed)]
        aps = [float(r["ap"]) for r in runs]
        rows.append(
            {
                "arch": arch,
                "found": True,
                "mode": mode,
                "epochs": epochs,
                "ap_mean": statistics.fmean(aps),
                "ap_std": statistics.stdev(aps) if len(aps) > 1 else None,
                "seeds": len(aps),
                "ap_seeds": aps,
                "neck_flops": runs[0]["neck_flops"],
                "spec_hash": runs[0]["spec_hash"],
            }
        )
    return rows


def rows() -> list[dict[str, Any]]:
    order = {"proxy": 0, "reference": 1}
    out = baseline_rows() + found_rows()
    return sorted(out, key=lambda r: (order[r["mode"]], r["epochs"], r["found"], r["arch"]))


def screen_records(storage: str, study_name: str) -> list[dict[str, Any]]:
    """A screening study's trials, compact: what a later issue needs to build on its scores."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    out = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        out.append(
            {
                "number": t.number,
                "state": t.state.name,
                "spec_hash": attrs.get("spec_hash"),
                "value": t.value if t.values and len(t.values) == 1 else t.values,
                "cached_from": attrs.get("cached_from"),
                **{k: attrs[k] for k in COST_KEYS if k in attrs},
            }
        )
    return out


def export_screen(target: str, folder: Path = SCREENS) -> Path:
    storage, _, study_name = target.rpartition(":")
    if not storage or not study_name:
        raise SystemExit(
            f"error: --export-screen wants STORAGE:STUDY, e.g. sqlite:///studies/screen.db:screen; got {target!r}"
        )
    records = screen_records(storage, study_name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{study_name}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)
    return path


def print_table(table: list[dict[str, Any]]) -> None:
    head = ("arch", "found", "mode", "epochs", "AP mean", "std", "seeds", "neck MFLOPs")
    print(f"{head[0]:<16} {head[1]:>5} {head[2]:<9} {head[3]:>6} {head[4]:>8} {head[5]:>7} {head[6]:>5} {head[7]:>12}")
    for r in table:
        std = f"{r['ap_std']:.4f}" if r["ap_std"] is not None else "-"
        print(
            f"{r['arch']:<16} {'yes' if r['found'] else '':>5} {r['mode']:<9} {r['epochs']:6g} {r['ap_mean']:8.4f} "
            f"{std:>7} {r['seeds']:5d} {r['neck_flops'] / 1e6:12.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_payoff", description=__doc__.split("\n")[0])
    p.add_argument("--report", action="store_true", help="print the table from the records")
    p.add_argument("--json", action="store_true", help="with --report: the rows as one JSON list")
    p.add_argument("--export-screen", metavar="STORAGE:STUDY", help="write a screen's compact records")
    args = p.parse_args(argv)
    if args.export_screen:
        path = export_screen(args.export_screen)
        print(f"wrote {path}", file=sys.stderr)
    if args.report or not args.export_screen:
        table = rows()
        print(json.dumps(table)) if args.json else print_table(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
