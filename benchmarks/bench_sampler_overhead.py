"""Time a sampler adds per trial on a study that already has 1k or 10k finished trials.

For each storage (in-memory, SQLite, PostgreSQL: a throwaway local cluster from
:mod:`evo_fpn.storage.testing_pg`, fsync off) and history size, the study is pre-populated with
finished NAS-FPN trials (random valid points scored by the synthetic landscape). Each
sampler then runs ``--trials`` more trials (ask, ``NasFpnSpace.suggest``, tell) while a thin
proxy times every call Optuna makes into it (``infer_relative_search_space``,
``sample_relative``, ``sample_independent``, ``before_trial``, ``after_trial``), including the
storage reads and attribute writes those calls do. Reported: the median per trial (the
headline), split into compute, reads of the study's trials (``get_all_trials``: on SQLite
a query plus Optuna's sort of its cache) and trial-attribute writes (lineage / log-probs:
one commit each on SQLite; the RL sampler's policy checkpoint, a study attr, counts too), the
mean, the first trial alone (where a fresh RL sampler catches up with the whole history: a full
replay here, as the pre-populated study has no stored checkpoint; it stores one), the whole
trial (ask + suggest + tell) for scale, and for RL the first trial of a second, fresh sampler
(``join``: a worker that joins the study now, loading the stored checkpoint and replaying the
updates after it; ``(+k)`` = updates replayed).
The storage's own cache is warmed before timing, so reading 10k trials from SQLite once is
not billed to a sampler. All samplers are measured side by side in one run.

    nice -n 10 python -m benchmarks.bench_sampler_overhead
    nice -n 10 python -m benchmarks.bench_sampler_overhead --sizes 1000 --storages memory --trials 10
    nice -n 10 python -m benchmarks.bench_sampler_overhead --sizes 10000 --storages sqlite,postgresql --trials 10
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState, create_trial

from benchmarks.landscape import Landscape
from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.samplers import make_sampler

RESULTS = Path(__file__).with_name("results")
SETTINGS: dict[str, dict[str, Any]] = {
    "evolution": {"population_size": 100, "sample_size": 25},
    "rl": {"batch_size": 10},
    "tpe": {},
    "random": {},
}


class Timed(BaseSampler):
    """Forwards to ``inner`` and adds the wall time of every call to ``elapsed``."""

    def __init__(self, inner: BaseSampler) -> None:
        self.inner = inner
        self.elapsed = 0.0
        self.active = False

    def _t(self, fn: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        self.active = True
        try:
            return fn(*args)
        finally:
            self.active = False
            self.elapsed += time.perf_counter() - t0

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self._t(self.inner.infer_relative_search_space, study, trial)

    def sample_relative(self, study: Any, trial: Any, space: Any) -> Any:
        return self._t(self.inner.sample_relative, study, trial, space)

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        return self._t(self.inner.sample_independent, study, trial, name, dist)

    def before_trial(self, study: Any, trial: Any) -> None:
        self._t(self.inner.before_trial, study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._t(self.inner.after_trial, study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def history(n: int, space: NasFpnSpace, land: Landscape) -> list[FrozenTrial]:
    rng = random.Random(0)
    start = datetime.datetime(2026, 1, 1)
    out = []
    for i in range(n):
        params = space.encode(space.sample(rng))  # a random valid point, as the params that decode to it
        t = create_trial(value=land(params), params=params, distributions=space.distributions)
        t.datetime_start = start + datetime.timedelta(seconds=i)
        t.datetime_complete = t.datetime_start
        out.append(t)
    return out


def bulk_sqlite(path: Path, trials: Sequence[FrozenTrial]) -> str:
    """Write a SQLite study with ``trials`` in one transaction (see :func:`bulk_rdb`)."""
    return bulk_rdb(f"sqlite:///{path}", trials)


def bulk_rdb(url: str, trials: Sequence[FrozenTrial]) -> str:
    """Write a study with ``trials`` in one transaction (``add_trials`` commits per row:
    ~50 ms per trial here, 10 minutes for 10k). Benchmark set-up only: uses Optuna's tables."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    rdb = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=rdb, study_name="bench", direction="maximize")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(models.TrialModel.__table__),
            [
                {
                    "trial_id": i + 1,
                    "number": i,
                    "study_id": study._study_id,
                    "state": TrialState.COMPLETE.name,
                    "datetime_start": t.datetime_start,
                    "datetime_complete": t.datetime_complete,
                }
                for i, t in enumerate(trials)
            ],
        )
        conn.execute(
            sa.insert(models.TrialValueModel.__table__),
            [
                {"trial_id": i + 1, "objective": 0, "value": t.value, "value_type": "FINITE"}
                for i, t in enumerate(trials)
            ],
        )
        dist_json = {name: distribution_to_json(d) for name, d in trials[0].distributions.items()}
        conn.execute(
            sa.insert(models.TrialParamModel.__table__),
            [
                {
                    "trial_id": i + 1,
                    "param_name": name,
                    "param_value": t.distributions[name].to_internal_repr(v),
                    "distribution_json": dist_json[name],
                }
                for i, t in enumerate(trials)
                for name, v in t.params.items()
            ],
        )
        if engine.dialect.name == "postgresql":  # explicit ids left the serial sequence behind
            seq = "SELECT setval(pg_get_serial_sequence('trials', 'trial_id'), max(trial_id)) FROM trials"
            conn.execute(sa.text(seq))
    engine.dispose()
    check = optuna.load_study(study_name="bench", storage=rdb).trials
    rdb.engine.dispose()  # no connection left open: PostgreSQL copies a template only when it has none
    assert len(check) == len(trials) and check[-1].params == trials[-1].params and check[-1].value == trials[-1].value
    return url


