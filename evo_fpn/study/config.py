"""Typed study configuration: ``studies/NAME.toml`` + command-line overrides -> :class:`StudyConfig`.

A study file (all keys optional; unknown keys are refused so typos do not pass silently)::

    description = "what this study is for"
    n_trials = 20            # total budget of finished trials, across all workers
    timeout = 3600           # seconds per worker (optional)
    seed = 0
    preset = "quick"         # proxy task preset: quick | default | paper
    device = "auto"          # auto | cpu | cuda
    threads = 1              # CPU threads per worker (optional; torch's default otherwise)
    data = "/path/to/coco"   # COCO-format dataset (optional; default: built-in dataset)
    objectives = ["ap", "neck_flops"]  # the study's values (default ["ap"]): ap, neck_flops, total_flops,
                             # neck_params, total_params, latency_ms; "ap" first, each in its natural direction
    max_neck_flops = 2e8     # budgets (optional): an architecture over one is never trained (evo_fpn.limits)
    max_params = 4e6         # the whole detector's parameters
    max_latency_ms = 30.0
    latency_warmup = 5       # latency_ms: forward passes before timing, then the median of latency_runs
    latency_runs = 20

    [proxy]                  # overrides of the preset's fields
    epochs = 2
    [space]                  # evo_fpn.arch.space.SpaceConfig fields
    num_cells = 7
    [sampler]
    name = "evolution"       # evolution | rl | random | tpe | nsga2
    [sampler.evolution]      # settings passed to make_sampler when this sampler is chosen
    population_size = 20
    [pruner]
    name = "none"            # none | median | percentile | hyperband | successive_halving
    [pruner.median]
    n_warmup_steps = 1
    [runner]
    heartbeat_interval = 10  # seconds; a worker silent for grace_period has its trial retried
    grace_period = 60
    max_retry = 2
    dedup = true
    enqueue_references = false
    figures_every = 10       # refresh optuna-dashboard figures every N trials (0: at the end only)

The *fingerprint* hashes what makes results comparable (the proxy task and the search space);
a stored study refuses to be resumed with a different one.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from evo_fpn import record
from evo_fpn.arch.space import SpaceConfig
from evo_fpn.errors import UsageError
from evo_fpn.limits import BUDGET_METRICS, Budgets
from evo_fpn.study import registry as objectives

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SAMPLERS: tuple[str, ...] = ("evolution", "rl", "random", "tpe", "nsga2")
PRUNERS: tuple[str, ...] = ("none", "median", "percentile", "hyperband", "successive_halving")
PRESET_NAMES: tuple[str, ...] = ("quick", "default", "lite", "paper")
OBJECTIVE_NAMES: tuple[str, ...] = tuple(record.DIRECTIONS)
"""What a study may optimise (``objectives``), each in its natural direction (:data:`evo_fpn.record.DIRECTIONS`)."""
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
OBJECTIVES: tuple[str, ...] = objectives.names()  # the built-ins; the registry may hold more
STUDY_DIR_NAME = "studies"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class ConfigError(UsageError):
    """A study file or override that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class RunnerConfig:
    """How workers run: heartbeats, retries of killed workers' trials, de-duplication."""

    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retry: int = 2
    dedup: bool = True
    enqueue_references: bool = False
    max_consecutive_failures: int = 10
    figures_every: int = 10  # refresh the dashboard's study figures every N finished trials (0: only at the end)

    def __post_init__(self) -> None:
        _check_int(self.heartbeat_interval, "runner.heartbeat_interval", 1)
        _check_int(self.grace_period, "runner.grace_period", 1)
        _check_int(self.max_retry, "runner.max_retry", 0)
        _check_int(self.max_consecutive_failures, "runner.max_consecutive_failures", 1)
        _check_int(self.figures_every, "runner.figures_every", 0)
        if self.grace_period <= self.heartbeat_interval:
            raise ConfigError(
                f"runner.grace_period ({self.grace_period}) must exceed runner.heartbeat_interval "
                f"({self.heartbeat_interval}), or live workers' trials get retried"
            )
        for name in ("dedup", "enqueue_references"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"runner.{name} must be true or false")


