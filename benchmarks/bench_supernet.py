"""Does the supernet rank like training? Kendall tau of supernet AP against the stand-alone proxy.

    python -m benchmarks.bench_supernet                        # train each lever's supernet once, score; resumable
    python -m benchmarks.bench_supernet --levers default,fair  # some levers only
    python -m benchmarks.bench_supernet --with-proxy           # also run missing stand-alone proxy seeds
    python -m benchmarks.bench_supernet --speed                # seconds a trial, interleaved with a proxy seed
    python -m benchmarks.bench_supernet --throughput           # architectures an hour, previous code and shipped side
                                                               # by side (2 runner workers each), the profile, the floor
    python -m benchmarks.bench_supernet --report [--json|--markdown]  # the table from the records, train nothing
                                                               # (--json: and the "shipped" row)

The architectures are the 20 of the search space among ``bench_proxy``'s (published NAS-FPN,
FPN-like and 18 seeded random points; torchvision's FPN is not in the space). The stand-alone
score of each is the default preset's: the mean AP of seeds 0 and 1, read from
``benchmarks/records/proxy_trials.jsonl`` (``--with-proxy`` runs the missing ones, about five
minutes a seed on one core); while seed 1 is missing for some, the table also ranks against seed 0
alone, and prints how well the proxy's two seeds agree with each other (the ceiling). A lever is a
change to the supernet's settings (or the proxy's, for the cells' norm); the levers that change
only how a trial is scored share the trained weights, and every supernet keeps checkpoints, so the
curve against training length costs no training.
Every scored (lever, checkpoint, architecture) is one JSON line in
``benchmarks/records/supernet.jsonl``; a rerun skips what is there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from scipy.stats import kendalltau, spearmanr

from benchmarks import records_io
from benchmarks.bench_fidelity import REFERENCES
from benchmarks.bench_proxy import RECORDS, architectures, load_done, run_trials, seed_config
from evo_fpn.arch.space import SpaceConfig
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.tasks.proxy import PRESETS, ProxyTask
from evo_fpn.tasks.supernet import SupernetConfig, SupernetTask

SUPERNET_RECORDS = RECORDS / "supernet.jsonl"
SPEED_RECORDS = RECORDS / "supernet_speed.jsonl"
PREVIOUS_RECAL = 20
"""``recal_batches`` before issue 31 (the shipped default re-estimates nothing: ``recal0`` ranked better)."""
PROXY_SEEDS = 2

LEVERS: dict[str, dict[str, Any]] = {
    "default": {},
    # BatchNorm statistics of each wiring: none re-estimated (the default since issue 31), 20
    # batches (the default before it), or 100
    "recal0": {"supernet": {"recal_batches": 0}},
    "recal20": {"supernet": {"recal_batches": 20}},
    "recal100": {"supernet": {"recal_batches": 100}},
    # FairNAS: every choice of every decision trained equally often
    "fair": {"supernet": {"sampling": "fair", "recal_batches": 20}},
    # GroupNorm cells: no statistics to re-estimate (the stand-alone proxy keeps BatchNorm)
    "group": {"proxy": {"neck_norm": "group"}, "supernet": {"recal_batches": 20}},
    # each candidate trained alone for 50 steps (about half an epoch) from the shared weights
    "finetune50": {"supernet": {"finetune_steps": 50, "recal_batches": 20}},
    # few-shot NAS: one sub-supernet per op of the first cell, each 8 more epochs from the default's
    "fewshot": {"supernet": {"split": "cell0.op", "split_epochs": 8.0, "recal_batches": 20}},
    # fewer val images (a fixed subset): the fidelity of a cheaper score, and of a screen_images step
    "val100": {"supernet": {"val_images": 100}},
    "val150": {"supernet": {"val_images": 150}},
}
"""Changes to the default supernet (``supernet``) or to the proxy it trains on (``proxy``)."""


def space_archs() -> dict[str, ArchSpec]:
    return {n: a for n, a in architectures(18).items() if isinstance(a, ArchSpec)}


def lever_task(lever: str, device: str = "cpu", progress: bool = True) -> SupernetTask:
    change = LEVERS[lever]
    proxy = PRESETS["default"].replace(**change.get("proxy", {}))
    supernet = SupernetConfig().replace(**change.get("supernet", {}))
    return SupernetTask(proxy, SpaceConfig(), supernet, device=device, progress=progress)


def load_records(path: Path = SUPERNET_RECORDS) -> list[dict[str, Any]]:
    return records_io.load_records(path)


def scoring(task: SupernetTask) -> tuple[str, int, int, int]:
    """What a score depends on besides the checkpoint and the architecture."""
    return (task.key(), task.supernet.recal_batches, task.supernet.finetune_steps, task.supernet.val_images)


def record_scoring(rec: dict[str, Any]) -> tuple[str, int, int, int]:
    return (rec["supernet_key"], rec["recal_batches"], rec.get("finetune_steps", 0), rec.get("val_images", 0))


def score(levers: list[str], *, device: str, path: Path = SUPERNET_RECORDS) -> None:
    """Score every architecture with every checkpoint of every lever's supernet, appending records."""
    done = {(record_scoring(r), r["checkpoint"], r["arch"]) for r in load_records(path)}
    archs = space_archs()
    for lever in levers:
        task = lever_task(lever, device).prepare()
        one_shot = task.supernet.one_shot()  # a few-shot supernet's cost includes the one it starts from
        one_shot_seconds = 0.0 if one_shot == task.supernet else SupernetTask(
            task.config, task.space, one_shot, progress=False, store=task.store
        ).prepare().meta["seconds"]  # fmt: skip
        # the curve against training length for the default; the other levers at its end only
        for checkpoint in task.checkpoints if lever == "default" else task.checkpoints[-1:]:
            task.use_checkpoint(checkpoint)
            for name, spec in archs.items():
                rid = (scoring(task), checkpoint, name)
                if rid in done:
                    continue
                metrics = task.evaluate(spec)
                rec = {
                    "lever": lever,
                    "supernet_key": task.key(),
                    "supernet": task.supernet.to_dict(),
                    "proxy_fingerprint": task.config.fingerprint(),
                    "recal_batches": task.supernet.recal_batches,
                    "finetune_steps": task.supernet.finetune_steps,
                    **({"val_images": task.supernet.val_images} if task.supernet.val_images else {}),
                    "checkpoint": checkpoint,
                    "supernet_seconds": task.meta["seconds"] + one_shot_seconds,
                    "supernet_threads": task.meta["threads"],
                    "arch": name,
                    "spec_hash": spec.canonical_hash(),  # the spec itself: bench_proxy.architectures(18)
                    **{
                        k: metrics[k]
                        for k in (
                            "ap",
                            "ap50",
                            "eval_seconds",
                            "recal_seconds",
                            "finetune_seconds",
                            "threads",
                            "neck_flops",
                        )
                    },
                }
                with path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                done.add(rid)
                print(f"{lever:<9} {checkpoint:>4} ep  {name:<22} AP {rec['ap']:.4f}  {rec['eval_seconds']:.2f} s",
                      file=sys.stderr, flush=True)  # fmt: skip


