"""Make real, small studies with the project for the dashboard and figure tests.

:func:`run_study` runs the real runner (``python -m evo_fpn.run``) on its synthetic
objective. :func:`make_study` searches with the project's space, sampler and Objective (dedup,
record, architecture artifacts) on :class:`CostedSyntheticTask`: real neck params and FLOPs
from :mod:`evo_fpn.model.cost`, a synthetic AP (a fixed function of the architecture plus a jitter).
Both take seconds instead of hours of training.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import io
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.model import cost
from evo_fpn.study.artifacts import make_artifact_store
from evo_fpn.study.objective import Objective

PROXY_BACKBONE = "resnet10"
PROXY_CHANNELS = 32
PROXY_REPEATS = 2
PROXY_IMAGE = 128


def synthetic_ap(spec: ArchSpec, number: int) -> float:
    """A deterministic AP in [0, 1] that rewards some structure, so searches can improve.

    More global-pooling cells and output cells fed by other cells score higher; a small
    jitter from the trial number keeps repeated architectures from tying exactly.
    """
    n_in = spec.num_inputs
    gp = sum(c.op == "global_pool" for c in spec.cells)
    deep = sum(1 for c in spec.cells if c.is_output for i in c.inputs if i >= n_in)
    jitter = int(hashlib.sha256(f"{spec.canonical_hash()}:{number}".encode()).hexdigest()[:6], 16) / 0xFFFFFF
    return round(min(1.0, 0.15 + 0.025 * gp + 0.02 * deep + 0.01 * jitter), 6)


class CostedSyntheticTask:
    """An objective for :class:`evo_fpn.study.objective.Objective`: real neck costs (:mod:`evo_fpn.model.cost`),
    a synthetic AP (:func:`synthetic_ap`, jittered by the evaluation count) reported at two steps."""

    def __init__(self) -> None:
        self.calls = 0

    def prepare(self) -> None:
        pass

    def costs(self, spec: ArchSpec) -> dict[str, int]:
        costs = cost.neck_cost(spec, PROXY_BACKBONE, PROXY_CHANNELS, PROXY_REPEATS, PROXY_IMAGE)
        return {"neck_params": costs["neck_params"], "neck_flops": costs["neck_flops"]}

    def evaluate(self, spec: ArchSpec, reporter: Any = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        costs = self.costs(spec)
        ap = synthetic_ap(spec, self.calls)
        self.calls += 1
        for step, frac in enumerate((0.5, 0.8)):
            if reporter is not None:
                reporter.report(ap * frac, step)
                if reporter.should_prune():
                    raise optuna.TrialPruned()
        metrics: dict[str, Any] = {"ap": ap, "neck_params": costs["neck_params"], "neck_flops": costs["neck_flops"]}
        for key, scale in (("ap50", 1.6), ("ap75", 1.05), ("ap_small", 0.5), ("ap_medium", 1.1), ("ap_large", 1.3)):
            metrics[key] = round(min(1.0, ap * scale), 6)
        metrics.update(train_seconds=time.perf_counter() - t0, eval_seconds=0.0, images_per_s=0.0)
        return metrics


def _sampler(name: str, seed: int, space: NasFpnSpace) -> tuple[optuna.samplers.BaseSampler, str]:
    """The project's sampler ``name`` (small population for evolution); the name says what ran."""
    settings = {"population_size": 8, "sample_size": 3} if name == "evolution" else {}
    from evo_fpn.samplers import make_sampler

    return make_sampler(name, seed=seed, constraints=space, **settings), name


def make_study(
    storage: str,
    name: str,
    *,
    sampler: str = "evolution",
    seed: int = 0,
    n_trials: int = 30,
    artifact_dir: str | Path | None = None,
    enqueue: Sequence[ArchSpec] = (),
) -> optuna.Study:
    """Run a small search into ``storage`` and return the study.

    ``enqueue`` lists specs evaluated first (enqueue one twice to get a duplicate).

    Trials report two intermediate APs, a percentile pruner prunes the bottom quarter at the second, duplicates of an
    architecture already evaluated are answered from the cache (``cached_from``), and when
    ``artifact_dir`` is given each trial's architecture SVG is uploaded as an artifact.
    """
    space = NasFpnSpace()
    smp, sampler_used = _sampler(sampler, seed, space)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=smp,
        pruner=optuna.pruners.PercentilePruner(75.0, n_startup_trials=8, n_warmup_steps=1),
    )
    study.set_user_attr("sampler", sampler_used)
    study.set_user_attr("seed", seed)
    study.set_user_attr("objective", "synthetic (tests/study_factory.py)")
    for spec in enqueue:
        study.enqueue_trial(space.encode(spec))
    store = make_artifact_store(artifact_dir) if artifact_dir is not None else None
    objective = Objective(space=space, task=CostedSyntheticTask(), dedup=True, artifact_store=store)
    study.optimize(objective, n_trials=n_trials)
    return study


