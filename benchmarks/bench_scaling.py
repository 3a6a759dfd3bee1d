"""Scaling of the runner over workers on PostgreSQL: 1, 2 and 4 workers, side by side.

    python benchmarks/bench_scaling.py [--trials 24] [--sleep 1.0] [--workers 1 2 4] [--sampler evolution]

Starts its own throwaway PostgreSQL cluster (:mod:`evo_fpn.storage.testing_pg`), and for each worker
count runs that many real ``python -m evo_fpn.run`` processes on one fresh study with the
synthetic objective, which sleeps ``--sleep`` seconds per trial (a stand-in for training: a
worker waits on its GPU, not on the CPU). Reports, per worker count:

* trials/s over the search (first trial start -> last trial end, from the storage), and the
  speed-up relative to one worker; also wall time including process start-up;
* lost trials (budget minus COMPLETE) and duplicated trials (COMPLETE beyond the budget, or
  repeated trial numbers); the target for both is 0.

Results go to ``benchmarks/results/bench_scaling.json`` (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from evo_fpn.storage.testing_pg import PgCluster

RESULTS = Path(__file__).resolve().parent / "results"


def study_file(folder: Path, *, trials: int, sleep: float, sampler: str) -> Path:
    path = folder / "scaling.toml"
    path.write_text(
        f'description = "scaling benchmark"\nn_trials = {trials}\nobjective = "synthetic"\n\n'
        f'[sampler]\nname = "{sampler}"\n\n[synthetic]\nsleep = {sleep}\n\n'
        "[runner]\nheartbeat_interval = 5\ngrace_period = 20\n"
    )
    return path


def run_workers(k: int, url: str, toml: Path, cwd: Path) -> dict:
    cmd = [sys.executable, "-m", "evo_fpn.run", "--study", str(toml), "--storage", url, "--no-progress"]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([*cmd, "--worker-index", str(i)], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for i in range(k)
    ]
    errors = [p.communicate()[1].decode()[-500:] for p in procs]
    wall = time.perf_counter() - t0
    codes = [p.returncode for p in procs]
    if any(codes):
        raise SystemExit(f"a worker failed ({codes}): {errors}")
    study = optuna.load_study(study_name="scaling", storage=url)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    start = min(t.datetime_start for t in trials if t.datetime_start)
    end = max(t.datetime_complete for t in complete)
    span = (end - start).total_seconds()
    numbers = [t.number for t in trials]
    first_by_worker: dict[str, object] = {}
    for t in sorted(complete, key=lambda t: t.datetime_start):
        first_by_worker.setdefault(t.user_attrs.get("worker"), t.datetime_start)
    lag = (max(first_by_worker.values()) - min(first_by_worker.values())).total_seconds()
    return {
        "startup_lag_seconds": lag,
        "workers": k,
        "complete": len(complete),
        "other_states": sorted(t.state.name for t in trials if t.state != TrialState.COMPLETE),
        "search_seconds": span,
        "wall_seconds": wall,
        "trials_per_s": len(complete) / span,
        "distinct_workers": len({t.user_attrs.get("worker") for t in complete}),
        "duplicate_numbers": len(numbers) - len(set(numbers)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=32, help="study budget per run")
    ap.add_argument("--sleep", type=float, default=2.0, help="seconds per synthetic trial")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--sampler", default="evolution")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    with PgCluster() as pg, tempfile.TemporaryDirectory(prefix="evo-fpn-scaling-") as tmp:
        toml = study_file(Path(tmp), trials=args.trials, sleep=args.sleep, sampler=args.sampler)
        for k in args.workers:
            url = pg.new_database(f"scaling_{k}")
            row = run_workers(k, url, toml, Path(tmp))
            row["lost"] = max(0, args.trials - row["complete"])
            row["duplicated"] = max(0, row["complete"] - args.trials) + row["duplicate_numbers"]
            rows.append(row)
            print(f"  {k} worker(s): {row['complete']} trials in {row['search_seconds']:.1f} s", file=sys.stderr)
    base = rows[0]["trials_per_s"]
    ideal = 1.0 / args.sleep
    print(f"\nscaling on PostgreSQL: {args.trials} trials, synthetic objective sleeping {args.sleep} s, "
          f"sampler {args.sampler}")  # fmt: skip
    print(f"{'workers':>7}  {'trials/s':>8}  {'speed-up':>8}  {'efficiency':>10}  {'overhead s/trial':>16}  "
          f"{'start lag s':>11}  {'wall s':>6}  {'lost':>4}  {'duplicated':>10}")  # fmt: skip
    for r in rows:
        speedup = r["trials_per_s"] / base
        eff = r["trials_per_s"] / (ideal * r["workers"])
        overhead = r["workers"] / r["trials_per_s"] - args.sleep
        r.update(speedup=speedup, efficiency=eff, overhead_s_per_trial=overhead)
        print(f"{r['workers']:>7}  {r['trials_per_s']:>8.3f}  {speedup:>7.2f}x  {eff:>10.0%}  {overhead:>16.2f}  "
              f"{r['startup_lag_seconds']:>11.1f}  {r['wall_seconds']:>6.1f}  {r['lost']:>4}  "
              f"{r['duplicated']:>10}")  # fmt: skip
    print(f"speed-up: trials/s (first trial start -> last trial end) relative to {rows[0]['workers']} worker; "
          f"efficiency: trials/s / (workers / sleep); overhead: worker-seconds per trial beyond the sleep; "
          f"start lag: first trial of the last worker to start minus that of the first")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "bench_scaling.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
