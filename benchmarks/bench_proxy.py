"""Proxy task benchmark: speed of the cached proxy vs plain end-to-end training, AP, noise.

    python -m benchmarks.bench_proxy                     # all parts, default preset
    python -m benchmarks.bench_proxy --part speed        # only images/s, side by side
    python -m benchmarks.bench_proxy --part noise        # AP of 8 architectures + 2 more trials of one
    python -m benchmarks.bench_proxy --part noise --shard 1/2 &   # two processes share the trials

* speed: the same architecture trained for the same number of steps on the same batches,
  once on cached C3..C5 features (the proxy) and once end to end (backbone included),
  interleaved in rounds so machine load hits both alike; images/s and their ratio.
* ap / noise: published NAS-FPN, FPN-like, torchvision FPN and ``--random`` random
  architectures (seeded) under the preset, plus ``--trials`` independent trials of one
  architecture. A trial of a preset with ``seeds = S`` is the mean AP of S seeds (trial t:
  seeds tS..tS+S-1), exactly as :class:`~evo_fpn.tasks.proxy.ProxyTask` scores it. Signal-to-noise
  = std of the trial-0 AP across architectures (population std) / std of the noise
  architecture's trial APs (sample std, n - 1).
  Each *seed* is appended to ``benchmarks/records/proxy_trials.jsonl`` as it finishes (keyed
  by the fingerprint of the preset with one seed); a rerun skips the ones already there, so
  the run can be resumed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN, ArchSpec
from evo_fpn.tasks.proxy import PRESETS, ProxyConfig, ProxyTask
from evo_fpn.training.loop import train_detector

RESULTS = Path(__file__).resolve().parent / "results"  # summaries (git-ignored)
RECORDS = Path(__file__).resolve().parent / "records"  # one JSON line per finished run (committed)


def architectures(n_random: int, seed: int = 0) -> dict[str, ArchSpec | str]:
    """The reference architectures plus ``n_random`` seeded random points of the search space."""
    archs: dict[str, ArchSpec | str] = {
        "published": PUBLISHED_NASFPN,
        "fpn": FPN_LIKE,
        "torchvision_fpn": "torchvision_fpn",
    }
    space = NasFpnSpace()
    rng = random.Random(seed)
    while len(archs) < 3 + n_random:
        spec = space.sample(rng)
        archs[f"random{len(archs) - 2}-{spec.canonical_hash()[:6]}"] = spec
    return archs


def spec_json(arch: ArchSpec | str) -> str:
    return arch if isinstance(arch, str) else arch.to_json()


# -- speed -----------------------------------------------------------------------------------


def bench_speed(config: ProxyConfig, *, rounds: int, steps: int, device: str) -> dict[str, Any]:
    """Images/s of neck+head on cached features vs the full detector, interleaved rounds."""
    cached_task = ProxyTask(config, device=device, progress=False).prepare()
    e2e_task = ProxyTask(config.replace(backbone_mode="end_to_end"), device=device, progress=False).prepare()
    out: dict[str, Any] = {}
    for arch_name, arch in (("torchvision_fpn", "torchvision_fpn"), ("published", PUBLISHED_NASFPN)):
        cached_model, e2e_model = cached_task.build(arch), e2e_task.build(arch)
        rates: dict[str, list[float]] = {"cached": [], "end_to_end": []}
        for r in range(rounds):
            for mode, task, model in (("cached", cached_task, cached_model), ("end_to_end", e2e_task, e2e_model)):
                epochs = steps / max(1, len(task.store.train) // config.batch_size)
                facts = train_detector(
                    model, task.store.train, config=config, epochs=epochs, device=task.device, seed=r, progress=False
                )
                rates[mode].append(facts["images_per_s"])
        cached, e2e = statistics.median(rates["cached"]), statistics.median(rates["end_to_end"])
        out[arch_name] = {"cached_img_s": cached, "end_to_end_img_s": e2e, "ratio": cached / e2e, "rounds": rates}
        print(
            f"speed {arch_name:<16} proxy (cached features) {cached:6.1f} img/s   end-to-end {e2e:6.1f} img/s   "
            f"ratio {cached / e2e:.2f}x",
            flush=True,
        )
    meta = cached_task.cache_meta()
    if meta:
        out["backbone_stage"] = {k: meta[k] for k in ("stage_seconds", "cache_seconds", "stage_ap", "stage_ap50")}
        print(
            f"one-off backbone stage: {meta['stage_seconds']:.0f} s training (stage AP {meta['stage_ap']:.3f}), "
            f"{meta['cache_seconds']:.0f} s caching features",
            flush=True,
        )
    return out


# -- AP and noise ------------------------------------------------------------------------------


def load_done(path: Path, fingerprint: str) -> dict[tuple[str, int], dict[str, Any]]:
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec.get("fingerprint") == fingerprint:
                    done[(rec["arch"], rec["seed"])] = rec
    return done


def parse_shard(parser: argparse.ArgumentParser, text: str) -> tuple[int, int]:
    """``--shard I/N`` -> (I, N); a usage error (exit 2) otherwise."""
    try:
        shard, shards = (int(v) for v in text.split("/"))
        if 0 <= shard < shards:
            return shard, shards
    except ValueError:
        pass
    parser.error(f"--shard must be I/N with 0 <= I < N, got {text!r}")


def seed_config(preset: ProxyConfig) -> ProxyConfig:
    """One seed of ``preset``: what the results file stores. A trial of the preset scores the
    mean of seeds 0..seeds-1 of it (``tests/test_proxy.py`` checks that seeds trained side by
    side score exactly as one after the other)."""
    return preset.replace(seeds=1)


def run_trials(
    config: ProxyConfig, jobs: list[tuple[str, ArchSpec | str, int]], *, device: str, path: Path
) -> dict[tuple[str, int], dict[str, Any]]:
    """Run the (name, arch, seed) seeds of ``config`` not yet in ``path``; append each as it finishes."""
    config = seed_config(config)
    done = load_done(path, config.fingerprint())
    for name, arch, seed in jobs:
        if (name, seed) in done:
            continue
        task = ProxyTask(config.replace(seed=seed), device=device, progress=False).prepare()
        t0 = time.perf_counter()
        metrics = task.evaluate(arch)
        rec = {
            "fingerprint": config.fingerprint(),
            "arch": name,
            "seed": seed,
            "spec": spec_json(arch),
            "wall_seconds": time.perf_counter() - t0,
            **{k: v for k, v in metrics.items() if k not in ("spec", "history")},
            "history": metrics["history"],
        }
        with path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        done[(name, seed)] = rec
        print(
            f"trial {name:<22} seed {seed}  AP {rec['ap']:.4f}  AP50 {rec['ap50']:.4f}  "
            f"{rec['wall_seconds']:.0f} s wall ({rec['images_per_s']:.0f} img/s)",
            flush=True,
        )
    return done


def trial_ap(done: dict[tuple[str, int], dict[str, Any]], name: str, trial: int, seeds: int) -> float | None:
    """The AP of trial ``trial`` of ``name``: the mean over its ``seeds`` seeds (None until all ran)."""
    runs = [done.get((name, s)) for s in range(trial * seeds, (trial + 1) * seeds)]
    return statistics.fmean(r["ap"] for r in runs if r) if all(runs) else None


def summarize_noise(
    done: dict[tuple[str, int], dict[str, Any]], names: list[str], noise_arch: str, trials: int, seeds: int = 1
) -> dict[str, Any]:
    ap = {n: a for n in names if (a := trial_ap(done, n, 0, seeds)) is not None}
    trial_aps = [a for t in range(trials) if (a := trial_ap(done, noise_arch, t, seeds)) is not None]
    seed_aps = [done[(noise_arch, s)]["ap"] for s in range(trials * seeds) if (noise_arch, s) in done]
    spread = statistics.pstdev(ap.values()) if len(ap) >= 2 else float("nan")
    noise = statistics.stdev(trial_aps) if len(trial_aps) >= 2 else float("nan")
    # every architecture's own seeds, pooled: a seed's noise from all of them, not from one
    own = [[done[(n, s)]["ap"] for s in range(seeds)] for n in ap] if seeds >= 2 else []
    pooled = statistics.fmean(statistics.variance(aps) for aps in own) ** 0.5 if own else float("nan")
    pooled_trial = pooled / seeds**0.5  # the std of a mean of `seeds` independent seeds
    return {
        "ap_by_arch": ap,
        "noise_arch": noise_arch,
        "seeds_per_trial": seeds,
        "trial_aps": trial_aps,
        "trial_std": noise,
        "seed_aps": seed_aps,
        "seed_std": statistics.stdev(seed_aps) if len(seed_aps) >= 2 else float("nan"),
        "arch_std": spread,
        "snr": spread / noise if noise and noise == noise and noise > 0 else float("nan"),
        "pooled_seed_std": pooled,
        "pooled_trial_std": pooled_trial,
        "snr_pooled": spread / pooled_trial if pooled_trial > 0 else float("nan"),
        "arch_range": (min(ap.values()), max(ap.values())) if ap else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--part", choices=("all", "speed", "noise"), default="all")
    p.add_argument("--random", type=int, default=5, help="random architectures in the noise part")
    p.add_argument("--trials", type=int, default=3, help="independent trials of the noise architecture")
    p.add_argument("--noise-arch", default="published")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="training steps per speed round")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared, busy CPU)")
    p.add_argument(
        "--shard", default="0/1", help="I/N: run every N-th missing trial from the I-th (N processes share the work)"
    )
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error(f"--trials must be >= 1, got {args.trials}")
    torch.set_num_threads(args.threads)
    config = PRESETS[args.preset]
    shard, shards = parse_shard(p, args.shard)
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "preset": args.preset,
        "fingerprint": config.fingerprint(),
        "seed_fingerprint": seed_config(config).fingerprint(),
        "threads": torch.get_num_threads(),
    }
    if args.part in ("all", "speed"):
        summary["speed"] = bench_speed(config, rounds=args.rounds, steps=args.steps, device=args.device)
    if args.part in ("all", "noise"):
        archs = architectures(args.random)
        per = config.seeds
        jobs = [(n, a, s) for s in range(per) for n, a in archs.items()]
        jobs += [(args.noise_arch, archs[args.noise_arch], s) for s in range(per, args.trials * per)]
        RECORDS.mkdir(parents=True, exist_ok=True)
        path = RECORDS / "proxy_trials.jsonl"
        finished = load_done(path, seed_config(config).fingerprint())
        missing = [j for j in jobs if (j[0], j[2]) not in finished]
        run_trials(config, missing[shard::shards], device=args.device, path=path)
        done = load_done(path, seed_config(config).fingerprint())
        noise = summarize_noise(done, list(archs), args.noise_arch, args.trials, per)
        summary["noise"] = noise
        for name, ap in noise["ap_by_arch"].items():
            print(f"AP {name:<22} {ap:.4f}")
        unit = "" if per == 1 else f" (each the mean of {per} seeds; one seed's std {noise['seed_std']:.4f})"
        print(
            f"noise: AP of {len(noise['trial_aps'])} trials of {args.noise_arch}{unit}: "
            f"{', '.join(f'{a:.4f}' for a in noise['trial_aps'])} (std {noise['trial_std']:.4f}); "
            f"std across {len(noise['ap_by_arch'])} architectures {noise['arch_std']:.4f}; "
            f"signal-to-noise {noise['snr']:.2f}",
            flush=True,
        )
        if per >= 2:
            print(
                f"noise pooled over the {len(noise['ap_by_arch'])} architectures' own {per} seeds: a seed's std "
                f"{noise['pooled_seed_std']:.4f}, a trial's {noise['pooled_trial_std']:.4f}; "
                f"signal-to-noise {noise['snr_pooled']:.2f}",
                flush=True,
            )
    (RESULTS / f"bench_proxy_{args.preset}_{args.part}.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