def _scratch_dir() -> Path:
    """A temporary folder, in RAM when possible: SQLite commits on disk cost ~10 ms each."""
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    path = Path(tempfile.mkdtemp(prefix="evo_fpn_studies_", dir=base))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


STUDY_TOML = """\
description = "dashboard test study {name}"
n_trials = {n_trials}
seed = {seed}
objective = "synthetic"

[sampler]
name = "{sampler}"
[sampler.evolution]
population_size = 8
sample_size = 3

[pruner]
name = "{pruner}"

[synthetic]
sleep = 0.0
steps = 2
noise = {noise}

[runner]
enqueue_references = {references}
"""


def run_study(
    storage: str,
    name: str,
    *,
    sampler: str,
    seed: int,
    n_trials: int,
    artifact_dir: Path,
    references: bool = False,
    pruner: str = "none",
    noise: float = 0.01,
) -> optuna.Study:
    """Run the real runner (``python -m evo_fpn.run``, in-process) with the synthetic objective."""
    from evo_fpn.cli.run import main

    folder = Path(tempfile.mkdtemp(prefix="evo_fpn_toml_"))
    toml = folder / f"{name}.toml"
    toml.write_text(
        STUDY_TOML.format(
            name=name,
            n_trials=n_trials,
            seed=seed,
            sampler=sampler,
            references=str(references).lower(),
            pruner=pruner,
            noise=noise,
        )
    )
    argv = ["--study", str(toml), "--storage", storage, "--artifacts", str(artifact_dir), "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(out):
        code = main(argv)
    shutil.rmtree(folder, ignore_errors=True)
    if code != 0:
        raise RuntimeError(f"python -m evo_fpn.run {' '.join(argv)} exited {code}: {out.getvalue()[-2000:]}")
    return optuna.load_study(study_name=name, storage=storage)


@dataclass(frozen=True)
class SharedStudies:
    """Small studies in one SQLite file, shared by the dashboard tests.

    ``evolution`` (no pruner) and ``random`` (median pruner), two seeds each, are made by the
    real runner CLI on its synthetic objective; ``costed`` (random search) by
    :func:`make_study`, whose objective also records the neck's params and FLOPs (counted by
    :mod:`evo_fpn.model.cost`) that the runner's synthetic objective leaves out.
    """

    storage: str
    artifact_dir: Path
    evolution: tuple[str, ...]
    random: tuple[str, ...]
    costed: str

    @property
    def names(self) -> tuple[str, ...]:
        return self.evolution + self.random

    def load(self, name: str) -> optuna.Study:
        return optuna.load_study(study_name=name, storage=self.storage)


@functools.lru_cache(maxsize=1)
def shared_studies() -> SharedStudies:
    """Made once per test process (seconds, in RAM)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = _scratch_dir()
    storage = f"sqlite:///{root / 'studies.db'}"
    artifacts = root / "artifacts"
    for seed in (0, 1):
        run_study(storage, f"evo-{seed}", sampler="evolution", seed=seed, n_trials=24, artifact_dir=artifacts)
        run_study(
            storage, f"random-{seed}", sampler="random", seed=seed, n_trials=16, artifact_dir=artifacts, pruner="median"
        )
    make_study(storage, "costed-0", sampler="random", seed=0, n_trials=20, artifact_dir=artifacts)
    return SharedStudies(storage, artifacts, ("evo-0", "evo-1"), ("random-0", "random-1"), "costed-0")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dashboard_server(storage: str, artifact_dir: Path, *, timeout: float = 60.0) -> Iterator[str]:
    """Run the real ``optuna-dashboard`` command (as the README gives it) on 127.0.0.1.

    Yields the base URL once ``/api/meta`` answers; stops the server afterwards.
    """
    port = free_port()
    beside = Path(sys.executable).with_name("optuna-dashboard")  # the venv's, also when it is not on PATH
    exe = str(beside) if beside.is_file() else shutil.which("optuna-dashboard") or "optuna-dashboard"
    # the command dashboard_command() prints (unmasked here), bound to a free loopback port
    cmd = [exe, storage, "--artifact-dir", str(artifact_dir), "--host", "127.0.0.1", "--port", str(port)]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(base + "/api/meta", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"optuna-dashboard did not start: {log.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read().decode())
