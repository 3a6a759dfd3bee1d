"""Time a sampler adds per trial on a study that already has 1k or 10k finished trials.

For each storage (in-memory, SQLite) and history size, the study is pre-populated with
finished NAS-FPN trials (random valid points scored by the synthetic landscape). Each
sampler then runs ``--trials`` more trials (ask, ``NasFpnSpace.suggest``, tell) while a thin
proxy times every call Optuna makes into it (``infer_relative_search_space``,
``sample_relative``, ``sample_independent``, ``before_trial``, ``after_trial``), including the
storage reads and attribute writes those calls do. Reported: the median per trial (the
headline), split into compute, reads of the study's trials (``get_all_trials``: on SQLite
a query plus Optuna's sort of its cache) and trial-attribute writes (lineage / log-probs:
one commit each on SQLite), the mean, the first trial alone (where the RL sampler replays the
whole history once per process), and the whole trial (ask + suggest + tell) for scale.
The storage's own cache is warmed before timing, so reading 10k trials from SQLite once is
not billed to a sampler. All samplers are measured side by side in one run.

    nice -n 10 python -m benchmarks.bench_sampler_overhead
    nice -n 10 python -m benchmarks.bench_sampler_overhead --sizes 1000 --storages memory --trials 10
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
from evo_fpn.samplers import make_sampler
from evo_fpn.space import NasFpnSpace

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
    """Write a SQLite study with ``trials`` in one transaction (``add_trials`` commits per row:
    ~50 ms per trial here, 10 minutes for 10k). Benchmark set-up only: uses Optuna's tables."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    url = f"sqlite:///{path}"
    study = optuna.create_study(storage=url, study_name="bench", direction="maximize")
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
    engine.dispose()
    check = optuna.load_study(study_name="bench", storage=url).trials
    assert len(check) == len(trials) and check[-1].params == trials[-1].params and check[-1].value == trials[-1].value
    return url


def measure(name: str, study: optuna.Study, space: NasFpnSpace, land: Landscape, n_trials: int) -> dict[str, float]:
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
    storage.get_all_trials = timed_read(storage.get_all_trials)  # type: ignore[method-assign]
    per_trial, per_write, per_read, whole = [], [], [], []
    for _ in range(n_trials):
        timed.elapsed, writes["s"], writes["n"], reads["s"] = 0.0, 0.0, 0, 0.0
        t0 = time.perf_counter()
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, land(trial.params))
        whole.append((time.perf_counter() - t0) * 1000)
        per_trial.append(timed.elapsed * 1000)
        per_write.append((writes["s"] * 1000, writes["n"]))
        per_read.append(reads["s"] * 1000)
    del storage.set_trial_system_attr, storage.set_trial_user_attr, storage.get_all_trials
    k = 1 if n_trials > 1 else 0
    return {
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
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = NasFpnSpace()
    land = Landscape(0, space)
    samplers = args.samplers.split(",")
    results: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="evo_fpn_bench_"))
    print(
        "storage finished sampler  median = compute + reads + writes (#)     mean   first ms  trial ms    n\n"
        "  [sampler ms per trial; reads = get_all_trials; writes = trial attrs; first = first trial "
        "(RL replays here); trial = ask+suggest+tell]"
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
                for name in samplers:
                    if storage == "memory":
                        study = optuna.create_study(direction="maximize")
                        study.add_trials(trials)
                    else:
                        assert template is not None
                        db = tmp / f"{name}_{size}.db"
                        shutil.copy(template, db)
                        study = optuna.load_study(study_name="bench", storage=f"sqlite:///{db}")
                    n = args.tpe_trials if (name == "tpe" and args.tpe_trials and size >= 10000) else args.trials
                    r = measure(name, study, space, land, n)
                    r.update(sampler=name, storage=storage, finished=size)
                    results.append(r)
                    print(
                        f"{storage:7s} {size:6d} {name:10s} {r['median_ms']:8.2f} {r['compute_ms_median']:8.2f} "
                        f"{r['trial_reads_ms_median']:7.2f} {r['attr_write_ms_median']:7.2f} "
                        f"({r['attr_writes_per_trial']:.0f}) {r['mean_ms']:8.2f} "
                        f"{r['first_ms']:10.1f} {r['whole_trial_ms_median']:9.1f} {n:4d}",
                        flush=True,
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": SETTINGS, "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
