"""Both samplers: registry, pickling, threads, several processes on one study, the hook."""

from __future__ import annotations

import datetime
import json
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.samplers import NSGAIISampler, RandomSampler, TPESampler
from optuna.trial import TrialState
from samplers_worker import fast_dir, make_storage, toy_value

from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.samplers import SAMPLER_NAMES, AgingEvolutionSampler, ChoiceConstraints, RLControllerSampler, make_sampler
from evo_fpn.samplers._common import TrialIndex
from evo_fpn.samplers.evolution import LINEAGE_ATTR, parent_of
from evo_fpn.samplers.rl import SAMPLE_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = NasFpnSpace()
WORKER = str(Path(__file__).with_name("samplers_worker.py"))
SETTINGS = {"evolution": {"population_size": 8, "sample_size": 3}, "rl": {"batch_size": 4}}


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    yield from fast_dir(tmp_path)


def nas_objective(trial: optuna.Trial) -> float:
    SPACE.suggest(trial)
    return toy_value(trial.params)


def valid(params: dict) -> bool:
    return all(params[f"cell{k}.input_i"] != params[f"cell{k}.input_j"] for k in range(7)) and sorted(
        params[f"cell{k}.level"] for k in range(2, 7)
    ) == ["P3", "P4", "P5", "P6", "P7"]


def test_registry_names_settings_and_errors() -> None:
    assert SAMPLER_NAMES == ("evolution", "rl", "random", "tpe", "nsga2")
    assert isinstance(make_sampler("evolution", seed=0, constraints=SPACE), AgingEvolutionSampler)
    assert isinstance(make_sampler("rl", seed=0, constraints=SPACE), RLControllerSampler)
    assert isinstance(make_sampler("random", seed=0, constraints=SPACE), RandomSampler)
    assert isinstance(make_sampler("nsga2", seed=0), NSGAIISampler)
    tpe = make_sampler("tpe", seed=0)
    assert isinstance(tpe, TPESampler)
    # pinned, not Optuna's version-dependent defaults
    assert tpe._multivariate is True and tpe._constant_liar is True and tpe._n_startup_trials == 10
    assert make_sampler("tpe", n_startup_trials=3)._n_startup_trials == 3
    with pytest.raises(ValueError, match="evolution, rl, random, tpe, nsga2"):
        make_sampler("cmaes")
    with pytest.raises(ValueError, match="sample_sizee"):
        make_sampler("evolution", sample_sizee=3)


def test_nas_space_implements_the_hook() -> None:
    assert isinstance(SPACE, ChoiceConstraints)


@pytest.mark.parametrize("name", ["evolution", "rl"])
def test_pickled_sampler_continues_exactly(name: str) -> None:
    def run(n: int, split: int | None) -> list[dict]:
        sampler = make_sampler(name, seed=2, constraints=SPACE, **SETTINGS[name])
        study = optuna.create_study(sampler=sampler, direction="maximize")
        study.optimize(nas_objective, n_trials=split or n)
        if split:
            study.sampler = pickle.loads(pickle.dumps(study.sampler))  # drops locks and caches
            study.optimize(nas_objective, n_trials=n - split)
        return [t.params for t in study.trials]

    assert run(30, None) == run(30, 17)


@pytest.mark.parametrize("name", ["evolution", "rl"])
def test_threads_share_one_sampler(name: str) -> None:
    sampler = make_sampler(name, seed=0, constraints=SPACE, **SETTINGS[name])
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.optimize(nas_objective, n_trials=40, n_jobs=2)
    trials = study.trials
    assert len(trials) == 40 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(valid(t.params) for t in trials)
    if name == "evolution":
        assert sum(t.user_attrs[LINEAGE_ATTR]["origin"] == "mutation" for t in trials) > 20
    else:
        assert sum(SAMPLE_KEY in t.system_attrs for t in trials) >= 38