def pg_copy(pg: Any, template: str, name: str) -> str:
    """A fresh database copied from ``template`` (PostgreSQL's ``CREATE DATABASE ... TEMPLATE``)."""
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return str(pg.url(name))


RUNNER_METRICS: dict[str, Any] = {
    "ap": 0.1234, "ap50": 0.25, "ap75": 0.1, "ap_small": 0.05, "ap_medium": 0.15, "neck_params": 250_000,
    "total_params": 5_000_000, "neck_flops": 40_000_000, "total_flops": 600_000_000, "backbone_build": "0" * 16,
    "train_seconds": 0.0, "eval_seconds": 1.0, "threads": 1,
}  # fmt: skip
"""A supernet trial's metrics: what the Objective writes as user attrs (``--runner``)."""


def runner_study(url: str) -> optuna.Study:
    """The study as ``evo_fpn.run`` opens it: heartbeats, retries, Optuna's cache over the RDB
    storage, SQLite in WAL mode with synchronous=NORMAL (the runner's settings, not Optuna's defaults)."""
    from evo_fpn.storage.rdb import open_storage
    from evo_fpn.study.config import RunnerConfig

    r = RunnerConfig()
    storage = open_storage(url, heartbeat_interval=r.heartbeat_interval, grace_period=r.grace_period,
                           max_retry=r.max_retry)  # fmt: skip
    return optuna.load_study(study_name="bench", storage=storage)


def objective_writes(trial: optuna.Trial, spec_json: str) -> None:
    """The Objective's attribute writes of a supernet trial (worker, objective, spec, hash, metrics)."""
    from evo_fpn import record

    trial.set_user_attr(record.WORKER, "host:1")
    trial.set_user_attr(record.OBJECTIVE, "supernet")
    trial.set_user_attr(record.SPEC, spec_json)
    trial.set_user_attr(record.SPEC_HASH, "0" * 16)
    written = record.write_metrics(trial, {k: RUNNER_METRICS[k] for k in record.COST_METRICS})
    record.write_metrics(trial, RUNNER_METRICS, written)


