"""The whole search as data: stages of ordinary studies in one storage (``python -m evo_fpn.search``).

A search named NAME is three studies, each run by the ordinary runner, so a rerun resumes at
the stage and trial where it stopped and another machine with the same storage joins the
stage that is running (the budget loop's lock and the fingerprints do that already):

1. ``NAME-screen``: N architectures scored with the supernet (``studies/screen.toml``: aging
   evolution, the published NAS-FPN and the FPN-like pyramid first); building the backbone
   stage and the supernet (cached per machine) is this study's first step;
2. ``NAME-finalists``: the K best distinct architectures of the screen trained stand-alone
   with the proxy (``studies/default.toml``'s settings; ``--enqueue-top NAME-screen:K``);
3. ``NAME-retrain``: the best finalist and torchvision's FPN trained end to end with one
   recipe and the same seeds (:mod:`evo_fpn.study.retrain`).

This module says what the stages are (:func:`stages`), what the runner is told for each
(:attr:`Stage.argv`), and how long each should take (:func:`estimate`), from the studies'
own finished trials when there are some (measured) and from the project's recorded
benchmarks on 2 CPU cores otherwise (a guess, and said so).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from evo_fpn import record
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.errors import UsageError
from evo_fpn.storage import rdb as st
from evo_fpn.study.analysis import best_trial

SCREEN_FILE = "screen"
"""The screen's study file (supernet objective, aging evolution P=100 S=20)."""
FINALISTS_FILE = "default"
"""The finalists' study file (the proxy objective; every trial is enqueued, so its sampler never runs)."""

DEFAULTS: dict[str, float] = {"screen": 2000, "finalists": 8, "retrain_epochs": 16.0, "seeds": 2}
"""Sized for a night on 2 CPU cores with the default preset (about 7 h, see :data:`GUESSES`)."""


@dataclass(frozen=True)
class Settings:
    """What one ``python -m evo_fpn.search`` asks for."""

    name: str
    url: str
    preset: str = "default"
    data: str | None = None
    screen: int = int(DEFAULTS["screen"])
    finalists: int = int(DEFAULTS["finalists"])
    retrain_epochs: float = DEFAULTS["retrain_epochs"]
    seeds: int = int(DEFAULTS["seeds"])
    device: str | None = None
    threads: int | None = None
    sets: tuple[str, ...] = ()
    progress: bool = True

    def check(self) -> None:
        """The counts' own rules (one line each); the runner checks everything else."""
        if not self.name or "/" in self.name or self.name != self.name.strip():
            raise UsageError(f"NAME {self.name!r} must be a plain word, e.g. mydata")
        for what, value in (("--screen", self.screen), ("--finalists", self.finalists), ("--seeds", self.seeds)):
            if value < 1:
                raise UsageError(f"{what} must be >= 1, got {value}")
        if self.finalists > self.screen:
            raise UsageError(
                f"--finalists {self.finalists} is larger than --screen {self.screen}: the finalists are the best "
                "of the screened architectures, so pick K <= N"
            )
        if not self.retrain_epochs > 0:
            raise UsageError(f"--retrain-epochs must be > 0, got {self.retrain_epochs:g}")


@dataclass(frozen=True)
class Stage:
    """One stage: its study, its budget of finished trials and the runner's flags (none: retrain)."""

    key: str
    study: str
    n_trials: int
    what: str
    argv: tuple[str, ...] = ()


def study_names(name: str) -> dict[str, str]:
    return {key: f"{name}-{key}" for key in ("screen", "finalists", "retrain")}


def stages(s: Settings) -> list[Stage]:
    """The search's stages in order; :attr:`Stage.argv` is what ``python -m evo_fpn.run`` gets."""
    names = study_names(s.name)
    common = ["--storage", s.url, "--preset", s.preset]
    for flag, value in (("--data", s.data), ("--device", s.device), ("--threads", s.threads)):
        if value is not None:
            common += [flag, str(value)]
    for item in s.sets:
        common += ["--set", item]
    if not s.progress:
        common.append("--no-progress")
    screen = ["--study", SCREEN_FILE, "--new-study", names["screen"], "--n-trials", str(s.screen), *common]
    finalists = [
        "--study", FINALISTS_FILE, "--new-study", names["finalists"], "--n-trials", str(s.finalists),
        "--enqueue-top", f"{names['screen']}:{s.finalists}", "--set", "enqueue_references=false", *common,
    ]  # fmt: skip
    return [
        Stage("screen", names["screen"], s.screen, "supernet screen (aging evolution)", tuple(screen)),
        Stage("finalists", names["finalists"], s.finalists, "stand-alone proxy training of the best", tuple(finalists)),
        Stage(
            "retrain",
            names["retrain"],
            2 * s.seeds,
            f"found neck and torchvision FPN end to end, {s.retrain_epochs:g} epochs x {s.seeds} seed(s)",
        ),
    ]