@dataclass(frozen=True)
class StudyConfig:
    """Everything a run needs; built by :func:`load_config`, recorded with the study."""

    name: str
    description: str = ""
    source: str = ""  # the study file it came from ("" for built-in defaults)
    n_trials: int = 20
    timeout: float | None = None
    seed: int = 0
    preset: str = "default"
    device: str = "auto"
    threads: int | None = None  # CPU threads per worker (torch); None: torch's default
    data: str | None = None
    objective: str = "proxy"
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # objective tables by name
    space: SpaceConfig = field(default_factory=SpaceConfig)
    sampler: str = "evolution"
    sampler_settings: Mapping[str, Any] = field(default_factory=dict)
    pruner: str = "none"
    pruner_settings: Mapping[str, Any] = field(default_factory=dict)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    objectives: tuple[str, ...] = ("ap",)
    max_neck_flops: float | None = None
    max_params: float | None = None
    max_latency_ms: float | None = None
    latency_warmup: int = 5
    latency_runs: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", _objective_names(self.objectives))
        if not _NAME_RE.match(self.name):
            raise ConfigError(
                f"study name {self.name!r} is not allowed: use letters, digits, '-', '_' or '.' (max 100)"
            )
        _check_int(self.n_trials, "n_trials", 1, fix="pass --n-trials N with N >= 1")
        if self.timeout is not None and (
            isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float) or self.timeout <= 0
        ):
            raise ConfigError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        _check_int(self.seed, "seed", 0)
        _check_choice(self.preset, "preset", PRESET_NAMES)
        _check_choice(self.device, "device", DEVICES)
        if self.threads is not None:
            _check_int(self.threads, "threads", 1)
        _check_choice(self.objective, "objective", objectives.names())
        _check_choice(self.sampler, "sampler", SAMPLERS)
        _check_choice(self.pruner, "pruner", PRUNERS)
        if len(self.objectives) > 1 and self.pruner != "none":
            raise ConfigError(
                f"pruner {self.pruner!r} cannot stop a study with {len(self.objectives)} objectives (Optuna prunes "
                'single-objective studies only): set pruner none, or objectives = ["ap"]'
            )
        try:
            Budgets(**{b: getattr(self, b) for b in BUDGET_METRICS})
        except ValueError as exc:
            raise ConfigError(f"{exc}: give a budget as a number, e.g. max_neck_flops = 2e8") from None
        _check_int(self.latency_warmup, "latency_warmup", 0)
        _check_int(self.latency_runs, "latency_runs", 1)

    @property
    def value_names(self) -> tuple[str, ...]:
        """The metrics that are the study's values: its ``objectives`` (default: AP alone)."""
        return self.objectives

    @property
    def budgets(self) -> Budgets:
        return Budgets(**{b: getattr(self, b) for b in BUDGET_METRICS})

    @property
    def measures_latency(self) -> bool:
        """Whether every trial's latency is measured (an objective or a budget needs it)."""
        return "latency_ms" in self.objectives or self.max_latency_ms is not None

    @property
    def counts_costs(self) -> bool:
        """Whether trials need their counted costs (a cost objective or budget needs them)."""
        return any(n in record.COST_METRICS for n in self.objectives) or bool(
            self.max_neck_flops is not None or self.max_params is not None
        )

    def cost_aware(self) -> dict[str, Any]:
        """The cost-aware settings that differ from a plain AP study: recorded with it and hashed
        into its fingerprint. Empty for ``objectives = ["ap"]`` without budgets, so those studies
        keep the fingerprint they always had."""
        out: dict[str, Any] = {}
        if self.objectives != ("ap",):
            out["objectives"] = list(self.objectives)
        if self.budgets:
            out["budgets"] = self.budgets.to_dict()
        if self.measures_latency:
            out["latency"] = {"warmup": self.latency_warmup, "runs": self.latency_runs}
        return out

    @property
    def proxy(self) -> Mapping[str, Any]:
        return self.settings.get("proxy", {})

    @property
    def synthetic(self) -> Mapping[str, Any]:
        return self.settings.get("synthetic", {})

    # -- records ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able record of the configuration (stored as a study user attr)."""
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "n_trials": self.n_trials,
            "timeout": self.timeout,
            "seed": self.seed,
            "preset": self.preset,
            "device": self.device,
            "threads": self.threads,
            "data": self.data,
            "objective": self.objective,
            **{section: dict(self.settings.get(section, {})) for section in objectives.sections()},
            "space": self.space.to_dict(),
            "sampler": {"name": self.sampler, "settings": dict(self.sampler_settings)},
            "pruner": {"name": self.pruner, "settings": dict(self.pruner_settings)},
            "runner": {f.name: getattr(self.runner, f.name) for f in fields(RunnerConfig)},
            **self.cost_aware(),
        }