def measure(
    name: str, study: optuna.Study, space: NasFpnSpace, land: Landscape, n_trials: int, runner: bool = False
) -> dict[str, float]:
    inner = make_sampler(name, seed=0, constraints=space, **SETTINGS[name])
    timed = Timed(inner)
    study.sampler = timed
    study._get_trials(deepcopy=False)  # warm the storage cache: not the sampler's cost
    storage = study._storage
    writes = {"s": 0.0, "n": 0}
    reads = {"s": 0.0, "inside": False}

    def timed_write(fn: Any) -> Any:  # attribute writes: in this bench only samplers write attrs
        def wrapper(*args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                writes["s"] += time.perf_counter() - t0
                writes["n"] += 1

        return wrapper

    def timed_read(fn: Any) -> Any:  # reads of all trials made while a sampler method runs
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if timed.active:
                    reads["s"] += time.perf_counter() - t0

        return wrapper

    storage.set_trial_system_attr = timed_write(storage.set_trial_system_attr)  # type: ignore[method-assign]
    storage.set_trial_user_attr = timed_write(storage.set_trial_user_attr)  # type: ignore[method-assign]
    storage.set_study_system_attr = timed_write(storage.set_study_system_attr)  # type: ignore[method-assign]
    storage.get_all_trials = timed_read(storage.get_all_trials)  # type: ignore[method-assign]
    per_trial, per_write, per_read, whole = [], [], [], []
    for _ in range(n_trials):
        timed.elapsed, writes["s"], writes["n"], reads["s"] = 0.0, 0.0, 0, 0.0
        t0 = time.perf_counter()
        trial = study.ask()
        space.suggest(trial)
        if runner:
            objective_writes(trial, "{}")
        study.tell(trial, land(trial.params))
        whole.append((time.perf_counter() - t0) * 1000)
        per_trial.append(timed.elapsed * 1000)
        per_write.append((writes["s"] * 1000, writes["n"]))
        per_read.append(reads["s"] * 1000)
    join: dict[str, float] = {}
    if hasattr(inner, "_restored"):  # RL: a second worker joins now (a fresh sampler, the same study)
        joiner = make_sampler(name, seed=0, constraints=space, **SETTINGS[name])
        timed.inner, timed.elapsed = joiner, 0.0
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, land(trial.params))
        restored = getattr(joiner, "_restored", None) or 0
        join = {"join_ms": timed.elapsed * 1000, "join_replayed_updates": joiner._n_updates - restored}
        join["join_restored_updates"] = restored
    del storage.set_trial_system_attr, storage.set_trial_user_attr, storage.get_all_trials
    del storage.set_study_system_attr
    k = 1 if n_trials > 1 else 0
    return {
        **join,
        "median_ms": statistics.median(per_trial[k:]),
        "mean_ms": statistics.fmean(per_trial[k:]),
        "first_ms": per_trial[0],
        "attr_write_ms_median": statistics.median(w for w, _ in per_write[k:]),
        "attr_writes_per_trial": statistics.median(n for _, n in per_write[k:]),
        "trial_reads_ms_median": statistics.median(per_read[k:]),
        "compute_ms_median": statistics.median(
            t - w - r for t, (w, _), r in zip(per_trial[k:], per_write[k:], per_read[k:], strict=True)
        ),
        "whole_trial_ms_median": statistics.median(whole[k:]),
        "n": n_trials,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--storages", default="memory,sqlite")
    ap.add_argument("--samplers", default="evolution,rl,random,tpe")
    ap.add_argument("--trials", type=int, default=30, help="timed trials per sampler (first one reported apart)")
    ap.add_argument("--tpe-trials", type=int, default=None, help="fewer timed trials for TPE at 10k")
    ap.add_argument("--out", default=str(RESULTS / "bench_sampler_overhead.json"))
    ap.add_argument("--runner", action="store_true", help="open SQLite/PostgreSQL as evo_fpn.run does and write the "
                    "Objective's user attrs each trial: the whole loop of a supernet trial")  # fmt: skip
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = NasFpnSpace()
    land = Landscape(0, space)
    samplers = args.samplers.split(",")
    results: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="evo_fpn_bench_"))
    pg = None
    if "postgresql" in args.storages.split(","):
        from evo_fpn.storage.testing_pg import PgCluster

        pg = PgCluster().start()
    print(
        "storage    finished sampler  median = compute + reads + writes (#)     mean   first ms  trial ms    n"
        "   join ms (+k)\n"
        "  [sampler ms per trial; reads = get_all_trials; writes = trial attrs; first = first trial "
        "(RL: full replay); trial = ask+suggest+tell; join = a fresh RL sampler's first trial, from the "
        "stored checkpoint (+k updates replayed)]"
    )
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            trials = history(size, space, land)
            template = None
            for storage in args.storages.split(","):
                if storage == "sqlite":
                    t0 = time.perf_counter()
                    template = tmp / f"template_{size}.db"
                    bulk_sqlite(template, trials)
                    print(f"[built SQLite study with {size} trials in {time.perf_counter() - t0:.1f} s]", flush=True)
                elif storage == "postgresql":
                    assert pg is not None
                    t0 = time.perf_counter()
                    bulk_rdb(pg.new_database(f"template_{size}"), trials)
                    print(f"[built PostgreSQL study, {size} trials, in {time.perf_counter() - t0:.1f} s]", flush=True)
                for name in samplers:
                    if storage == "memory":
                        study = optuna.create_study(direction="maximize")
                        study.add_trials(trials)
                    elif storage == "postgresql":
                        assert pg is not None
                        url = pg_copy(pg, f"template_{size}", f"{name}_{size}")
                        study = runner_study(url) if args.runner else optuna.load_study(study_name="bench", storage=url)
                    else:
                        assert template is not None
                        db = tmp / f"{name}_{size}.db"
                        shutil.copy(template, db)
                        url = f"sqlite:///{db}"
                        study = runner_study(url) if args.runner else optuna.load_study(study_name="bench", storage=url)
                    n = args.tpe_trials if (name == "tpe" and args.tpe_trials and size >= 10000) else args.trials
                    r = measure(name, study, space, land, n, args.runner)
                    r.update(sampler=name, storage=storage, finished=size, runner=args.runner)
                    results.append(r)
                    print(
                        f"{storage:10s} {size:6d} {name:10s} {r['median_ms']:8.2f} {r['compute_ms_median']:8.2f} "
                        f"{r['trial_reads_ms_median']:7.2f} {r['attr_write_ms_median']:7.2f} "
                        f"({r['attr_writes_per_trial']:.0f}) {r['mean_ms']:8.2f} "
                        f"{r['first_ms']:10.1f} {r['whole_trial_ms_median']:9.1f} {n:4d}"
                        + (f" {r['join_ms']:9.1f} (+{r['join_replayed_updates']})" if "join_ms" in r else ""),
                        flush=True,
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if pg is not None:
            pg.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": SETTINGS, "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
