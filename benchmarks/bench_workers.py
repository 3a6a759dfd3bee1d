"""Many workers on one PostgreSQL with its default settings, directly and through the storage server.

    python -m benchmarks.bench_workers [--workers 50 100 200] [--routes direct server] [--sleep 5] [--per-worker 2]

Starts a throwaway PostgreSQL cluster (:mod:`evo_fpn.storage.testing_pg`) with ``max_connections = 100``
(the server's default), and for each worker count and route starts that many real
``python -m evo_fpn.run`` processes at once (as a job array would) on a fresh study with the
synthetic objective (sleeping ``--sleep`` seconds a trial, evolution, a budget of
``--per-worker`` trials per worker). Route ``direct``: every worker on the database;
``server``: every worker on ``grpc://`` of one ``python -m evo_fpn.storage_server``. Prints for
each run: workers that died (non-zero exit; with a traceback or one line), workers that waited
for a connection, trials by state, duplicated trial numbers, budget overshoot (finished minus
budget), peak database connections (``pg_stat_activity`` sampled every 0.2 s, the sampler's
own excluded), trials per second (first trial start to last trial end) and the peak resident
memory per worker process (median and max, from ``/proc``).

Results go to ``benchmarks/results/bench_workers.json`` (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from evo_fpn.storage.testing_pg import PgCluster, free_port

RESULTS = Path(__file__).resolve().parent / "results"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def study_file(folder: Path, *, trials: int, sleep: float) -> Path:
    path = folder / "workers.toml"
    path.write_text(
        f'description = "many-workers benchmark"\nn_trials = {trials}\nobjective = "synthetic"\n\n'
        f'[sampler]\nname = "evolution"\n\n[synthetic]\nsleep = {sleep}\n\n[runner]\nfigures_every = 0\n'
    )
    return path


class Sampler(threading.Thread):
    """Samples database connections and the workers' resident memory until stopped."""

    def __init__(self, pg: PgCluster, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pg, self.pids = pg, pids
        self.peak_connections = 0
        self.rss_kb: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        conn = psycopg.connect(
            host="127.0.0.1", port=self.pg.port, user=self.pg.user, password=self.pg.password, dbname="postgres"
        )
        conn.autocommit = True
        try:
            while not self.stop.wait(0.2):
                n = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                ).fetchone()[0]
                self.peak_connections = max(self.peak_connections, int(n))
                for pid in list(self.pids):
                    kb = rss_kb(pid)
                    if kb:
                        self.rss_kb[pid] = max(self.rss_kb.get(pid, 0), kb)
        finally:
            conn.close()


MIN_FREE_MB = 2500


