"""The proxy task on tiny data: it learns, reports, prunes, fails cleanly, caches, reproduces."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN, ArchSpec
from evo_fpn.cli.common import UsageError
from evo_fpn.errors import TrialFailed
from evo_fpn.study.objective import Objective
from evo_fpn.tasks.proxy import PRESETS, ProxyConfig, ProxyTask
from evo_fpn.training import features
from evo_fpn.training.evaluate import sizes_present

TINY = ProxyConfig(
    digits_train=32,
    digits_val=16,
    image_size=64,
    digits_min_scale=8,
    digits_max_scale=48,
    backbone_epochs=1.0,
    width=16,
    repeats=1,
    head_depth=1,
    batch_size=8,
    epochs=4.0,
    reports=2,
)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> ProxyTask:
    cache = tmp_path_factory.mktemp("cache")
    torch.set_num_threads(1)
    return ProxyTask(TINY, device="cpu", progress=False, cache_dir=cache).prepare()


def run_trial(study: optuna.Study, task: ProxyTask, spec: ArchSpec) -> optuna.trial.FrozenTrial:
    """One trial of ``spec`` through the runner's Objective (reporter, record, failures)."""
    space = NasFpnSpace()
    study.enqueue_trial(space.encode(spec))
    objective = Objective(space=space, task=task, failures=(TrialFailed,), dedup=False)
    study.optimize(objective, n_trials=1, catch=(TrialFailed,))
    return study.trials[-1]


def test_training_lowers_the_loss_and_is_reproducible(task: ProxyTask) -> None:
    first = task.evaluate(FPN_LIKE)
    assert first["last_loss"] < first["first_loss"]
    assert 0.0 <= first["ap"] <= 1.0 and first["images_per_s"] > 0
    assert first["neck_params"] > 0 and first["total_flops"] > first["neck_flops"] > 0
    again = task.evaluate(FPN_LIKE)
    assert again["last_loss"] == first["last_loss"] and again["ap"] == first["ap"]


def test_intermediate_ap_and_user_attrs_in_a_real_study(task: ProxyTask) -> None:
    trial = run_trial(optuna.create_study(direction="maximize"), task, PUBLISHED_NASFPN)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert len(trial.intermediate_values) == 2  # one mid-training report, then the final one
    attrs = trial.user_attrs
    present = sizes_present(task.store.val.split.coco_gt)
    assert "ap_large" not in present  # 8-48 px digits: no object of COCO's large size (96x96)
    for key in ("ap", "ap50", "ap75", *present, "neck_params", "total_params"):
        assert key in attrs
    assert "ap_large" not in attrs  # not measured, so not recorded (never a misleading 0.0)
    for key in ("neck_flops", "total_flops", "train_seconds", "eval_seconds", "images_per_s"):
        assert key in attrs
    assert attrs["spec_hash"] == PUBLISHED_NASFPN.canonical_hash()
    assert attrs["backbone_build"] == task.backbone_build
    assert attrs["ap"] == trial.value
    assert max(trial.intermediate_values) == max(trial.intermediate_values.keys())


def test_pruner_stops_the_trial(task: ProxyTask) -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    trial = run_trial(study, task, FPN_LIKE)
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert len(trial.intermediate_values) == 1
    assert trial.user_attrs["ap"] == trial.intermediate_values[min(trial.intermediate_values)]


def test_non_finite_loss_fails_the_trial_cleanly(tmp_path: Path, task: ProxyTask) -> None:
    bad = ProxyTask(TINY.replace(lr=1e30), progress=False, store=task.store)  # same data; only the lr differs
    trial = run_trial(optuna.create_study(direction="maximize"), bad, FPN_LIKE)
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "non-finite loss" in trial.user_attrs["fail_reason"]