def fingerprint(parts: Mapping[str, Any]) -> str:
    """Short stable hash of the parts that make results comparable (proxy task, space)."""
    body = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def code_version() -> str:
    """``evo_fpn`` version plus the git commit of the checkout (``+dirty`` when modified)."""
    from evo_fpn import __version__

    root = Path(__file__).resolve().parents[2]  # the checkout holding evo_fpn/
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return __version__
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "evo_fpn"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        suffix = "+dirty" if dirty.stdout.strip() else ""
        return f"{__version__}+g{rev.stdout.strip()}{suffix}"
    except (OSError, subprocess.SubprocessError):
        return __version__


# -- study files -------------------------------------------------------------------------
def study_dirs() -> list[Path]:
    """Where ``--study NAME`` looks for ``NAME.toml``: ``./studies``, then the repository's."""
    dirs = [Path.cwd() / STUDY_DIR_NAME]
    repo = Path(__file__).resolve().parents[2] / STUDY_DIR_NAME
    if repo.resolve() != dirs[0].resolve():
        dirs.append(repo)
    return dirs


def available_studies() -> list[str]:
    names: set[str] = set()
    for d in study_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


def find_study_file(study: str) -> Path:
    """``--study`` value -> its TOML file; a path (``x/y.toml``) or a name in ``studies/``."""
    if study.endswith(".toml") or "/" in study or "\\" in study:
        path = Path(study)
        if not path.is_file():
            raise ConfigError(
                f"study file {study} does not exist: check the path, or use --study NAME for studies/NAME.toml"
            )
        return path
    for d in study_dirs():
        path = d / f"{study}.toml"
        if path.is_file():
            return path
    known = ", ".join(available_studies()) or "none"
    raise ConfigError(
        f"unknown study {study!r}: no studies/{study}.toml (available: {known}); "
        f"create studies/{study}.toml or pick one of these"
    )


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}): fix the file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


_TOP_KEYS = {
    "description", "n_trials", "timeout", "seed", "preset", "device", "threads", "data", "objective",
    "space", "sampler", "pruner", "runner", "objectives", *BUDGET_METRICS, "latency_warmup", "latency_runs",
}  # fmt: skip
"""Top-level keys of a study file, besides the objectives' tables (:func:`evo_fpn.study.registry.sections`)."""


def config_from_mapping(name: str, data: Mapping[str, Any], *, source: str = "") -> StudyConfig:
    """Build a :class:`StudyConfig` from a parsed study file, refusing unknown keys."""
    where = source or "study config"
    known = _TOP_KEYS | set(objectives.sections())
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    for table in (*objectives.sections(), "space", "sampler", "pruner", "runner"):
        if table in data and not isinstance(data[table], Mapping):
            raise ConfigError(f"{where}: {table!r} must be a table ([{table}])")
    sampler_name, sampler_settings = _named_table(data.get("sampler", {}), "sampler", "evolution", SAMPLERS, where)
    pruner_name, pruner_settings = _named_table(data.get("pruner", {}), "pruner", "none", PRUNERS, where)
    space_data = dict(data.get("space", {}))
    try:
        space = SpaceConfig.from_dict(space_data)
    except TypeError as exc:
        raise ConfigError(
            f"{where}: bad [space] table ({exc}); fields: {', '.join(f.name for f in fields(SpaceConfig))}"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"{where}: bad [space] table: {exc}") from None
    runner_data = dict(data.get("runner", {}))
    known_runner = {f.name for f in fields(RunnerConfig)}
    bad = sorted(set(runner_data) - known_runner)
    if bad:
        raise ConfigError(f"{where}: unknown [runner] key {bad[0]!r}; known: {', '.join(sorted(known_runner))}")
    kwargs: dict[str, Any] = {k: data[k] for k in ("description", "n_trials", "timeout", "seed", "preset", "device",
                                                   "threads", "data", "objective", "objectives", *BUDGET_METRICS,
                                                   "latency_warmup", "latency_runs") if k in data}  # fmt: skip
    if kwargs.get("timeout") == 0:
        kwargs["timeout"] = None
    if kwargs.get("data") == "":
        kwargs["data"] = None
    return StudyConfig(
        name=name,
        source=source,
        settings={section: dict(data[section]) for section in objectives.sections() if section in data},
        space=space,
        sampler=sampler_name,
        sampler_settings=sampler_settings,
        pruner=pruner_name,
        pruner_settings=pruner_settings,
        runner=RunnerConfig(**runner_data),
        **kwargs,
    )


