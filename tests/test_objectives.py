"""The objective registry: an objective defined outside the package runs a study through the runner."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest

from evo_fpn import record
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.cli.run import main
from evo_fpn.errors import UsageError
from evo_fpn.study import registry as objectives
from evo_fpn.study.config import config_from_mapping


class CellCount:
    """A toy objective: AP = share of global-pool cells, scaled; fails on request."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def prepare(self) -> None:
        pass

    def evaluate(self, spec: ArchSpec, reporter: Any = None) -> dict[str, Any]:
        share = sum(c.op == "global_pool" for c in spec.cells) / len(spec.cells)
        if reporter is not None:
            reporter.report(share / 2, 0)
        return {"ap": self.scale * share, "neck_flops": 1000 + len(spec.cells)}


class CountFailed(Exception):
    pass


def build_cell_count(cfg: Any, settings: Mapping[str, Any], progress: bool) -> objectives.Built:
    unknown = sorted(set(settings) - {"scale"})
    if unknown:
        raise UsageError(f"unknown [cell_count] setting {unknown[0]!r}; known: scale")
    scale = settings.get("scale", 1.0)
    return objectives.Built(CellCount(scale), (), {"task": f"cell-count-{scale}"}, {"cell_count": dict(settings)})


@pytest.fixture
def cell_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVO_FPN_STORAGE", raising=False)
    objectives.register(objectives.ObjectiveType("cell_count", "cell_count", build_cell_count, (CountFailed,)))
    yield
    objectives.unregister("cell_count")


STUDY = """\
objective = "cell_count"
n_trials = 4
[sampler]
name = "random"
[cell_count]
scale = 0.5
"""


def test_a_registered_objective_runs_a_study_through_the_runner(tmp_path: Path, cell_count: None) -> None:
    (tmp_path / "toy.toml").write_text(STUDY)
    assert main(["--study", "toy.toml", "--no-progress"]) == 0
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'studies' / 'toy.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    for t in study.trials:
        spec = ArchSpec.from_json(t.user_attrs[record.SPEC])
        share = sum(c.op == "global_pool" for c in spec.cells) / len(spec.cells)
        assert t.value == pytest.approx(0.5 * share) == t.user_attrs["ap"]
        assert t.user_attrs["neck_flops"] == 1000 + len(spec.cells)  # typed as the record says
        assert t.intermediate_values == {0: pytest.approx(share / 2)}
    assert study.user_attrs["fingerprint_parts"]["objective"] == "cell_count"
    assert study.user_attrs["config"]["cell_count"] == {"scale": 0.5}
    # a setting the objective refuses: one line, exit 2, nothing written
    (tmp_path / "bad.toml").write_text(STUDY.replace("scale = 0.5", "scael = 0.5"))
    assert main(["--study", "bad.toml", "--no-progress"]) == 2
    assert not (tmp_path / "studies" / "bad.db").exists()


def test_the_registry_owns_names_and_tables(cell_count: None) -> None:
    cfg = config_from_mapping("x", {"objective": "cell_count", "cell_count": {"scale": 2.0}})
    assert cfg.settings == {"cell_count": {"scale": 2.0}} and "cell_count" in cfg.to_dict()
    with pytest.raises(ValueError, match="belongs to"):
        objectives.register(objectives.ObjectiveType("other", "cell_count", build_cell_count))
    with pytest.raises(ValueError, match="study-file table of its own"):
        objectives.register(objectives.ObjectiveType("other", "runner", build_cell_count))
    with pytest.raises(UsageError, match="unknown objective 'nope'"):
        config_from_mapping("x", {"objective": "nope"})
    objectives.unregister("cell_count")
    with pytest.raises(UsageError, match="unknown key 'cell_count'"):
        config_from_mapping("x", {"cell_count": {"scale": 2.0}})


def test_study_values_and_directions() -> None:
    assert record.study_values({"ap": 0.25, "neck_flops": 7}) == 0.25
    assert record.study_values({"ap": 0.25, "neck_flops": 7}, ("ap", "neck_flops")) == [0.25, 7.0]
    assert record.directions(("ap", "neck_flops")) == ["maximize", "minimize"]
    with pytest.raises(KeyError, match="returned no neck_flops"):
        record.study_values({"ap": 0.25}, ("ap", "neck_flops"))
    with pytest.raises(ValueError, match="cannot optimise"):
        record.directions(("speed",))


def test_a_metric_not_measured_is_not_recorded() -> None:
    """An AP of an object size the validation set lacks (None) is left out, never written as 0.0."""
    attrs = record.user_attrs({"ap": 0.25, "ap_small": 0.1, "ap_large": None, "neck_flops": 7})
    assert attrs == {"ap": 0.25, "ap_small": 0.1, "neck_flops": 7}


class _CostlyTask:
    """Costs before training, and an evaluation that returns (some of) them again, as tasks may."""

    def prepare(self) -> None:
        pass

    def costs(self, spec: ArchSpec) -> dict[str, int]:
        return {"neck_params": 10, "neck_flops": 20, "total_flops": 30}

    def evaluate(self, spec: ArchSpec, reporter: Any = None) -> dict[str, Any]:
        return {"ap": 0.5, "neck_params": 10, "total_flops": 31, "train_seconds": 1.0}


def test_a_trial_writes_each_user_attr_once() -> None:
    """Every user attr is one commit on an RDB: the costs written before training are not written again."""
    from evo_fpn.arch.space import NasFpnSpace
    from evo_fpn.study.objective import Objective

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    writes: list[str] = []
    real = study._storage.set_trial_user_attr
    study._storage.set_trial_user_attr = lambda tid, k, v: (writes.append(k), real(tid, k, v))[1]
    study.optimize(Objective(space=NasFpnSpace(), task=_CostlyTask(), dedup=False), n_trials=1)
    counts = {k: writes.count(k) for k in writes}
    assert counts.pop("total_flops") == 2  # the evaluation changed it: written again, its value wins
    assert set(counts.values()) == {1}, counts
    attrs = study.trials[0].user_attrs
    assert (
        attrs["total_flops"] == 31 and attrs["neck_params"] == 10 and attrs["neck_flops"] == 20 and attrs["ap"] == 0.5
    )