def test_several_seeds_score_their_mean_and_report_every_seed(task: ProxyTask) -> None:
    def sibling(**changes: object) -> ProxyTask:  # 16 epochs: the first AP above 0 on this tiny data
        return ProxyTask(
            TINY.replace(epochs=16.0, **changes), device="cpu", progress=False, cache_dir=task.store.cache_dir
        )

    trial = run_trial(optuna.create_study(direction="maximize"), sibling(seeds=2), PUBLISHED_NASFPN)
    seeds = trial.user_attrs["ap_seeds"]
    alone = [sibling().evaluate(PUBLISHED_NASFPN), sibling(seed=1).evaluate(PUBLISHED_NASFPN)]
    assert seeds == [alone[0]["ap"], alone[1]["ap"]]
    # two real trainings, not one counted twice (their losses differ on any CPU; their APs may both be 0)
    assert alone[0]["last_loss"] != alone[1]["last_loss"]
    assert trial.value == trial.user_attrs["ap"] == pytest.approx((seeds[0] + seeds[1]) / 2)
    # 2 reports per seed; seed 1's follow seed 0's, and the last one is the mean.
    steps = sorted(trial.intermediate_values)
    assert len(steps) == 4 and steps[1] == 2 * steps[0] and steps[3] == 2 * steps[1]
    assert trial.intermediate_values[steps[1]] == seeds[0] and trial.intermediate_values[steps[3]] == trial.value


def test_the_backbone_build_is_the_digest_of_the_cached_weights(task: ProxyTask) -> None:
    state = task.store.backbone_state
    assert state is not None and task.backbone_build is not None and len(task.backbone_build) == 12
    blob = torch.load(task.store.cache_path(), map_location="cpu", weights_only=True)
    assert features.state_digest(blob["backbone"]) == task.backbone_build  # the same for every load
    name = next(k for k, v in state.items() if v.is_floating_point())
    nudged = {**state, name: state[name].clone()}
    nudged[name].view(-1)[0] += 1e-6
    assert features.state_digest(nudged) != task.backbone_build  # any weight moves it
    renamed = {("x." + k if k == name else k): v for k, v in state.items()}
    assert features.state_digest(renamed) != task.backbone_build
    end_to_end = ProxyTask(
        TINY.replace(backbone_mode="end_to_end"), device="cpu", progress=False, cache_dir=task.store.cache_dir
    ).prepare()
    assert end_to_end.backbone_build is None  # no stage: trials train their own backbone


def test_backbone_cache_is_shared(task: ProxyTask) -> None:
    path = task.store.cache_path()
    stamp = path.stat().st_mtime_ns
    other = ProxyTask(TINY.replace(seed=5, epochs=2.0), device="cpu", progress=False, cache_dir=task.store.cache_dir)
    assert other.store.cache_path() == path  # the trial's own settings do not change the backbone
    other.prepare()
    assert path.stat().st_mtime_ns == stamp
    meta = task.cache_meta()
    assert meta["stage_seconds"] > 0 and 0.0 <= meta["stage_ap"] <= 1.0
    assert not [p for p in task.store.cache_dir.iterdir() if p.name.startswith(".backbone-") and p.suffix != ".lock"]


def _state_and_parent(pid: int | str) -> tuple[str, int] | None:
    """A process's state letter and parent pid from /proc (None once it is gone)."""
    try:
        state, ppid = (Path("/proc") / str(pid) / "stat").read_text().rsplit(") ", 1)[1].split()[:2]
        return state, int(ppid)
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    info = _state_and_parent(pid)
    return info is not None and info[0] != "Z"


def _seed_processes(parent: int | None = None) -> list[int]:
    """Live children of ``parent`` (default: this process) running ``evo_fpn.tasks.seed_process``."""
    found = []
    for d in Path("/proc").iterdir():
        info = _state_and_parent(d.name) if d.name.isdigit() else None
        if info and info[1] == (parent or os.getpid()) and info[0] != "Z":
            try:
                if b"evo_fpn.tasks.seed_process" in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                continue
    return found