def proxy_seeds() -> dict[str, dict[int, float]]:
    """Stand-alone default-preset AP of each architecture, by seed (0..PROXY_SEEDS-1), as recorded."""
    done = load_done(RECORDS / "proxy_trials.jsonl", seed_config(PRESETS["default"]).fingerprint())
    return {n: {s: done[(n, s)]["ap"] for s in range(PROXY_SEEDS) if (n, s) in done} for n in space_archs()}


def truths() -> dict[str, dict[str, float]]:
    """What the supernet's scores are ranked against: the default proxy (mean of its 2 seeds,
    where both ran), its seed 0 alone (more architectures while seeds are missing), and the
    end-to-end reference."""
    seeds = proxy_seeds()
    return {
        "proxy": {n: statistics.fmean(by.values()) for n, by in seeds.items() if len(by) == PROXY_SEEDS},
        "seed0": {n: by[0] for n, by in seeds.items() if 0 in by},
        "reference": reference_scores(),
    }


def seed_agreement() -> dict[str, Any]:
    """Kendall tau of the proxy's seed 0 against its seed 1: how well the stand-alone proxy
    agrees with itself, the ceiling for any cheaper ranking of it."""
    both = [by for by in proxy_seeds().values() if len(by) == PROXY_SEEDS]
    tau = float(kendalltau([b[0] for b in both], [b[1] for b in both]).statistic) if len(both) >= 3 else None
    return {"tau_seed0_seed1": tau, "n": len(both)}