def mem_available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 1 << 30


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_once(pg: PgCluster, k: int, route: str, toml: Path, cwd: Path, budget: int, timeout: float) -> dict:
    db = f"w{k}_{route}"
    url = pg.new_database(db)
    server = None
    storage = url
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if route == "server":
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "evo_fpn.storage_server", "--storage", url, "--port", str(port)],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=open(cwd / f"{db}-server.err", "w"),
        )  # fmt: skip
        _wait_listening(port, server)
        storage = f"grpc://localhost:{port}"
    # --child (as --workers K starts them): no summary and no end-of-run figure refresh per worker,
    # which imports optuna-dashboard and scikit-learn (~190 MB a worker instead of ~85).
    cmd = [sys.executable, "-m", "evo_fpn.run", "--study", str(toml), "--storage", storage, "--no-progress", "--child"]
    errs = [cwd / f"{db}-{i}.err" for i in range(k)]
    t0 = time.perf_counter()
    procs = []
    for i in range(k):
        if mem_available_mb() < MIN_FREE_MB:  # never push the machine (and its other jobs) into the OOM killer
            print(f"  only {i} of {k} workers started: less than {MIN_FREE_MB} MB of memory left", file=sys.stderr)
            break
        procs.append(
            subprocess.Popen(
                [*cmd, "--worker-index", str(i)], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=open(errs[i], "w")
            )
        )
    errs = errs[: len(procs)]
    pids = [p.pid for p in procs] + ([server.pid] if server else [])
    sampler = Sampler(pg, pids)
    sampler.start()
    deadline = time.monotonic() + timeout
    killed = set()
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # past the deadline: kill every worker still running, at once
            for q in procs:
                if q.poll() is None:
                    q.kill()
                    killed.add(q.pid)
            p.wait()
    for p in procs:
        p.wait()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    if server is not None:
        server.terminate()
        server.wait(timeout=30)
    texts = [e.read_text() for e in errs]
    died = [i for i, p in enumerate(procs) if p.returncode != 0 and p.pid not in killed]
    tracebacks = [i for i in died if "Traceback" in texts[i]]
    study = optuna.load_study(study_name="workers", storage=url)
    trials = study.get_trials(deepcopy=False)
    by_state: dict[str, int] = {}
    for t in trials:
        by_state[t.state.name] = by_state.get(t.state.name, 0) + 1
    finished = [t for t in trials if t.state in FINISHED]
    numbers = [t.number for t in trials]
    span = None
    if finished:
        start = min(t.datetime_start for t in trials if t.datetime_start)
        span = (max(t.datetime_complete for t in finished) - start).total_seconds()
    worker_rss = [sampler.rss_kb[p.pid] / 1024 for p in procs if p.pid in sampler.rss_kb]
    return {
        "workers": k,
        "started": len(procs),
        "route": route,
        "budget": budget,
        "died": len(died),
        "died_with_traceback": len(tracebacks),
        "died_examples": sorted({texts[i].strip().splitlines()[-1][:200] for i in died if texts[i].strip()})[:3],
        "waited": sum("waiting for" in t for t in texts),
        "states": by_state,
        "duplicate_numbers": len(numbers) - len(set(numbers)),
        "overshoot": len(finished) - budget,
        "peak_connections": sampler.peak_connections,
        "trials_per_s": len(finished) / span if span else 0.0,
        "wall_s": wall,
        "rss_mb_median": statistics.median(worker_rss) if worker_rss else 0.0,
        "rss_mb_max": max(worker_rss) if worker_rss else 0.0,
        "server_rss_mb": sampler.rss_kb.get(server.pid, 0) / 1024 if server else None,
        "killed_at_timeout": len(killed),
    }


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the storage server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit("the storage server did not start listening")


def _cell(value: object, width: int) -> str:
    return f"{value!s:<{-width}}" if width < 0 else f"{value!s:>{width}}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--routes", nargs="+", choices=["direct", "server"], default=["direct", "server"])
    ap.add_argument("--sleep", type=float, default=5.0, help="seconds per synthetic trial")
    ap.add_argument("--per-worker", type=int, default=2, help="budget = this many trials per worker")
    ap.add_argument("--max-connections", type=int, default=100, help="PostgreSQL max_connections (default: 100)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds before a run's workers are killed")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    with (
        PgCluster(max_connections=args.max_connections) as pg,
        tempfile.TemporaryDirectory(prefix="evo-fpn-wk-") as tmp,
    ):
        for k in args.workers:
            budget = args.per_worker * k
            toml = study_file(Path(tmp), trials=budget, sleep=args.sleep)
            for route in args.routes:
                row = run_once(pg, k, route, toml, Path(tmp), budget, args.timeout)
                rows.append(row)
                print(f"  {k} workers, {route}: {json.dumps(row)}", file=sys.stderr, flush=True)
    print(f"\n{args.per_worker} trials per worker, synthetic objective sleeping {args.sleep} s, evolution, "
          f"PostgreSQL max_connections = {args.max_connections}")  # fmt: skip
    head = ("workers", "route", "died", "(traceback)", "killed", "waited", "trials by state", "dup", "overshoot",
            "peak conn", "trials/s", "wall s", "RSS MB/worker")  # fmt: skip
    widths = (7, 6, 4, 11, 6, 6, -28, 3, 9, 9, 8, 6, 13)
    print("  ".join(_cell(h, w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        states = ", ".join(f"{k} {v}" for k, v in sorted(r["states"].items()))
        cells = (r["workers"], r["route"], r["died"], r["died_with_traceback"], r["killed_at_timeout"], r["waited"],
                 states, r["duplicate_numbers"], r["overshoot"], r["peak_connections"], f"{r['trials_per_s']:.2f}",
                 f"{r['wall_s']:.0f}", f"{r['rss_mb_median']:.0f} ({r['rss_mb_max']:.0f})")  # fmt: skip
        print("  ".join(_cell(c, w) for c, w in zip(cells, widths, strict=True)))
    print(
        "died: non-zero exits; killed: still running at --timeout; waited: workers that printed a 'waiting for' "
        "status line; overshoot: finished "
        "trials minus budget; RSS: median (max) peak resident memory of a worker process"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "bench_workers.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
