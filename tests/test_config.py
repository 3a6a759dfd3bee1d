"""Study files and overrides: typed, strict about typos, fingerprinted by proxy + space only."""

from __future__ import annotations

from pathlib import Path

import pytest

from evo_fpn.arch.space import SpaceConfig
from evo_fpn.study.config import (
    ConfigError,
    RunnerConfig,
    StudyConfig,
    config_from_mapping,
    find_study_file,
    fingerprint,
    load_config,
    read_toml,
    sampler_settings_for,
)

REPO_STUDIES = Path(__file__).resolve().parent.parent / "studies"


def test_shipped_study_files_load_with_their_settings() -> None:
    names = sorted(p.stem for p in REPO_STUDIES.glob("*.toml"))
    assert {"quick", "default", "paper", "compare-evolution", "compare-rl", "compare-tpe", "compare-random"} <= set(
        names
    )
    for name in names:
        cfg = load_config(str(REPO_STUDIES / f"{name}.toml"))
        assert cfg.name == name and cfg.n_trials >= 1 and cfg.objective == ("supernet" if name == "screen" else "proxy")
    quick = load_config(str(REPO_STUDIES / "quick.toml"))
    assert (quick.preset, quick.sampler, quick.runner.enqueue_references) == ("quick", "evolution", True)
    assert sampler_settings_for(quick) == {"population_size": 2, "sample_size": 2}  # the demo reaches evolution
    paper = load_config(str(REPO_STUDIES / "paper.toml"))
    assert (paper.preset, paper.sampler, paper.data) == ("paper", "rl", "data/coco")


def test_comparison_studies_differ_only_in_the_sampler() -> None:
    dicts = []
    for s in ("evolution", "rl", "tpe", "random"):
        d = load_config(str(REPO_STUDIES / f"compare-{s}.toml")).to_dict()
        assert d["sampler"]["name"] == s
        for key in ("name", "description", "source"):
            d.pop(key)
        d["sampler"].pop("name")
        dicts.append(d)
    assert all(d == dicts[0] for d in dicts[1:])


def test_flags_override_the_file_and_sampler_settings_follow_the_chosen_sampler() -> None:
    cfg = load_config(
        str(REPO_STUDIES / "default.toml"),
        n_trials=7,
        sampler="rl",
        seed=3,
        dedup=False,
        grace_period=99,
        **{"proxy.epochs": 2.0, "space.num_cells": 8, "space.num_intermediate": 3},
    )
    assert (cfg.n_trials, cfg.sampler, cfg.seed, cfg.runner.dedup, cfg.runner.grace_period) == (7, "rl", 3, False, 99)
    assert sampler_settings_for(cfg) == {"algorithm": "ppo", "batch_size": 10}
    assert cfg.proxy["epochs"] == 2.0 and cfg.space.num_cells == 8
    assert load_config(str(REPO_STUDIES / "default.toml"), name="other").name == "other"


def test_fingerprint_covers_proxy_and_space_but_not_sampler_or_budget() -> None:
    base = {"objective": "proxy", "task": "abc", "space": SpaceConfig().to_dict()}
    assert fingerprint(base) == fingerprint(dict(base))
    assert fingerprint(base) != fingerprint({**base, "task": "abd"})
    assert fingerprint(base) != fingerprint({**base, "space": SpaceConfig(num_cells=8, num_intermediate=3).to_dict()})
    # the runner's parts hold no sampler or budget, so those never change it
    cfg_a = config_from_mapping("a", {"n_trials": 5, "sampler": {"name": "tpe"}})
    cfg_b = config_from_mapping("a", {"n_trials": 50, "sampler": {"name": "rl"}})
    assert cfg_a.space == cfg_b.space and cfg_a.proxy == cfg_b.proxy


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"n_trial": 5}, "unknown key 'n_trial'"),
        ({"n_trials": 0}, "n_trials must be an integer >= 1"),
        ({"n_trials": -3}, "n_trials must be an integer >= 1"),
        ({"n_trials": 2.5}, "n_trials must be an integer >= 1"),
        ({"sampler": {"name": "annealing"}}, "unknown sampler.name 'annealing'"),
        ({"sampler": {"name": "tpe", "bogus": 1}}, "[sampler] may hold"),
        ({"pruner": {"name": "guess"}}, "unknown pruner.name 'guess'"),
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"timeout": -1}, "timeout must be a positive number"),
        ({"space": {"num_cells": 3}}, "bad [space] table"),
        ({"space": {"cells": 3}}, "bad [space] table"),
        ({"runner": {"heartbeat": 3}}, "unknown [runner] key 'heartbeat'"),
        ({"runner": {"heartbeat_interval": 10, "grace_period": 5}}, "must exceed runner.heartbeat_interval"),
        ({"proxy": 3}, "'proxy' must be a table"),
    ],
)
def test_bad_study_data_names_the_problem(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping("s", data, source="studies/s.toml")
    assert needle in str(err.value)


def test_unknown_study_lists_the_known_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        find_study_file("quik")
    assert "unknown study 'quik'" in str(err.value) and "quick" in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        find_study_file(str(tmp_path / "missing.toml"))


def test_malformed_toml_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("n_trials = = 3\n")
    with pytest.raises(ConfigError) as err:
        read_toml(bad)
    assert "is not valid TOML" in str(err.value) and "\n" not in str(err.value)


def test_names_and_runner_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="study name"):
        StudyConfig(name="../escape")
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        RunnerConfig(heartbeat_interval=0)
    assert StudyConfig(name="ok-name_1.2").to_dict()["runner"]["grace_period"] == RunnerConfig().grace_period


def test_name_lists_kept_apart_for_import_cost_agree_with_their_sources() -> None:
    # config must not import torch (a synthetic study never does), so it keeps its own copies
    from evo_fpn.model.detector import BACKBONES
    from evo_fpn.model.neck import BACKBONE_CHANNELS
    from evo_fpn.samplers.registry import SAMPLER_NAMES
    from evo_fpn.study.config import PRESET_NAMES, SAMPLERS
    from evo_fpn.training.config import PRESETS

    assert PRESET_NAMES == tuple(PRESETS)
    assert SAMPLERS == SAMPLER_NAMES
    assert set(BACKBONES) <= set(BACKBONE_CHANNELS)  # every buildable backbone has its C3..C5 channels