def reference_scores() -> dict[str, float]:
    """End-to-end reference AP (8 epochs, 1 repeat) where a run is recorded."""
    done = load_done(RECORDS / "fidelity_reference.jsonl", REFERENCES["adamw-8ep"].fingerprint())
    return {n: r["ap"] for (n, s), r in done.items() if s == 0}


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (lever, checkpoint): tau/rho against the stand-alone proxy and the reference."""
    truth_by = truths()
    tasks = {lever: lever_task(lever, progress=False) for lever in LEVERS}
    current = {lever: scoring(task) for lever, task in tasks.items()}
    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in records:  # a record counts for every lever that scores as it was scored (whatever its label)
        for lever, how in current.items():
            if how == record_scoring(r):
                groups.setdefault((lever, r["checkpoint"]), {})[r["arch"]] = r
    rows = []
    for (lever, checkpoint), by_arch in groups.items():
        row: dict[str, Any] = {"lever": lever, "checkpoint_epochs": float(checkpoint), "archs": len(by_arch)}
        for what, truth in truth_by.items():
            names = [n for n in by_arch if n in truth]
            a, b = [by_arch[n]["ap"] for n in names], [truth[n] for n in names]
            ok = len(names) >= 3
            row[f"tau_{what}"] = float(kendalltau(a, b).statistic) if ok else None
            row[f"rho_{what}"] = float(spearmanr(a, b).statistic) if ok else None
            row[f"n_{what}"] = len(names)
        runs = list(by_arch.values())
        row["seconds_per_trial"] = statistics.median(r["eval_seconds"] for r in runs)
        # an earlier checkpoint cost its share of the one-shot training (a few-shot one is scored at the end)
        trained = tasks[lever].supernet  # the records' own: they match its key
        share = 1.0 if trained.split else float(checkpoint) / trained.epochs
        row["supernet_minutes"] = runs[0]["supernet_seconds"] * share / 60
        row["ap_mean"] = statistics.fmean(r["ap"] for r in runs)
        rows.append(row)
    order = list(LEVERS)
    rows.sort(key=lambda r: (order.index(r["lever"]), r["checkpoint_epochs"]))
    return rows


def shipped_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The shipped defaults in one row: the latest throughput of the shipped code (default preset
    where recorded), the default lever's rank fidelity over the 20 and the commit measured."""
    speed = [json.loads(line) for line in SPEED_RECORDS.read_text().splitlines() if line.strip()] if (
        SPEED_RECORDS.is_file()) else []  # fmt: skip
    shipped = [r for r in speed if r.get("code") == "shipped"]
    best = [r for r in shipped if r.get("preset") == "default"] or shipped
    latest = best[-1] if best else {}
    default = [r for r in rows if r["lever"] == "default"]
    return {
        "lever": "shipped",
        "archs_per_hour": latest.get("archs_per_hour", latest.get("trials_per_hour")),
        "throughput_preset": latest.get("preset"),
        "tau_proxy": default[-1]["tau_proxy"] if default else None,
        "n_proxy": default[-1]["n_proxy"] if default else 0,
        "commit": latest.get("commit", head_commit()),
        "supernet": SupernetConfig().to_dict(),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    print(f"{'lever':<10} {'epochs':>6} {'archs':>5} {'tau proxy':>9} {'rho proxy':>9} {'n':>3} {'tau seed0':>9} "
          f"{'n':>3} {'tau ref':>8} {'n':>3} {'mean AP':>8} {'s/trial':>8} {'supernet min':>12}")  # fmt: skip
    for r in rows:
        print(
            f"{r['lever']:<10} {r['checkpoint_epochs']:6g} {r['archs']:5d} {f(r['tau_proxy']):>9} "
            f"{f(r['rho_proxy']):>9} {r['n_proxy']:3d} {f(r['tau_seed0']):>9} {r['n_seed0']:3d} "
            f"{f(r['tau_reference']):>8} {r['n_reference']:3d} "
            f"{r['ap_mean']:8.4f} {r['seconds_per_trial']:8.2f} {r['supernet_minutes']:12.1f}"
        )
    agree = seed_agreement()
    print(
        f"stand-alone proxy, seed 0 against seed 1: tau {f(agree['tau_seed0_seed1'])} over {agree['n']} architectures"
    )


def print_markdown(rows: list[dict[str, Any]]) -> None:
    def f(x: float | None, n: int) -> str:
        return "–" if x is None else f"{x:.2f} ({n})"

    print(
        "| lever | supernet epochs | tau proxy, 2 seeds (n) | tau proxy seed 0 (n) | rho seed 0 | mean AP | s a trial "
        "| training, min |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        rho = "–" if r["rho_seed0"] is None else f"{r['rho_seed0']:.2f}"
        print(
            f"| `{r['lever']}` | {r['checkpoint_epochs']:g} | {f(r['tau_proxy'], r['n_proxy'])} | "
            f"{f(r['tau_seed0'], r['n_seed0'])} | {rho} | {r['ap_mean']:.4f} | {r['seconds_per_trial']:.1f} | "
            f"{r['supernet_minutes']:.1f} |"
        )
    agree = seed_agreement()
    tau = "–" if agree["tau_seed0_seed1"] is None else f"{agree['tau_seed0_seed1']:.2f}"
    print(f"\nThe stand-alone proxy's seed 0 against its seed 1: tau {tau} over {agree['n']} architectures.")


def speed(device: str, trials: int) -> dict[str, Any]:
    """Core-seconds per supernet trial (norm re-estimation and evaluation included) against a
    stand-alone default-preset trial, measured interleaved in one run: half the supernet trials,
    one proxy seed, the other half. The default trial is its 2 seeds (on 2 cores they train side
    by side, one core each), so it costs 2 x one seed's core-seconds."""
    task = lever_task("default", device).prepare()
    archs = list(space_archs().values())[:trials]
    half = len(archs) // 2
    times: list[float] = []

    def score(specs: list[ArchSpec]) -> None:
        for spec in specs:
            t = time.perf_counter()
            task.evaluate(spec)
            times.append(time.perf_counter() - t)

    score(archs[:half])
    proxy = ProxyTask(seed_config(PRESETS["default"]), device=device, progress=False).prepare()
    t1 = time.perf_counter()
    proxy.evaluate(archs[0])
    per_seed = time.perf_counter() - t1
    score(archs[half:])
    per_supernet = statistics.median(times)
    threads = torch.get_num_threads() if task.store.device.type == "cpu" else 0
    per_proxy = PRESETS["default"].seeds * per_seed
    out = {
        "supernet_seconds_per_trial": per_supernet,
        "supernet_seconds_max": max(times),
        "proxy_seed_seconds": per_seed,
        "proxy_core_seconds_per_trial": per_proxy,
        "ratio": per_proxy / per_supernet,
        "threads": threads,
        "device": str(task.store.device),
        "supernet_trials_per_hour_2_cores": 2 * 3600 / per_supernet if threads == 1 else None,
        "supernet_training_minutes": task.meta["seconds"] / 60,
        "trials": len(times),
    }
    print(
        f"supernet: {per_supernet:.2f} s a trial (median of {len(times)}, max {max(times):.2f}; {threads} thread); "
        f"stand-alone default trial: {PRESETS['default'].seeds} seeds x {per_seed:.0f} s; ratio {out['ratio']:.0f}x; "
        f"the supernet's one-off training took {task.meta['seconds'] / 60:.1f} min"
    )
    return out


BASELINE_REF = "014ae26"
"""The code before issue 31 (main when it was filed): ``--throughput`` runs it beside the shipped code."""


def checkout(ref: str, into: Path) -> Path:
    """The files of commit ``ref`` of this repository under ``into`` (``git archive``: no work tree needed)."""
    repo = Path(__file__).resolve().parents[1]
    into.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(["git", "-C", str(repo), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    return into


def head_commit() -> str:
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def throughput(
    workers: int, trials: int, threads: int, *, code: Path | None = None, extra: Sequence[str] = (), label: str = ""
) -> dict[str, Any]:
    """Architectures scored an hour by ``workers`` runner processes side by side, as a user runs
    them (``python -m evo_fpn.run --study screen``, each on its own SQLite study, so no storage is
    shared): from the first trial's start to the last trial's end across all of them, sampler and
    storage included, start-up (loading the features and the supernet) excluded and reported.
    ``code``: a checkout to run instead of this one (the previous code path)."""
    import os

    import optuna

    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "evo_fpn.run", "--study", "screen", "--no-progress",
               "--n-trials", str(trials), "--threads", str(threads), *extra]  # fmt: skip
        t0 = time.time()
        procs = [
            subprocess.Popen(
                [*cmd, "--new-study", f"w{i}", "--storage", f"sqlite:///{tmp}/w{i}.db", "--seed", str(i + 1)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                cwd=code,
            )  # fmt: skip
            for i in range(workers)
        ]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode:
                raise SystemExit(f"a worker failed: {err.decode().strip().splitlines()[-1:]}")
        runs = [
            optuna.load_study(study_name=f"w{i}", storage=f"sqlite:///{tmp}/w{i}.db").get_trials(deepcopy=False)
            for i in range(workers)
        ]
    done = [t for run in runs for t in run if t.state == optuna.trial.TrialState.COMPLETE]
    first = min(t.datetime_start for t in done).timestamp()
    span = max(t.datetime_complete for t in done).timestamp() - first
    per = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    evals = [t.user_attrs["eval_seconds"] for t in done]
    out = {
        "workers": workers,
        "threads": threads,
        "trials": len(done),
        "span_seconds": span,
        "startup_seconds": first - t0,
        "trial_seconds_median": statistics.median(per),
        "eval_seconds_median": statistics.median(evals),
        "loop_seconds_median": statistics.median(p - e for p, e in zip(per, evals, strict=True)),
        "trials_per_hour": len(done) * 3600 / span,
        "archs_per_hour": len({t.user_attrs.get("spec_hash") for t in done}) * 3600 / span,
        "load": os.getloadavg()[0],
    }
    print(
        f"{label:<9} {workers} workers x {threads} thread: {len(done)} trials in {span:.0f} s = "
        f"{out['trials_per_hour']:.0f} trials ({out['archs_per_hour']:.0f} architectures) an hour "
        f"(a trial: median {out['trial_seconds_median']:.2f} s, of which "
        f"evaluation {out['eval_seconds_median']:.2f} s; start-up {out['startup_seconds']:.0f} s, excluded; "
        f"load {out['load']:.1f})",
        flush=True,
    )
    return out


def throughput_side_by_side(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The previous code path and the shipped defaults, one after the other in this invocation
    (then the previous again where ``--rounds 2``), so their ratio holds on a loaded machine;
    then the profile table of one trial and the forward pass's floor."""
    from benchmarks.supernet_profile import floor, print_profile, profile

    extra = ["--preset", args.preset] if args.preset != "default" else []
    rows: list[dict[str, Any]] = []
    commit = head_commit()
    with tempfile.TemporaryDirectory() as tmp:
        base = checkout(args.baseline, Path(tmp) / "base")
        for _ in range(args.rounds):
            for label, code in (("previous", base), ("shipped", None)):
                out = throughput(args.workers, args.throughput_trials, args.threads, code=code, extra=extra,
                                 label=label)  # fmt: skip
                ref = args.baseline if code is not None else commit
                rows.append({"code": label, "commit": ref, "preset": args.preset, **out})
    mean = {k: statistics.fmean(r["trials_per_hour"] for r in rows if r["code"] == k) for k in ("previous", "shipped")}
    print(f"shipped / previous: {mean['shipped'] / mean['previous']:.2f}x trials an hour ({args.preset} preset)")
    proxy = PRESETS[args.preset]
    new = SupernetTask(proxy, SpaceConfig(), SupernetConfig(), device="cpu", progress=False).prepare()
    old = SupernetTask(proxy, SpaceConfig(), SupernetConfig(recal_batches=PREVIOUS_RECAL), device="cpu",
                       progress=False, store=new.store).prepare()  # fmt: skip
    specs = list(space_archs().values())[: args.profile_trials]
    print_profile(profile(old, specs, legacy=True), profile(new, specs, legacy=False), floor(new, specs[0]))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levers", default="default", help=f"comma-separated from {', '.join(LEVERS)}")
    p.add_argument("--with-proxy", action="store_true", help="first run the missing stand-alone proxy seeds")
    p.add_argument("--speed", action="store_true", help="time supernet trials against one proxy trial")
    p.add_argument("--speed-trials", type=int, default=20)
    p.add_argument("--throughput", action="store_true", help="trials an hour of runner workers side by side")
    p.add_argument("--workers", type=int, default=2, help="with --throughput: runner processes")
    p.add_argument("--throughput-trials", type=int, default=40, help="with --throughput: trials a worker")
    p.add_argument("--baseline", default=BASELINE_REF, help="with --throughput: the previous code's commit")
    p.add_argument("--rounds", type=int, default=1, help="with --throughput: previous + shipped runs, alternated")
    p.add_argument("--preset", default="default", help="with --throughput: the proxy preset (quick for a smoke run)")
    p.add_argument("--profile-trials", type=int, default=5, help="with --throughput: trials the profile times")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--report", action="store_true", help="print the table from the records, train nothing")
    p.add_argument("--json", action="store_true", help="with --report: the rows as one JSON list")
    p.add_argument("--markdown", action="store_true", help="with --report: the docs page's table")
    p.add_argument("--records", type=Path, default=SUPERNET_RECORDS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    levers = [n.strip() for n in args.levers.split(",") if n.strip()]
    bad = [n for n in levers if n not in LEVERS]
    if bad or not levers:
        p.error(f"unknown lever {', '.join(bad) or '(none)'}; choose from {', '.join(LEVERS)}")
    if not args.report:
        torch.set_num_threads(args.threads)
        args.records.parent.mkdir(parents=True, exist_ok=True)
        if args.with_proxy:
            jobs = [(n, a, s) for s in range(PROXY_SEEDS) for n, a in space_archs().items()]
            run_trials(PRESETS["default"], jobs, device=args.device, path=RECORDS / "proxy_trials.jsonl")
        if args.throughput:
            for out in throughput_side_by_side(args):
                with SPEED_RECORDS.open("a") as f:
                    f.write(json.dumps({"date": time.strftime("%Y-%m-%d"), "mode": "throughput", **out}) + "\n")
            return 0
        if args.speed:
            out = speed(args.device, args.speed_trials)
            with (RECORDS / "supernet_speed.jsonl").open("a") as f:
                f.write(json.dumps({"date": time.strftime("%Y-%m-%d"), **out}) + "\n")
            return 0
        score(levers, device=args.device, path=args.records)
    rows = summarise(load_records(args.records))
    if args.json:
        print(json.dumps([*rows, shipped_row(rows)]))
    elif args.markdown:
        print_markdown(rows)
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