@pytest.fixture
def two_threads():  # type: ignore[no-untyped-def]
    """Two torch threads for one test (the module's task runs with 1), so seeds go side by side."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_seeds_side_by_side_score_exactly_as_one_after_the_other(task: ProxyTask, two_threads: None) -> None:
    config = TINY.replace(epochs=16.0, seeds=2)
    side = ProxyTask(config, device="cpu", progress=False, cache_dir=task.store.cache_dir)
    assert side.seed_processes() == 2  # 2 threads, 2 seeds: two processes with 1 thread each
    study = optuna.create_study(direction="maximize")
    run_trial(study, side, PUBLISHED_NASFPN)
    side_metrics = side.evaluate(PUBLISHED_NASFPN)
    torch.set_num_threads(1)
    turn = ProxyTask(config, device="cpu", progress=False, cache_dir=task.store.cache_dir)
    assert turn.seed_processes() == 1
    run_trial(study, turn, PUBLISHED_NASFPN)
    turn_metrics = turn.evaluate(PUBLISHED_NASFPN)
    a, b = study.trials
    assert a.state == b.state == optuna.trial.TrialState.COMPLETE
    assert a.user_attrs["ap_seeds"] == b.user_attrs["ap_seeds"]
    # the same two trainings, bit for bit: losses of the first and last seed, every evaluation
    for key in ("first_loss", "last_loss", "history", "ap_seeds"):
        assert side_metrics[key] == turn_metrics[key], key
    assert a.intermediate_values == b.intermediate_values and len(a.intermediate_values) == 4
    assert a.user_attrs["threads"] == b.user_attrs["threads"] == 1
    assert _seed_processes() == []


def test_seeds_side_by_side_prune_and_fail_cleanly(task: ProxyTask, two_threads: None) -> None:
    pruned = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    side = ProxyTask(TINY.replace(seeds=2), device="cpu", progress=False, cache_dir=task.store.cache_dir)
    assert side.seed_processes() == 2
    run_trial(pruned, side, FPN_LIKE)
    assert pruned.trials[0].state == optuna.trial.TrialState.PRUNED
    assert len(pruned.trials[0].intermediate_values) == 1  # the first report stopped both seeds
    failed = optuna.create_study(direction="maximize")
    bad = ProxyTask(TINY.replace(seeds=2, lr=1e30), device="cpu", progress=False, cache_dir=task.store.cache_dir)
    shutil.copy(task.store.cache_path(), bad.store.cache_path())  # the good backbone; only the trial's lr is bad
    run_trial(failed, bad, FPN_LIKE)
    assert failed.trials[0].state == optuna.trial.TrialState.FAIL
    assert "non-finite loss" in failed.trials[0].user_attrs["fail_reason"]
    assert _seed_processes() == []


def _unguarded_script(path: Path, config: ProxyConfig, cache_dir: Path) -> Path:
    """A script that evaluates FPN-like with 2 threads and no ``if __name__ == "__main__"`` guard."""
    path.write_text(
        "import torch\n"
        "from evo_fpn.tasks.proxy import ProxyConfig, ProxyTask\n"
        "from evo_fpn.arch.spec import FPN_LIKE\n"
        "torch.set_num_threads(2)\n"
        f"config = ProxyConfig.from_dict({config.to_dict()!r})\n"
        f"task = ProxyTask(config, device='cpu', progress=False, cache_dir={str(cache_dir)!r})\n"
        "assert task.seed_processes() == 2\n"
        "print('ap_seeds', task.evaluate(FPN_LIKE)['ap_seeds'])\n"
    )
    return path


def test_seeds_side_by_side_work_from_a_script_without_a_main_guard(task: ProxyTask, tmp_path: Path) -> None:
    # multiprocessing's spawn would re-run this script in every child; seed processes must not.
    script = _unguarded_script(tmp_path / "unguarded.py", TINY.replace(seeds=2), task.store.cache_dir)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("ap_seeds") == 1


def test_seed_processes_stop_when_their_trial_process_is_killed(task: ProxyTask, tmp_path: Path) -> None:
    long = TINY.replace(seeds=2, epochs=5000.0)
    script = _unguarded_script(tmp_path / "long.py", long, task.store.cache_dir)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(children := _seed_processes(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(children) == 2
        time.sleep(3)  # let them load the cache and start training
    finally:
        parent.kill()
        parent.wait()
    # Orphans stop at their next step, not a trial later (this one would train for hours). They
    # may still be loading the cache: on a CPU held by other jobs that took over 30 s.
    deadline = time.monotonic() + 180
    while any(map(_alive, children)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, children))


def test_config_identity_and_checks() -> None:
    assert TINY.fingerprint() == ProxyConfig.from_dict(TINY.to_dict()).fingerprint()
    assert TINY.fingerprint() != TINY.replace(epochs=5.0).fingerprint()
    assert TINY.backbone_key() != TINY.replace(backbone_epochs=2.0).backbone_key()
    # seeds came later: at its default it is left out of the fingerprint, so stored studies keep theirs
    assert (
        PRESETS["default"].replace(seeds=1).fingerprint() == "40a3e4887c3dd099"
    )  # its seed runs (1 repeat since the cells issue)
    assert PRESETS["default"].fingerprint() == "984ecb2c22391ecb"
    assert PRESETS["default"].seeds == 2 and PRESETS["quick"].seeds == PRESETS["paper"].seeds == 1
    assert TINY.replace(seeds=2).fingerprint() != TINY.fingerprint()
    assert TINY.replace(seeds=2).backbone_key() == TINY.backbone_key()
    for bad in (0, 1.5, True):
        with pytest.raises(UsageError, match="seeds must be an integer >= 1"):
            TINY.replace(seeds=bad)
    assert set(PRESETS) == {"quick", "default", "lite", "paper"}
    paper = PRESETS["paper"]
    assert (paper.backbone, paper.image_size, paper.epochs, paper.repeats) == ("resnet10", 512, 10.0, 3)
    assert (paper.optimizer, paper.lr, paper.batch_size) == ("sgd", 0.08, 64)  # the paper's recipe, not ours
    with pytest.raises(UsageError, match="unknown proxy setting"):
        ProxyConfig.from_dict({"epochz": 1})
    with pytest.raises(UsageError, match="backbone must be one of"):
        TINY.replace(backbone="vgg")
    with pytest.raises(UsageError, match="unknown proxy preset"):
        ProxyTask("huge")
    assert math.isfinite(TINY.lr)
    # a TOML int where a float is declared is the same config (one fingerprint, one backbone cache)
    as_ints = TINY.replace(epochs=2, backbone_epochs=1, anchor_sizes=[8, 16, 32, 64, 128])
    assert as_ints == TINY.replace(epochs=2.0, anchor_sizes=(8.0, 16.0, 32.0, 64.0, 128.0))
    assert as_ints.backbone_key() == TINY.replace(anchor_sizes=(8.0, 16.0, 32.0, 64.0, 128.0)).backbone_key()
    with pytest.raises(UsageError, match="lr must be a number"):
        TINY.replace(lr="fast")


def test_large_splits_are_decoded_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import evo_fpn.training.loop as training
    from evo_fpn.data.coco import load_dataset
    from evo_fpn.data.digits import build_digits

    _, val = load_dataset(build_digits(TINY.digits_config(), root=tmp_path))
    in_memory = training.load_inputs(val, 64, "plain", False)
    monkeypatch.setattr(training, "MEMORY_LIMIT_BYTES", 0)
    lazy = training.load_inputs(val, 64, "plain", False)
    assert lazy.images is None and in_memory.images is not None
    cpu = torch.device("cpu")
    (xa, ta), (xb, tb) = in_memory.batch([0, 3, 5], cpu), lazy.batch([0, 3, 5], cpu)
    assert torch.equal(xa, xb)
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(ta, tb, strict=True))


def test_paper_preset_needs_a_dataset(tmp_path: Path) -> None:
    from evo_fpn.data.coco import DatasetError

    with pytest.raises(DatasetError, match="need a dataset folder"):
        ProxyTask("paper", device="cpu", progress=False, cache_dir=tmp_path).prepare()


# -- the cells-issue settings: each changes what it says and nothing else -------------------------
def test_norm_recalibration_changes_statistics_not_weights(task: ProxyTask) -> None:
    from evo_fpn.training.loop import recalibrate_norms

    model = task.build(PUBLISHED_NASFPN)
    norms = [m for m in model.neck.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    was = model.training
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k}
    before = [m.running_mean.clone() for m in norms]
    assert recalibrate_norms(model, task.store.train, batches=3, config=TINY, device=task.device) == len(norms) > 0
    assert all(int(m.num_batches_tracked) == 3 and m.momentum == 0.1 for m in norms)
    assert any(not torch.equal(b, m.running_mean) for b, m in zip(before, norms, strict=True))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert model.training == was


def test_anytime_averages_the_losses_of_every_repeat(task: ProxyTask) -> None:
    torch.manual_seed(0)
    from evo_fpn.model.detector import build_detector

    model = build_detector(PUBLISHED_NASFPN, num_classes=task.num_classes, image_size=64, with_backbone=False,
                           width=16, repeats=2, head_depth=1, anytime=True)  # fmt: skip
    feats, targets = task.store.train.batch([0, 1], torch.device("cpu"))
    model.train()
    mixed = model.forward_features(feats, targets)
    per_repeat = [model._loss(list(p.values()), targets) for p in model.neck.forward_repeats(feats)]
    for key, value in mixed.items():
        assert torch.allclose(value, (per_repeat[0][key] + per_repeat[1][key]) / 2)
    last = model._loss(list(model.neck(feats).values()), targets)
    assert torch.allclose(last["classification"], per_repeat[1]["classification"])
    model.eval()
    assert len(model.forward_features(feats)) == 2  # inference: detections from the last repeat


def test_trial_settings_leave_the_backbone_cache_and_old_fingerprints_alone() -> None:
    for change in ({"fpn_norm": "batch"}, {"norm_recal_batches": 5}, {"anytime": True}, {"norm_decay": False},
                   {"neck_norm": "group"}):  # fmt: skip
        other = TINY.replace(**change)
        assert other.backbone_key() == TINY.backbone_key()
        assert other.fingerprint() != TINY.fingerprint()
    assert PRESETS["default"].fingerprint() == PRESETS["default"].replace(norm_decay=True, anytime=False).fingerprint()


def test_fpn_norm_puts_a_norm_into_torchvisions_fpn_only() -> None:
    from evo_fpn.model.detector import build_detector

    def norms(arch: str, **kw: object) -> set[str]:
        model = build_detector(arch, num_classes=3, image_size=64, with_backbone=False, width=16, repeats=1, **kw)
        kinds = (torch.nn.BatchNorm2d, torch.nn.GroupNorm)
        return {type(m).__name__ for m in model.neck.modules() if isinstance(m, kinds)}

    assert norms("torchvision_fpn") == set()
    assert norms("torchvision_fpn", fpn_norm="batch") == {"BatchNorm2d"}
    assert norms("torchvision_fpn", neck_norm="group") == {"GroupNorm"}
    assert norms("published", fpn_norm="group") == {"BatchNorm2d"}
    assert norms("published", neck_norm="none") == set()


def test_no_norm_decay_decays_conv_weights_only(task: ProxyTask) -> None:
    from evo_fpn.training.loop import make_optimizer

    model = task.build(PUBLISHED_NASFPN)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, _ = make_optimizer(params, TINY.replace(norm_decay=False), 10)
    decayed = [g for g in opt.param_groups if g["weight_decay"] > 0]
    assert len(decayed) == 1 and all(p.ndim > 1 for p in decayed[0]["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(params)


# -- the backbone cache key covers everything the stage reads -------------------------------------
OTHER_VALUES: dict[str, object] = {
    "data": "/no/such/dataset", "train_split": "train2017", "val_split": "val2017", "digits_train": 33,
    "digits_val": 17, "digits_min_scale": 9, "digits_max_scale": 40, "digits_seed": 1, "image_size": 96,
    "resize": "letterbox", "backbone": "resnet18", "backbone_weights": "/w.pt", "backbone_mode": "end_to_end",
    "backbone_epochs": 2.0, "backbone_seed": 1, "width": 32, "repeats": 2, "neck_norm": "group", "fpn_norm": "batch",
    "norm_recal_batches": 3, "anytime": True, "norm_decay": False, "cell_conv": "separable3x3", "head_depth": 2,
    "head_norm": "batch",
    "anchor_sizes": (4.0, 8.0, 16.0, 32.0, 64.0), "anchor_scales": (1.0,), "aspect_ratios": (1.0,), "epochs": 5.0,
    "batch_size": 4, "optimizer": "sgd", "lr": 0.01, "momentum": 0.5, "weight_decay": 0.01, "warmup_fraction": 0.1,
    "clip_grad": 1.0, "seed": 3, "seeds": 2, "reports": 1, "score_thresh": 0.1, "nms_thresh": 0.6,
    "detections_per_img": 50,
}  # fmt: skip


def test_every_setting_the_stage_can_read_is_in_the_backbone_key() -> None:
    import dataclasses

    from evo_fpn.training.config import STAGE_FIELDS

    names = {f.name for f in dataclasses.fields(ProxyConfig)}
    assert set(OTHER_VALUES) == names, "classify the new ProxyConfig field here: give it another valid value"
    base = TINY.replace(data=None)
    for name, value in OTHER_VALUES.items():
        other = base.replace(**{name: value})
        key = (lambda c: c.backbone_key()) if name not in ("data", "train_split", "val_split") else None
        if other.stage_config() != base.stage_config():  # the stage would train something else ...
            assert name in STAGE_FIELDS
            if key is not None:  # (a user dataset's key needs the folder to exist)
                assert key(other) != key(base), f"{name} changes the stage but not its cache key"
        else:  # ... or exactly the same thing, whatever the trial's setting
            assert name not in STAGE_FIELDS and key is not None and key(other) == key(base), name
    # the defect this guards against: a trial's neck norm used to change the stand-in FPN
    quick = PRESETS["quick"]
    assert quick.replace(neck_norm="group").stage_config() == quick.stage_config()


def test_the_stage_is_built_from_the_stage_config_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import evo_fpn.training.features as features

    seen: list[ProxyConfig] = []

    def fake_stage(config: ProxyConfig, *args: object, **kwargs: object) -> dict[str, object]:
        seen.append(config)
        raise RuntimeError("stop here")

    monkeypatch.setattr(features, "build_stage", fake_stage)
    trial_settings = TINY.replace(neck_norm="group", repeats=2, epochs=7.0, norm_decay=False, seed=4)
    with pytest.raises(RuntimeError, match="stop here"):
        features.FeatureStore(trial_settings, device="cpu", progress=False, cache_dir=tmp_path).prepare()
    assert seen == [trial_settings.stage_config()] == [TINY.stage_config()]
    assert (seen[0].neck_norm, seen[0].repeats, seen[0].epochs, seen[0].norm_decay) == (
        "batch",
        1,
        16.0,
        True,
    )  # defaults
    assert not list(tmp_path.glob("backbone-*.pt"))  # nothing half-written


def test_latency_times_the_whole_detector_on_the_tasks_device(task: ProxyTask) -> None:
    got = task.latency(PUBLISHED_NASFPN, warmup=1, runs=3)  # the backbone too, although trials use cached features
    assert got["latency_ms"] > 0 and got["latency_std_ms"] >= 0 and got["latency_device"].startswith("cpu: ")


def test_costs_counted_without_training_equal_the_built_models(task: ProxyTask) -> None:
    from evo_fpn.model.cost import count_flops, count_params

    for arch in (PUBLISHED_NASFPN, "torchvision_fpn"):
        costs = task.costs(arch)
        model = task.build(arch).eval()
        feats = [f[:1].float() for f in task.store.train.features]
        with torch.no_grad():
            pyramid = list(model.neck(feats).values())
        assert costs["neck_flops"] == count_flops(model.neck, feats)
        assert costs["neck_params"] == count_params(model.neck)
        head_flops = count_flops(model.retina.head, pyramid)
        assert costs["total_flops"] == task.store.backbone_flops + costs["neck_flops"] + head_flops