# -- reading the stages' studies ---------------------------------------------------------------
@contextlib.contextmanager
def reading(url: str, study: str) -> Iterator[optuna.Study | None]:
    """The stored study, to read while the block runs (``None``: the stage has not started)."""
    if not st.study_exists(url, study):
        yield None
        return
    with st.reader(url) as storage:
        yield optuna.load_study(study_name=study, storage=storage)


def counts(study: optuna.Study | None) -> tuple[int, int]:
    """(finished, running) trials of a stage's study."""
    if study is None:
        return 0, 0
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def winner(study: optuna.Study) -> tuple[ArchSpec, optuna.trial.FrozenTrial]:
    """The finalists' best architecture (highest proxy AP; a tie goes to the earlier trial)."""
    best = best_trial(study.get_trials(deepcopy=False), study.directions[0])
    if best is None or record.SPEC not in best.user_attrs:
        raise UsageError(f"study {study.study_name!r} has no complete trial with an architecture: rerun the search")
    return ArchSpec.from_json(best.user_attrs[record.SPEC]), best


def seconds_per_trial(study: optuna.Study | None, *, last: int = 50) -> float | None:
    """Median wall seconds of the study's last ``last`` trained trials (re-used duplicates skipped)."""
    if study is None:
        return None
    spans = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.datetime_start and t.datetime_complete and record.CACHED_FROM not in t.user_attrs
    ]
    return statistics.median(spans[-last:]) if spans else None


# -- the plan --------------------------------------------------------------------------------
GUESSES: dict[str, dict[str, float]] = {
    # Measured on this project's 2-core CPU (README, docs/benchmarks): the backbone stage
    # 21-26 min, the supernet's 48 epochs 37.9 min, a supernet trial 5.9-6.4 s (one worker),
    # a default proxy trial about 5 min (2 seeds side by side), end to end 8 epochs x 6000
    # images in 62 min (13 images/s).
    "default": {"backbone_s": 25 * 60, "supernet_s": 38 * 60, "screen_s": 6.2, "finalist_s": 300, "e2e_img_s": 13},
    # quick: a 2 min backbone stage and 38-57 s a proxy trial (measured); the rest scaled by
    # image area and epochs from the default's (guesses).
    "quick": {"backbone_s": 120, "supernet_s": 240, "screen_s": 2.0, "finalist_s": 50, "e2e_img_s": 23},
    "lite": {"backbone_s": 30 * 60, "supernet_s": 40 * 60, "screen_s": 6.0, "finalist_s": 150, "e2e_img_s": 10},
}


@dataclass(frozen=True)
class Estimate:
    """A stage's expected remaining wall time; ``measured``: from this storage's own trials."""

    stage: str
    seconds: float | None
    measured: bool
    basis: str


def estimate(
    s: Settings,
    plan: Sequence[Stage],
    *,
    backbone_cached: bool,
    supernet_cached: bool,
    train_images: int | None,
) -> list[Estimate]:
    """Remaining time per stage: measured seconds a trial times the trials left, else a guess."""
    guess = GUESSES.get(s.preset, GUESSES["default"])
    out = []
    build = (0.0 if backbone_cached else guess["backbone_s"]) + (0.0 if supernet_cached else guess["supernet_s"])
    cached = [w for w, c in (("backbone stage", backbone_cached), ("supernet", supernet_cached)) if c]
    out.append(
        Estimate(
            "build",
            build,
            build == 0,
            "cached: " + ", ".join(cached)
            if build == 0
            else "guess from this project's 2-core benchmarks" + (f" ({', '.join(cached)} cached)" if cached else ""),
        )
    )
    e2e = None
    if train_images is not None:
        e2e = train_images * s.retrain_epochs / guess["e2e_img_s"]
    per_trial = {"screen": guess["screen_s"], "finalists": guess["finalist_s"], "retrain": e2e}
    for stage in plan:
        with reading(s.url, stage.study) as study:
            done, _ = counts(study)
            measured = seconds_per_trial(study)
        left = max(0, stage.n_trials - done)
        rate = measured if measured is not None else per_trial[stage.key]
        if left == 0:
            out.append(Estimate(stage.key, 0.0, True, "done"))
        elif rate is None:
            out.append(Estimate(stage.key, None, False, "unknown until the first run ends (scales with your data)"))
        elif measured is not None:
            out.append(Estimate(stage.key, left * rate, True, f"measured {rate:.1f} s a trial here"))
        else:
            out.append(Estimate(stage.key, left * rate, False, f"guess: {rate:.1f} s a trial on 2 CPU cores"))
    return out


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = [
    "DEFAULTS",
    "FINALISTS_FILE",
    "GUESSES",
    "SCREEN_FILE",
    "Estimate",
    "Settings",
    "Stage",
    "counts",
    "estimate",
    "fmt_seconds",
    "reading",
    "seconds_per_trial",
    "stages",
    "study_names",
    "winner",
]
