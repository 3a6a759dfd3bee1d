"""Cost-aware search through the runner: objectives beyond AP, budgets, the samplers' part.

Mechanics run on the synthetic objective, whose costs are the real no-compute counts of a
RetinaNet (:data:`evo_fpn.tasks.synthetic.SyntheticTask.COST_MODEL`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState
from run_worker import load, write_study

from evo_fpn import record
from evo_fpn.cli.run import main
from evo_fpn.limits import Budgets
from evo_fpn.samplers.evolution import parent_of
from evo_fpn.study.config import ConfigError, config_from_mapping, load_config

pytestmark = pytest.mark.usefixtures("runner_env")


def cli(*args: str) -> int:
    return main([*args, "--no-progress"])


def url_of(tmp_path: Path, name: str) -> str:
    return f"sqlite:///{tmp_path / 'studies' / (name + '.db')}"


EVOLUTION = "[sampler.evolution]\npopulation_size = 6\nsample_size = 3\n"


def mo_study(tmp_path: Path, name: str, n_trials: int, top: str = "", sampler: str = "evolution") -> Path:
    # a long grace period: a busy machine must not fail a trial while its first cost count imports torch
    path = write_study(tmp_path, name, n_trials=n_trials, sampler=sampler, extra=f"seed = 2\n{top}", grace_period=60)
    if sampler == "evolution":
        path.write_text(path.read_text() + EVOLUTION)
    return path


# -- configuration ------------------------------------------------------------------------
def test_one_objective_keeps_the_plain_studys_record_and_fingerprint_parts() -> None:
    plain = config_from_mapping("s", {})
    explicit = config_from_mapping("s", {"objectives": ["ap"]})
    assert plain.value_names == explicit.value_names == ("ap",)
    assert plain.cost_aware() == {} and plain.to_dict() == explicit.to_dict()
    assert not {"objectives", "budgets", "latency"} & set(plain.to_dict())


def test_the_quick_studys_fingerprint_is_the_one_it_had_before_objectives_existed() -> None:
    from evo_fpn.study import registry as objectives
    from evo_fpn.study.config import fingerprint

    def fp(**overrides: object) -> str:
        cfg = load_config("quick", **overrides)
        return fingerprint({**objectives.build(cfg, progress=False).fingerprint, "space": cfg.space.to_dict()})

    assert fp() == fp(objectives="ap") == "37d7dc567c71a8a6"  # as recorded in the README's quick start
    assert len({fp(), fp(objectives="ap,neck_flops"), fp(objectives="ap,neck_flops", max_neck_flops=2e7)}) == 3


def test_objectives_from_file_and_flag_and_their_directions() -> None:
    cfg = config_from_mapping("s", {"objectives": ["ap", "neck_flops"], "max_neck_flops": 2e8})
    assert cfg.value_names == ("ap", "neck_flops")
    assert record.directions(cfg.value_names) == ["maximize", "minimize"]
    assert cfg.cost_aware() == {"objectives": ["ap", "neck_flops"], "budgets": {"max_neck_flops": 2e8}}
    flag = load_config("quick", objectives="ap,latency_ms")
    assert flag.value_names == ("ap", "latency_ms") and flag.measures_latency
    assert flag.cost_aware()["latency"] == {"warmup": 5, "runs": 20}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"objectives": ["ap", "flops"]}, "unknown objective 'flops'"),
        ({"objectives": ["neck_flops", "ap"]}, 'must start with "ap"'),
        ({"objectives": ["ap", "ap"]}, "name one twice"),
        ({"objectives": ["ap", "neck_flops"], "pruner": {"name": "median"}}, "cannot stop a study with 2 objectives"),
        ({"max_neck_flops": -1}, "max_neck_flops must be a positive number"),
    ],
)
def test_impossible_settings_are_refused(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        config_from_mapping("s", data)


@pytest.mark.parametrize(
    ("args", "table", "needle"),
    [
        (["--objectives", "ap,neck_flops", "--pruner", "median"], "", "cannot stop a study with 2 objectives"),
        (["--objectives", "ap,neck_flops", "--sampler", "rl"], "", "cost_target"),
        (["--objectives", "ap,neck_flops,latency_ms", "--sampler", "rl"], "", "use two objectives"),
        (["--sampler", "rl"], "[sampler.rl]\ncost_target = 1\n", "cost_target only applies to two objectives"),
        (["--objectives", "ap,gflops"], "", "unknown objective 'gflops'"),
    ],
)
def test_impossible_combinations_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], table: str, needle: str
) -> None:
    path = write_study(tmp_path, "syn", n_trials=2)
    path.write_text(path.read_text() + table)
    assert cli("--study", "syn.toml", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert not (tmp_path / "studies").exists()


def test_budgets_and_their_constraints_func() -> None:
    b = Budgets(max_neck_flops=100, max_latency_ms=5.0)
    assert b.active() == {"neck_flops": 100.0, "latency_ms": 5.0} and not Budgets()
    assert b.violations({"neck_flops": 150, "latency_ms": 2.0}) == [50.0, -3.0]
    assert b.reasons({"neck_flops": 150, "latency_ms": 2.0}) == ["neck_flops 150 > max_neck_flops 100"]
    assert b.constraints({"neck_flops": 90, "latency_ms": 6.0}) == {"max_neck_flops": -10.0, "max_latency_ms": 1.0}


# -- runs ---------------------------------------------------------------------------------
def test_two_objective_synthetic_study_has_two_values_and_a_pareto_front(tmp_path: Path) -> None:
    mo_study(tmp_path, "mo", 8, 'objectives = ["ap", "neck_flops"]')
    assert cli("--study", "mo.toml") == 0
    study = load(url_of(tmp_path, "mo"), "mo")
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert study.metric_names == ["ap", "neck_flops"]  # optuna-dashboard labels its axes with them
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8 and study.best_trials
    for t in complete:
        assert len(t.values) == 2 and t.values == [t.user_attrs["ap"], t.user_attrs["neck_flops"]]
        assert t.user_attrs["neck_flops"] > 0 and t.user_attrs["total_params"] > t.user_attrs["neck_params"]
    assert study.user_attrs["config"]["objectives"] == ["ap", "neck_flops"]


def test_a_budget_keeps_every_complete_trial_within_it_and_never_trains_the_others(tmp_path: Path) -> None:
    # the synthetic cost model's necks span about 33..42 MFLOPs: a 35 MFLOPs cap cuts through them
    mo_study(tmp_path, "cap", 12, 'objectives = ["ap", "neck_flops"]\nmax_neck_flops = 35e6')
    assert cli("--study", "cap.toml") == 0
    study = load(url_of(tmp_path, "cap"), "cap")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    infeasible = [t for t in study.trials if record.INFEASIBLE in t.user_attrs]
    assert complete and infeasible and len(complete) + len(infeasible) == 12
    assert all(t.user_attrs["neck_flops"] <= 35e6 for t in complete)
    for t in infeasible:
        assert t.state == TrialState.PRUNED and t.user_attrs["neck_flops"] > 35e6
        assert "ap" not in t.user_attrs and "train_seconds" not in t.user_attrs  # never trained
        assert "max_neck_flops" in t.user_attrs[record.INFEASIBLE]
        assert t.constraints["max_neck_flops"] > 0  # what samplers read (Trial.set_constraint)
    assert all(t.constraints["max_neck_flops"] <= 0 for t in complete)
    assert {t.number for t in study.best_trials} <= {t.number for t in complete}


def test_a_budget_reaches_optuna_samplers_as_trial_constraints(tmp_path: Path) -> None:
    from optuna.samplers._tpe.sampler import _get_infeasible_trial_score  # what TPE ranks trials by

    mo_study(tmp_path, "tpe", 6, "max_neck_flops = 35e6", sampler="tpe")
    assert cli("--study", "tpe.toml") == 0
    study = load(url_of(tmp_path, "tpe"), "tpe")
    scores = {t.number: _get_infeasible_trial_score(t) for t in study.trials}
    assert all((scores[t.number] > 0) == (record.INFEASIBLE in t.user_attrs) for t in study.trials)


@pytest.mark.slow  # three runs of the runner: 21 s measured on 2 shared cores, 78 s under heavy load
def test_resumed_two_objective_evolution_continues_exactly(tmp_path: Path) -> None:
    for name in ("whole", "split"):
        mo_study(tmp_path, name, 14, 'objectives = ["ap", "neck_flops"]\nmax_neck_flops = 37e6')
    assert cli("--study", "whole.toml", "--no-dedup") == 0
    assert cli("--study", "split.toml", "--no-dedup", "--n-trials", "8") == 0
    assert cli("--study", "split.toml", "--no-dedup") == 0
    whole = load(url_of(tmp_path, "whole"), "whole").trials
    split = load(url_of(tmp_path, "split"), "split").trials
    assert [t.params for t in whole] == [t.params for t in split]
    assert [t.values for t in whole] == [t.values for t in split]
    assert any(parent_of(t.user_attrs) is not None for t in whole[6:])  # evolution really mutated


def test_latency_objective_with_the_synthetic_stand_in(tmp_path: Path) -> None:
    mo_study(tmp_path, "lat", 4, 'objectives = ["ap", "latency_ms"]', sampler="random")
    assert cli("--study", "lat.toml") == 0
    study = load(url_of(tmp_path, "lat"), "lat")
    for t in study.trials:
        assert t.values[1] == t.user_attrs["latency_ms"] > 0
        assert t.user_attrs["latency_device"].startswith("synthetic")


# -- the RL controller's MnasNet reward ------------------------------------------------------
def test_rl_reward_of_two_objectives_is_mnasnets() -> None:
    import optuna

    from evo_fpn.samplers import RLControllerSampler

    sampler = RLControllerSampler(seed=0, cost_target=100.0, cost_weight=-0.07)
    twice = optuna.trial.create_trial(values=[0.3, 200.0])
    half = optuna.trial.create_trial(values=[0.3, 50.0])
    assert sampler.reward(twice) == pytest.approx(0.3 * 0.9526, rel=1e-4)  # 2 ** -0.07: 4.7% less
    assert sampler.reward(half) == pytest.approx(0.3 * 1.0497, rel=1e-4)
    over = optuna.trial.create_trial(values=[0.9, 50.0], system_attrs={"constraints:max_neck_flops": 3.0})
    assert sampler.reward(over) is None  # infeasible: the floor, below every feasible trial
    single = RLControllerSampler(seed=0)
    with pytest.raises(ValueError, match="cost_target"):
        single.sync(optuna.create_study(directions=["maximize", "minimize"]))


def test_rl_runs_a_two_objective_study_with_its_reward(tmp_path: Path) -> None:
    path = mo_study(tmp_path, "rl", 12, 'objectives = ["ap", "neck_flops"]', sampler="rl")
    path.write_text(path.read_text() + "[sampler.rl]\ncost_target = 35e6\nbatch_size = 4\n")
    assert cli("--study", "rl.toml") == 0
    study = load(url_of(tmp_path, "rl"), "rl")
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 12
    versions = [t.system_attrs["rl:sample"]["version"] for t in study.trials if "rl:sample" in t.system_attrs]
    assert max(versions) >= 2  # the policy was updated on the rewards of finished trials


def test_summary_lists_the_pareto_front_and_the_trials_over_budget() -> None:
    import optuna
    from optuna.trial import create_trial

    from evo_fpn.study.summary import summary

    study = optuna.create_study(study_name="s", directions=["maximize", "minimize"])
    study.set_metric_names(["ap", "neck_flops"])
    for ap, flops in ((0.2, 1e9), (0.3, 2e9), (0.25, 3e9)):  # the third is dominated by the second
        study.add_trial(create_trial(values=[ap, flops], user_attrs={"ap": ap, "neck_flops": int(flops)}))
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={record.INFEASIBLE: "neck_flops 5e9 > x"}))
    text = summary(study, n_trials=4, url="sqlite:///x.db", sampler="evolution", fingerprint="f" * 16,
                   artifact_dir=None, elapsed=3)  # fmt: skip
    assert "1 pruned (1 over budget, never trained)" in text
    assert "Pareto front of ap vs neck_flops (2 trials, feasible only):" in text
    assert "#0    AP 0.2   neck GFLOPs 1" in text and "#1    AP 0.3   neck GFLOPs 2" in text and "#2 " not in text


# -- compare and the pages ------------------------------------------------------------------
def test_compare_uses_hypervolume_and_refuses_other_objectives(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from evo_fpn.cli.compare import hypervolume_curve
    from evo_fpn.cli.compare import main as compare

    mo_study(tmp_path, "mo", 6, 'objectives = ["ap", "neck_flops"]', sampler="random")
    for name, seed in (("a", "0"), ("b", "1")):
        assert cli("--study", "mo.toml", "--new-study", name, "--seed", seed) == 0
    assert cli("--study", "mo.toml", "--new-study", "plain", "--objectives", "ap") == 0
    capsys.readouterr()
    assert compare(["a", "b"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["study", "sampler", "trials", "failed", "hypervolume"]
    studies = {n: load(url_of(tmp_path, n), n) for n in ("a", "b")}
    cost = 1.1 * max(t.values[1] for s in studies.values() for t in s.trials)
    assert f"reference point (ap 0, neck_flops {cost:.4g})" in out[-2]
    for name, study in studies.items():
        row = next(line.split() for line in out[2:4] if line.startswith(name))
        # by hand: the area the front dominates up to (AP 0, cost), front sorted by cost
        front = sorted((t.values[1], t.values[0]) for t in study.best_trials)
        area, best = 0.0, 0.0
        for c, ap in front:
            if ap > best:
                area += (cost - c) * (ap - best)
                best = ap
        assert float(row[4]) == pytest.approx(area, rel=1e-3)
        assert hypervolume_curve(study, [0.0, cost])[-1] == pytest.approx(area)
    assert compare(["a", "plain"]) == 2
    err = capsys.readouterr().err.strip()
    assert "optimised different objectives" in err and "a=ap,neck_flops" in err and "\n" not in err


def test_study_page_shows_the_front_the_budget_and_the_untrained(tmp_path: Path) -> None:
    from evo_fpn.viz import figures
    from evo_fpn.viz.pages import study_page
    from evo_fpn.viz.study_data import StudyData

    mo_study(tmp_path, "cap", 10, 'objectives = ["ap", "neck_flops"]\nmax_neck_flops = 35e6', sampler="random")
    assert cli("--study", "cap.toml") == 0
    study = load(url_of(tmp_path, "cap"), "cap")
    data = StudyData.from_study(study)
    assert data.cost_name == "neck_flops" and data.budgets == {"max_neck_flops": 35e6}
    fig = figures.ap_vs_flops_figure(data)
    traces = {t.name.split(" (")[0]: t for t in fig.data}
    over = [t for t in study.trials if record.INFEASIBLE in t.user_attrs]
    assert over and len(traces["over budget, never trained"].x) == len(over)
    assert max(traces["complete"].x) <= 35e6 * 1e-9 < min(traces["over budget, never trained"].x)
    assert {f"trial {t.number}" for t in study.best_trials} == set(traces["Pareto front"].text)
    assert any(s.x0 == pytest.approx(0.035) for s in fig.layout.shapes)  # the budget line, in GFLOPs
    page = study_page(data)
    assert "Pareto front architectures" in page and "over them, never trained" in page
    drawn = page.split('class="arch-row pareto"')[1].split("</div>")[0]
    assert drawn.count("<img") == min(6, len(study.best_trials))


def test_optuna_dashboard_serves_the_study_as_multi_objective(tmp_path: Path) -> None:
    from study_factory import dashboard_server, get_json

    mo_study(tmp_path, "mo", 4, 'objectives = ["ap", "neck_flops"]', sampler="random")
    assert cli("--study", "mo.toml") == 0
    study = load(url_of(tmp_path, "mo"), "mo")
    with dashboard_server(url_of(tmp_path, "mo"), tmp_path / "studies" / "artifacts") as base:
        (summary,) = get_json(base + "/api/studies")["study_summaries"]
        detail = get_json(f"{base}/api/studies/{summary['study_id']}")
    assert detail["directions"] == ["maximize", "minimize"]
    assert detail["objective_names"] == ["ap", "neck_flops"]  # its Pareto-front plot's axes
    assert {t["number"] for t in detail["best_trials"]} == {t.number for t in study.best_trials}
    figures = {g["id"] for g in detail["plotly_graph_objects"]}
    assert "ap-vs-flops" in figures  # our AP vs cost figure next to its own plots


# -- the Lite space and latency -------------------------------------------------------------
def _lite_spec():  # noqa: ANN202
    import random

    from evo_fpn.arch.space import NasFpnSpace, SpaceConfig

    return NasFpnSpace(SpaceConfig(num_cells=6, num_intermediate=2, max_level=6)).sample(random.Random(3))


def test_separable_cells_cost_what_their_convs_hold() -> None:
    import torch
    from torch import nn

    from evo_fpn.model.cost import count_params, neck_cost
    from evo_fpn.model.neck import build_neck

    spec, c = _lite_spec(), 64
    dense = neck_cost(spec, (40, 112, 960), c, 1, 128)
    sep = neck_cost(spec, (40, 112, 960), c, 1, 128, conv="separable3x3")
    per_cell = (9 * c * c) - (9 * c + c * c)  # a dense 3x3 against depthwise 3x3 + pointwise 1x1
    assert dense["neck_params"] - sep["neck_params"] == len(spec.cells) * per_cell
    assert sep["neck_flops"] < dense["neck_flops"] / 3  # the 1x1 input projections are the same in both
    neck = build_neck(spec, (40, 112, 960), c, 1, conv="separable3x3")
    assert count_params(neck) == sep["neck_params"]
    depthwise = [m for m in neck.modules() if isinstance(m, nn.Conv2d) and m.groups == c]
    assert len(depthwise) == len(spec.cells) and all(m.kernel_size == (3, 3) for m in depthwise)
    out = neck([torch.randn(1, 40, 16, 16), torch.randn(1, 112, 8, 8), torch.randn(1, 960, 4, 4)])
    assert list(out) == ["p3", "p4", "p5", "p6"] and out["p6"].shape == (1, c, 2, 2)


def test_a_p3_p6_mobilenet_detector_trains_and_detects_offline() -> None:
    import torch

    from evo_fpn.model.cost import count_params, detector_costs
    from evo_fpn.training.config import PRESETS

    cfg = PRESETS["lite"].replace(image_size=64)
    assert (cfg.backbone, cfg.cell_conv) == ("mobilenet_v3_large", "separable3x3")
    torch.manual_seed(0)
    model = cfg.build_detector(_lite_spec(), num_classes=3, with_backbone=True)  # weights=None: no download
    assert model.levels == (3, 4, 5, 6) and model.retina.anchor_generator.sizes[-1][0] == cfg.anchor_sizes[3]
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([1])}] * 2
    model.train()
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert set(losses) == {"classification", "bbox_regression"} and all(v.isfinite() for v in losses.values())
    model.eval()
    with torch.no_grad():
        (det, _) = model(images)
    assert set(det) == {"boxes", "scores", "labels"}
    costs = detector_costs(cfg, _lite_spec(), num_classes=3)
    assert costs["total_params"] == count_params(model) and costs["neck_params"] == count_params(model.neck)


def test_latency_is_the_median_of_timed_runs_with_the_device_named() -> None:
    import torch

    from evo_fpn.model.latency import measure
    from evo_fpn.training.config import PRESETS

    cfg = PRESETS["lite"].replace(image_size=64)
    model = cfg.build_detector(_lite_spec(), num_classes=3, with_backbone=True)
    got = measure(model, 64, device=torch.device("cpu"), warmup=1, runs=3)
    assert got["latency_ms"] > 0 and got["latency_std_ms"] >= 0 and model.training  # mode restored
    assert got["latency_device"].startswith("cpu: ") and f"({torch.get_num_threads()} threads)" in got["latency_device"]
    with pytest.raises(ValueError, match="runs >= 1"):
        measure(model, 64, device=torch.device("cpu"), runs=0)


def test_costs_count_the_head_once_per_configuration_and_give_what_a_full_count_gives() -> None:
    import random

    from evo_fpn.arch.space import NasFpnSpace
    from evo_fpn.arch.spec import PUBLISHED_NASFPN
    from evo_fpn.model import cost
    from evo_fpn.training.config import PRESETS

    cfg = PRESETS["default"]
    archs = [PUBLISHED_NASFPN, "torchvision_fpn", *(NasFpnSpace().sample(random.Random(i)) for i in range(2))]
    cached = [cost.detector_costs(cfg, a, num_classes=10, backbone=b) for a in archs for b in (None, (5, 7))]
    fresh = []
    for a in archs:
        for b in (None, (5, 7)):
            cost._FIXED.clear()  # a full count: nothing reused from the architecture before
            fresh.append(cost.detector_costs(cfg, a, num_classes=10, backbone=b))
    assert cached == fresh
    assert cached[0]["neck_flops"] != cached[2]["neck_flops"]  # the neck is counted per architecture
    assert cached[1]["total_params"] - cached[1]["neck_params"] == 5 + cost.count_params(
        cfg.build_detector(PUBLISHED_NASFPN, num_classes=10, with_backbone=False).retina.head
    )
