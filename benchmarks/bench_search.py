"""Search efficiency on the synthetic NAS-FPN landscape: evolution, RL, TPE, random.

Every sampler runs ``--trials`` trials for each of ``--seeds`` seeds on an in-memory study;
seed ``s`` uses landscape seed ``s`` and sampler seed ``s`` for every sampler, so the
samplers face the same landscapes. Output: best-so-far curves (mean and 95% t-interval over
seeds) and the headline: trials each sampler needs to reach random search's final best
(the mean over seeds of random's best after all trials), read off the mean curve and per
seed (median). Writes ``benchmarks/results/bench_search.json`` (+ ``.html`` with plotly).

    nice -n 10 python -m benchmarks.bench_search              # 10 seeds x 500 trials
    nice -n 10 python -m benchmarks.bench_search --seeds 3 --trials 200 --samplers evolution,random
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from benchmarks.landscape import Landscape
from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.samplers import make_sampler
from evo_fpn.study.analysis import best_so_far

RESULTS = Path(__file__).with_name("results")

# (registry name, settings): settings are stated in the output
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "evolution": ("evolution", {"population_size": 50, "sample_size": 10}),
    "evolution_paper": ("evolution", {"population_size": 100, "sample_size": 25}),
    "rl": ("rl", {"batch_size": 10, "lr": 0.01}),
    "tpe": ("tpe", {}),
    "random": ("random", {}),
}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def run_one(config: str, seed: int, n_trials: int) -> tuple[list[float], float, list[float]]:
    """Best-so-far curve of one sampler on landscape ``seed``, seconds taken, raw values."""
    name, settings = CONFIGS[config]
    space = NasFpnSpace()
    land = Landscape(seed, space)
    sampler = make_sampler(name, seed=seed, constraints=space, **settings)
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        space.suggest(trial)
        return land(trial.params)

    t0 = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    seconds = time.perf_counter() - t0
    values = [float(t.value) for t in study.trials]
    return best_so_far(values, study.direction).tolist(), seconds, values


def first_reach(curve: np.ndarray, target: float) -> int | None:
    """1-based number of trials after which ``curve`` >= ``target``; None if never."""
    hit = np.flatnonzero(curve >= target - 1e-12)
    return int(hit[0]) + 1 if hit.size else None


def summarize(curves: dict[str, np.ndarray], random_values: np.ndarray) -> dict[str, Any]:
    target = float(curves["random"][:, -1].mean())
    hit_rate = float((random_values >= target).mean())
    out: dict[str, Any] = {
        "target_random_final_best": target,
        # random search hits the target with this probability per trial: it needs 1/p trials on average
        "random_hit_rate": hit_rate,
        "random_expected_trials": (1.0 / hit_rate) if hit_rate > 0 else None,
        "samplers": {},
    }
    for config, c in curves.items():
        n = c.shape[0]
        mean = c.mean(0)
        half = T95.get(n - 1, 1.96) * c.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros_like(mean)
        per_seed = [first_reach(row, target) for row in c]
        reached = sorted(x for x in per_seed if x is not None)
        median = None
        if len(reached) * 2 > n:  # more than half the seeds reached it: the median is defined
            median = float(np.median([x if x is not None else math.inf for x in per_seed]))
        out["samplers"][config] = {
            "mean_curve": mean.tolist(),
            "ci95_half": half.tolist(),
            "final_best_mean": float(mean[-1]),
            "final_best_ci95": float(half[-1]),
            "trials_to_target_mean_curve": first_reach(mean, target),
            "trials_to_target_per_seed": per_seed,
            "trials_to_target_median": median,
            "seeds_reaching_target": len(reached),
        }
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for config, s in summary["samplers"].items():
        mean, half = np.array(s["mean_curve"]), np.array(s["ci95_half"])
        x = np.arange(1, len(mean) + 1)
        fig.add_trace(go.Scatter(x=x, y=mean, name=config, mode="lines"))
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([x, x[::-1]]),
                y=np.concatenate([mean + half, (mean - half)[::-1]]),
                fill="toself",
                opacity=0.2,
                line={"width": 0},
                showlegend=False,
                name=f"{config} 95%",
            )
        )
    fig.add_hline(y=summary["target_random_final_best"], line_dash="dot", annotation_text="random's final best")
    fig.update_layout(
        title="Best-so-far on the synthetic NAS-FPN landscape (mean, 95% interval over seeds)",
        xaxis_title="trials",
        yaxis_title="best score",
    )
    fig.write_html(path, include_plotlyjs=True)  # self-contained: opens offline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--samplers", default="evolution,evolution_paper,rl,tpe,random")
    ap.add_argument("--tpe-seeds", type=int, default=None, help="fewer seeds for TPE if it is too slow")
    ap.add_argument("--out", default=str(RESULTS / "bench_search.json"))
    args = ap.parse_args()
    configs = [c.strip() for c in args.samplers.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or "random" not in configs:
        raise SystemExit(f"error: --samplers must include random and use only {', '.join(CONFIGS)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    curves: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    random_values: list[float] = []
    for config in configs:
        n_seeds = args.tpe_seeds if (config == "tpe" and args.tpe_seeds) else args.seeds
        rows, secs = [], []
        for seed in range(n_seeds):
            curve, s, values = run_one(config, seed, args.trials)
            rows.append(curve)
            secs.append(s)
            if config == "random":
                random_values += values
        curves[config] = np.array(rows)
        seconds[config] = float(np.mean(secs))
        print(
            f"{config:16s} {n_seeds} seeds: final best {curves[config][:, -1].mean():.4f}, {seconds[config]:.1f} s/run"
        )
    summary = summarize(curves, np.array(random_values))
    summary["settings"] = {c: {"sampler": CONFIGS[c][0], **CONFIGS[c][1]} for c in configs}
    summary["seconds_per_run"] = seconds
    summary["trials"] = args.trials
    summary["seeds"] = {c: int(curves[c].shape[0]) for c in configs}
    target = summary["target_random_final_best"]
    rand_curve = summary["samplers"]["random"]["trials_to_target_mean_curve"]
    expected = summary["random_expected_trials"]
    print(f"\ntarget = random search's mean final best after {args.trials} trials: {target:.4f}")
    print(
        f"random search needs: {args.trials} trials (budget); its mean curve reaches the target at trial "
        f"{rand_curve}; pooled hit rate {summary['random_hit_rate']:.4f} -> {expected and round(expected)} trials "
        "expected"
    )
    header = f"{'sampler':16s} {'final best +- 95% CI':>22s} {'to target (mean)':>17s} {'per-seed median':>16s}"
    print(header + f" {'/budget':>8s} {'/random curve':>14s} {'/expected':>10s} {'seeds':>6s}")
    for config, s in summary["samplers"].items():
        n = s["trials_to_target_mean_curve"]
        med = s["trials_to_target_median"]

        def ratio(d: float | None, n: int | None = n) -> str:
            return f"{n / d:.2f}" if n and d else "-"

        print(
            f"{config:16s} {s['final_best_mean']:>12.4f} +- {s['final_best_ci95']:.4f} "
            f"{(str(n) if n else '>' + str(args.trials)):>17s} {(f'{med:.0f}' if med else '-'):>16s} "
            f"{ratio(args.trials):>8s} {ratio(rand_curve):>14s} {ratio(expected):>10s} "
            f"{s['seeds_reaching_target']:>3d}/{summary['seeds'][config]}"
        )
    # a harder bar than random's best: trials (mean curve) to reach each sampler's final mean best
    finals = {c: s["final_best_mean"] for c, s in summary["samplers"].items()}
    summary["trials_to_reach_final_of"] = {
        c: {b: first_reach(np.array(s["mean_curve"]), finals[b]) for b in finals}
        for c, s in summary["samplers"].items()
    }
    print("\ntrials (mean curve) to reach the final mean best of column's sampler; '-' = not within the budget")
    print(f"{'':16s}" + "".join(f"{b:>16s}" for b in finals))
    for c, row in summary["trials_to_reach_final_of"].items():
        print(f"{c:16s}" + "".join(f"{(str(v) if v else '-'):>16s}" for v in row.values()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    try:
        plot(summary, out.with_suffix(".html"))
    except ImportError:
        pass
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