@pytest.mark.parametrize("name", ["evolution", "rl"])
def test_two_processes_share_one_study(name: str, scratch: Path) -> None:
    storage = f"journal:{scratch}/study.log"
    cmd = [sys.executable, WORKER, "--storage", storage, "--sampler", name, "--settings", json.dumps(SETTINGS[name])]
    subprocess.run([*cmd, "--n-trials", "0"], check=True, capture_output=True)  # create it once
    barrier = scratch / "barrier"
    barrier.mkdir()
    cmd += ["--n-trials", "20", "--sleep", "0.02", "--barrier", f"{barrier}:2"]
    procs = [subprocess.Popen([*cmd, "--seed", str(s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-2000:]
    trials = optuna.load_study(study_name="s", storage=make_storage(storage)).trials
    assert len(trials) == 40 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(valid(t.params) for t in trials)
    assert sorted(t.number for t in trials) == list(range(40))
    workers = [t.user_attrs["worker"] for t in trials]
    assert sum(a != b for a, b in zip(workers, workers[1:], strict=False)) >= 5  # they really ran interleaved
    for t in trials:
        if name == "evolution":
            rec = t.user_attrs[LINEAGE_ATTR]
            if rec["origin"] == "mutation":
                parent = trials[rec["parent"]]
                assert parent.state == TrialState.COMPLETE
                # only finished trials are parents: the child is created (datetime_start) just before
                # it samples, and the other process stamps datetime_complete just before its commit,
                # so the two stamps may cross by the time a commit takes, never by more
                assert parent.datetime_complete - t.datetime_start < datetime.timedelta(seconds=0.5)
                assert parent_of(t.user_attrs) == parent.number
        elif t.number > 1:
            assert SAMPLE_KEY in t.system_attrs


@pytest.mark.parametrize(("cls", "optimum"), [(AgingEvolutionSampler, 0), (RLControllerSampler, 5)])
def test_docstring_example_runs_and_finds_the_optimum(cls: type, optimum: float) -> None:
    code = cls.__doc__.split(".. code::", 1)[1].split("    Args:", 1)[0]
    namespace: dict = {}
    exec(textwrap.dedent(code), namespace)  # the README-style example on an ordinary study
    study = namespace["study"]
    assert len(study.trials) == 100
    assert study.best_value == optimum


def test_trial_index_answers_none_for_a_lookup_and_raises_for_a_trial_that_must_be_there() -> None:
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=6)
    dense = study.trials
    sparse = [t for t in dense if t.number % 2]  # numbers 1, 3, 5, as a Hyperband bracket shows them
    for trials, there, missing in ((dense, [0, 5], [-1, 6]), (sparse, [1, 5], [-1, 0, 2, 6])):
        index = TrialIndex(trials)
        assert index.end == 6
        assert [index[n].number for n in there] == [index.get(n).number for n in there] == there
        for n in missing:  # -1 must not wrap around to the last trial
            assert index.get(n) is None
            with pytest.raises(KeyError, match=f"trial {n} "):
                index[n]
    assert TrialIndex([]).end == 0 and TrialIndex([]).get(0) is None


class OddTrials(optuna.Study):
    """A view of a study that shows only its odd-numbered trials: trial numbers with gaps, as
    a filtered view (a pruner's bracket, say) may show them."""

    def _get_trials(self, deepcopy: bool = True, states: object = None, use_cache: bool = False) -> list:
        return [t for t in super()._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache) if t.number % 2]


@pytest.mark.parametrize("name", ["evolution", "rl"])
def test_samplers_follow_a_view_with_sparse_trial_numbers(name: str) -> None:
    study = optuna.create_study(sampler=RandomSampler(seed=0), direction="maximize")
    study.optimize(nas_objective, n_trials=24)
    view = OddTrials(study_name=study.study_name, storage=study._storage)
    view.sampler = make_sampler(name, seed=0, constraints=SPACE, **SETTINGS[name])
    view.optimize(nas_objective, n_trials=10)
    trials = study.trials[24:]
    assert len(trials) == 10 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(valid(t.params) for t in trials)
    if name == "evolution":  # 12 visible finished trials >= population 8: every child has a visible parent
        assert all(parent_of(t.user_attrs) % 2 for t in trials if t.user_attrs[LINEAGE_ATTR]["origin"] == "mutation")
        assert sum(t.user_attrs[LINEAGE_ATTR]["origin"] == "mutation" for t in trials) >= 8
    else:  # 12 visible finished trials, batches of 4: three updates before the first sample
        assert trials[0].system_attrs[SAMPLE_KEY]["version"] == 3
        assert view.sampler.sync(view) == len([t for t in study.trials if t.number % 2]) // 4


def test_samplers_import_only_optuna_numpy_torch() -> None:
    """General Optuna samplers: nothing of evo-fpn but themselves and the Optuna-compat leaf."""
    import ast

    import evo_fpn.samplers as pkg

    allowed = {"optuna", "numpy", "torch"} | set(sys.stdlib_module_names)
    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.module == "evo_fpn":
                names = [f"evo_fpn.{a.name}" for a in node.names]
            for name in names:
                ok = name.startswith("evo_fpn.samplers") or name == "evo_fpn.compat" or name.split(".")[0] in allowed
                assert ok, (path.name, name)