def _named_table(
    table: Mapping[str, Any], what: str, default: str, choices: Sequence[str], where: str
) -> tuple[str, dict[str, dict[str, Any]]]:
    """``[sampler] name = X`` plus ``[sampler.X]`` settings tables -> (name, {X: settings})."""
    name = table.get("name", default)
    _check_choice(name, f"{what}.name", choices)
    per: dict[str, dict[str, Any]] = {}
    for key, value in table.items():
        if key == "name":
            continue
        if key not in choices or not isinstance(value, Mapping):
            raise ConfigError(
                f"{where}: [{what}] may hold 'name' and settings tables [{what}.NAME] for NAME in "
                f"{', '.join(choices)}; got {key!r}"
            )
        per[key] = dict(value)
    return name, per


def apply_overrides(cfg: StudyConfig, **overrides: Any) -> StudyConfig:
    """Return ``cfg`` with command-line overrides applied (``None`` means 'not given').

    Runner fields (``heartbeat_interval`` ...) go to :class:`RunnerConfig`; ``proxy.X=V``
    style dotted keys go into the space table or an objective's table.
    """
    top: dict[str, Any] = {}
    runner: dict[str, Any] = {}
    runner_names = {f.name for f in fields(RunnerConfig)}
    settings = {section: dict(cfg.settings.get(section, {})) for section in objectives.sections()}
    space = cfg.space.to_dict()
    for key, value in overrides.items():
        if value is None:
            continue
        if key in runner_names:
            runner[key] = value
        elif "." in key:
            table, sub = key.split(".", 1)
            target = {**settings, "space": space}.get(table)
            if target is None or not sub:
                tables = ", ".join(f"{t}.FIELD" for t in ("space", *settings))
                raise ConfigError(f"cannot set {key!r}: use {tables}")
            target[sub] = value
        else:
            top[key] = value
    try:
        space_cfg = SpaceConfig.from_dict(space)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad space override: {exc}") from None
    return replace(
        cfg,
        settings={section: table for section, table in settings.items() if table or section in cfg.settings},
        space=space_cfg,
        runner=replace(cfg.runner, **runner) if runner else cfg.runner,
        **top,
    )


def load_config(study: str, *, name: str | None = None, **overrides: Any) -> StudyConfig:
    """``--study`` (a name in ``studies/`` or a path) + overrides -> :class:`StudyConfig`.

    ``name`` is the study's name in the storage (default: the file's stem).
    """
    path = find_study_file(study)
    cfg = config_from_mapping(name or path.stem, read_toml(path), source=str(path))
    return apply_overrides(cfg, **overrides)


def sampler_settings_for(cfg: StudyConfig) -> dict[str, Any]:
    """Settings of the chosen sampler (from ``[sampler.NAME]``)."""
    return dict(cfg.sampler_settings.get(cfg.sampler, {}))


def pruner_settings_for(cfg: StudyConfig) -> dict[str, Any]:
    return dict(cfg.pruner_settings.get(cfg.pruner, {}))


# -- checks ------------------------------------------------------------------------------
def _objective_names(value: Any) -> tuple[str, ...]:
    """``["ap", "neck_flops"]`` or ``"ap,neck_flops"`` (``--objectives``) -> a checked tuple."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f'objectives must be a list of names such as ["ap", "neck_flops"], got {value!r}')
    unknown = [n for n in names if n not in record.DIRECTIONS]
    if unknown:
        raise ConfigError(f"unknown objective {unknown[0]!r}: choose among {', '.join(record.DIRECTIONS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives {list(names)} name one twice: list each once")
    if names[0] != "ap":
        raise ConfigError(
            f'objectives {list(names)} must start with "ap" (AP against costs): e.g. ["ap", "{names[0]}"]'
        )
    return tuple(names)


def _check_int(value: Any, what: str, minimum: int, fix: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}" + (f": {fix}" if fix else ""))


def _check_choice(value: Any, what: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")
