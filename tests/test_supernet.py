"""The supernet objective: exact weight sharing, fair sampling, a cached supernet, order-free scores."""

from __future__ import annotations

import multiprocessing
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from test_proxy import TINY  # the proxy tests' tiny configuration

from evo_fpn import record
from evo_fpn.arch.space import NasFpnSpace, SpaceConfig
from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN, ArchSpec
from evo_fpn.cli.common import UsageError
from evo_fpn.cli.run import main
from evo_fpn.errors import TrialFailed
from evo_fpn.model.neck import NasFpn
from evo_fpn.study import caches
from evo_fpn.tasks import supernet_training
from evo_fpn.tasks.proxy import ProxyConfig
from evo_fpn.tasks.supernet import SupernetConfig, SupernetTask
from evo_fpn.tasks.supernet_training import SharedNeck, spec_sampler
from evo_fpn.training import features as features_module
from evo_fpn.training.cache import build_once, checksum_path, damage, file_digest

TINY_NET = SupernetConfig(epochs=2.0, recal_batches=2, checkpoints=2)


def shared(spec: ArchSpec, repeats: int = 2) -> SharedNeck:
    torch.manual_seed(0)
    weights = NasFpn(spec=spec, in_channels=(8, 16, 32), channels=8, repeats=repeats)
    return SharedNeck(weights, None)


def features() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, c, s, s, generator=g) for c, s in ((8, 16), (16, 8), (32, 4))]


def test_a_wired_architecture_computes_what_that_architecture_computes_with_the_shared_weights() -> None:
    neck = shared(PUBLISHED_NASFPN).eval()
    alone = NasFpn(spec=FPN_LIKE, in_channels=(8, 16, 32), channels=8, repeats=2).eval()
    alone.load_state_dict(neck.weights.state_dict())  # every architecture of the space has these parameters
    out, ref = neck.use(FPN_LIKE)(features()), alone(features())
    assert list(out) == list(ref)
    for k in out:
        torch.testing.assert_close(out[k], ref[k])
    # one set of parameters, whatever is wired; the cached interpreters hold none of their own
    assert sum(p.numel() for p in neck.parameters()) == sum(p.numel() for p in alone.parameters())
    assert list(neck.state_dict()) == ["weights." + k for k in alone.state_dict()]


def test_training_one_wiring_moves_the_shared_weights_and_eval_mode_reaches_them() -> None:
    neck = shared(PUBLISHED_NASFPN)
    before = {k: v.clone() for k, v in neck.state_dict().items()}
    sum(v.sum() for v in neck.use(FPN_LIKE)(features()).values()).backward()
    grads = [p.grad for p in neck.parameters()]
    assert all(g is not None for g in grads)
    assert not torch.equal(before["weights.stages.0.cells.0.norm.running_mean"],
                           neck.state_dict()["weights.stages.0.cells.0.norm.running_mean"])  # fmt: skip
    neck.eval()
    bn = neck._active.stages[0].cells[0].norm
    assert bn is neck.weights.stages[0].cells[0].norm and not bn.training


def test_an_architecture_of_another_space_is_refused_with_the_reason() -> None:
    neck = shared(PUBLISHED_NASFPN)
    small = NasFpnSpace(SpaceConfig(num_cells=6, num_intermediate=1)).sample(random.Random(0))
    with pytest.raises(ValueError, match="6 cells, the supernet has 7"):
        neck.use(small)
    lite = NasFpnSpace(SpaceConfig(num_cells=6, num_intermediate=2, max_level=6)).sample(random.Random(0))
    with pytest.raises(ValueError, match="levels P3-P6"):
        neck.use(lite)


def test_fair_sampling_trains_every_choice_of_a_decision_equally_often() -> None:
    space = NasFpnSpace()
    draw = spec_sampler(space, "fair", random.Random(0))
    ops = Counter((k, c.op) for _ in range(10) for k, c in enumerate(draw().cells))
    assert set(ops.values()) == {5}  # ops are never repaired: exactly 5 of 10 each, per cell
    uniform = spec_sampler(space, "uniform", random.Random(0))
    counts = Counter((k, c.op) for _ in range(10) for k, c in enumerate(uniform().cells))
    assert set(counts.values()) != {5}  # uniform draws are not balanced (this seed)


def test_a_sub_supernet_trains_only_the_architectures_of_its_part_of_the_space() -> None:
    space = NasFpnSpace()
    for fixed in ({"cell0.op": "global_pool"}, {"cell2.level": "P3"}):  # cell2's level is repaired
        for sampling in ("uniform", "fair"):
            draw = spec_sampler(space, sampling, random.Random(0), fixed)
            assert all(space.encode(draw())[k] == v for _ in range(30) for k, v in fixed.items())
    draw, rng = spec_sampler(space, "uniform", random.Random(0)), random.Random(0)
    assert [draw() for _ in range(3)] == [space.sample(rng) for _ in range(3)]  # one-shot draws as before


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"epochs": 0}, "epochs must be > 0"),
        ({"split_epochs": 0}, "split_epochs must be > 0"),
        ({"sampling": "greedy"}, "sampling must be one of uniform, fair"),
        ({"recal_batches": -1}, "recal_batches must be >= 0"),
        ({"finetune_steps": -2}, "finetune_steps must be >= 0"),
        ({"epcohs": 2}, "unknown supernet setting 'epcohs'"),
    ],
)
def test_bad_supernet_settings_are_one_line_usage_errors(settings: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        SupernetConfig.from_dict(settings)


def _hold_the_lock(path: str, started: str) -> None:
    def slow() -> dict:
        Path(started).touch()  # inside the lock, before anything is written
        time.sleep(120)
        return {}

    build_once(Path(path), slow)


def test_a_builder_killed_midway_leaves_nothing_and_the_next_one_builds(tmp_path: Path) -> None:
    path, started = tmp_path / "cache" / "supernet-x.pt", tmp_path / "started"
    child = multiprocessing.get_context("spawn").Process(target=_hold_the_lock, args=(str(path), str(started)))
    child.start()
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the builder never took the lock"
    child.kill()
    child.join()
    assert [p.name for p in path.parent.iterdir()] == [f".{path.name}.lock"]  # no cache, no temp file
    build_once(path, lambda: {"ok": 1})
    assert torch.load(path, weights_only=True) == {"ok": 1}


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> SupernetTask:
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("cache")
    return SupernetTask(TINY, SpaceConfig(), TINY_NET, device="cpu", progress=False, cache_dir=cache).prepare()


def test_scores_do_not_depend_on_the_order_of_trials(task: SupernetTask) -> None:
    a = task.evaluate(PUBLISHED_NASFPN)
    b = task.evaluate(FPN_LIKE)
    again = task.evaluate(PUBLISHED_NASFPN)
    assert 0.0 <= a["ap"] <= 1.0 and a["ap"] == again["ap"] and a["ap50"] == again["ap50"]
    assert a["neck_flops"] != b["neck_flops"] and a["neck_params"] == b["neck_params"]
    assert a["train_seconds"] == 0.0 and a["eval_seconds"] >= a["recal_seconds"] > 0
    assert a == {**a, **task.costs(PUBLISHED_NASFPN)}  # the costs of the architecture trained alone


def test_a_trial_scores_as_the_per_detection_dicts_and_pycocotools_did(task: SupernetTask) -> None:
    """The array path (issue 31) gives the AP breakdown of the path before it, to the bit."""
    from evo_fpn.training.evaluate import coco_ap
    from evo_fpn.training.loop import predict

    for spec in (PUBLISHED_NASFPN, FPN_LIKE):
        metrics = task.evaluate(spec)
        assert task.store.val is not None and task.model is not None
        ref = coco_ap(
            task.store.val.split.coco_gt, predict(task.model, task.store.val, device=task.store.device, progress=False)
        )
        assert {k: metrics[k] for k in ref} == ref


@pytest.mark.parametrize("score_thresh", [0.01, 0.0])  # 0.0: every candidate, topk's 1000 limit binds
def test_batched_decoding_gives_torchvisions_detections_to_the_bit(task: SupernetTask, score_thresh: float) -> None:
    from evo_fpn.training.loop import detect

    task.evaluate(FPN_LIKE)
    model, val = task.model, task.store.val
    assert model is not None and val is not None
    kept = model.retina.score_thresh
    model.retina.score_thresh = score_thresh
    try:
        ours = detect(model, val, device=task.store.device, batch_size=7)
        with torch.inference_mode():
            ref = [
                d
                for s in range(0, len(val), 7)
                for d in model.forward_features(val.batch(range(s, min(s + 7, len(val))), task.store.device)[0])
            ]
    finally:
        model.retina.score_thresh = kept
    assert len(ours) == len(ref) == len(val) and (score_thresh or sum(len(d["scores"]) for d in ref) > 0)
    for a, b in zip(ours, ref, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))


class _Pruner:
    def __init__(self, prune: bool) -> None:
        self.prune, self.reports = prune, []  # type: list[tuple[float, int]]

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.prune


def test_a_val_subset_and_a_screen_before_the_full_score(task: SupernetTask) -> None:
    """val_images scores the first N val images; screen_images reports them first (step 0) and
    stops there when the pruner says so; both stay out of the identity at 0 and of the weights' key."""
    assert "val_images" not in SupernetConfig().to_dict() and "screen_images" not in SupernetConfig().to_dict()
    n = len(task.store.val) // 2
    full = task.evaluate(PUBLISHED_NASFPN)
    sub = SupernetTask(task.config, task.space, TINY_NET.replace(val_images=n), progress=False, store=task.store)
    assert sub.key() == task.key()
    part = sub.prepare().evaluate(PUBLISHED_NASFPN)
    assert len(sub.val_subset(n)) == n and len(sub.val_subset(n).split.coco_gt["images"]) == n
    from evo_fpn.training.evaluate import coco_ap
    from evo_fpn.training.loop import predict

    ids = set(task.store.val.split.image_ids[:n])
    dets = [
        d for d in predict(sub.model, task.store.val, device=task.store.device, progress=False) if d["image_id"] in ids
    ]
    assert {k: part[k] for k in ("ap", "ap50")} == {
        k: coco_ap(sub.val_subset(n).split.coco_gt, dets)[k] for k in ("ap", "ap50")
    }
    screen = SupernetTask(task.config, task.space, TINY_NET.replace(screen_images=n), progress=False, store=task.store)
    kept = _Pruner(False)
    assert screen.prepare().evaluate(PUBLISHED_NASFPN, kept)["ap"] == full["ap"]
    assert kept.reports == [(part["ap"], 0), (full["ap"], 1)]
    with pytest.raises(optuna.TrialPruned, match=f"on {n} val images"):
        screen.evaluate(PUBLISHED_NASFPN, _Pruner(True))
    with pytest.raises(ValueError, match="fewer"):
        SupernetConfig(val_images=10, screen_images=10)


def test_the_supernet_is_trained_once_and_keyed_by_what_its_weights_depend_on(task: SupernetTask) -> None:
    path = task.cache_path()
    assert path.is_file() and task.checkpoints == ("1", "2")
    mtime = path.stat().st_mtime_ns
    again = SupernetTask(TINY, SpaceConfig(), TINY_NET, device="cpu", progress=False, store=task.store).prepare()
    assert again.cache_path() == path and path.stat().st_mtime_ns == mtime  # loaded, not retrained
    assert again.evaluate(FPN_LIKE)["ap"] == task.evaluate(FPN_LIKE)["ap"]
    rescored = SupernetTask(TINY, SpaceConfig(), TINY_NET.replace(recal_batches=5), store=task.store)
    assert rescored.key() == task.key()  # scoring settings do not retrain
    for other in (
        SupernetTask(TINY.replace(repeats=2), SpaceConfig(), TINY_NET, store=task.store),
        SupernetTask(TINY, SpaceConfig(num_cells=6, num_intermediate=1), TINY_NET, store=task.store),
        SupernetTask(TINY, SpaceConfig(), TINY_NET.replace(sampling="fair"), store=task.store),
        SupernetTask(TINY, SpaceConfig(), TINY_NET.replace(epochs=3.0), store=task.store),
    ):
        assert other.key() != task.key()
    task.use_checkpoint("1")
    early = task.evaluate(FPN_LIKE)["ap"]
    task.use_checkpoint("2")
    with pytest.raises(ValueError, match="no checkpoint at 7"):
        task.use_checkpoint("7")
    assert 0.0 <= early <= 1.0


def test_a_fine_tuned_trial_starts_from_the_shared_weights_and_leaves_them_as_they_were(task: SupernetTask) -> None:
    tuned = SupernetTask(TINY, SpaceConfig(), TINY_NET.replace(finetune_steps=3), progress=False, store=task.store)
    assert tuned.key() == task.key()  # a scoring setting: the same trained supernet
    tuned.prepare()
    shared = {k: v.clone() for k, v in tuned._state.items()}
    first = tuned.evaluate(PUBLISHED_NASFPN)
    assert tuned.model is not None and first["finetune_seconds"] > 0
    moved = tuned.model.state_dict()
    assert any(not torch.equal(moved[k], v) for k, v in shared.items())  # the fine-tune trained the wiring
    tuned.evaluate(FPN_LIKE)
    assert tuned.evaluate(PUBLISHED_NASFPN)["ap"] == first["ap"]  # each trial starts from the shared weights
    assert all(torch.equal(tuned._state[k], v) for k, v in shared.items())
    assert task.evaluate(PUBLISHED_NASFPN)["finetune_seconds"] < first["finetune_seconds"]


def test_few_shot_scores_each_architecture_with_the_sub_supernet_of_its_part(task: SupernetTask) -> None:
    few = SupernetTask(TINY, SpaceConfig(), TINY_NET.replace(split="cell0.op", split_epochs=1.0), store=task.store)
    assert few.key() != task.key() and "split" not in TINY_NET.to_dict()  # a one-shot identity stays as it was
    mtime = task.cache_path().stat().st_mtime_ns
    few.progress = False
    few.prepare()
    assert task.cache_path().stat().st_mtime_ns == mtime  # started from the cached one-shot supernet
    assert set(few._shots) == {"sum", "global_pool"} and few.checkpoints == ("2",)
    start, a, b = few._state, few._shots["sum"], few._shots["global_pool"]
    convs = [k for k in start if k.endswith("conv.weight") and "stages" in k]
    assert convs and all(torch.equal(start[k], task._state[k]) for k in convs)
    assert any(not torch.equal(a[k], start[k]) for k in convs) and any(not torch.equal(a[k], b[k]) for k in convs)
    assert {few.shot(PUBLISHED_NASFPN), few.shot(FPN_LIKE)} == {"global_pool", "sum"}
    for spec in (PUBLISHED_NASFPN, FPN_LIKE):
        shot = few.shot(spec)
        assert shot == spec.cells[0].op
        few.evaluate(spec)
        assert few.model is not None
        now = few.model.state_dict()
        assert all(torch.equal(now[k], few._shots[shot][k]) for k in convs)  # its part's weights scored it
    with pytest.raises(UsageError, match="split 'cell9.op' is not a decision of the space"):
        SupernetTask(TINY, SpaceConfig(), TINY_NET.replace(split="cell9.op"), store=task.store)


def test_an_architecture_the_supernet_cannot_wire_fails_the_trial_only(task: SupernetTask) -> None:
    with pytest.raises(TrialFailed, match="not 'torchvision_fpn'"):
        task.evaluate("torchvision_fpn")  # type: ignore[arg-type]
    small = NasFpnSpace(SpaceConfig(num_cells=6, num_intermediate=1)).sample(random.Random(0))
    with pytest.raises(TrialFailed, match="6 cells"):
        task.evaluate(small)


def tiny_study(n_trials: int) -> str:
    """A study file on the supernet objective with the TINY proxy and the TINY_NET supernet."""
    fields = {k: v for k, v in TINY.to_dict().items() if v != ProxyConfig().to_dict()[k]}
    proxy = "\n".join(f"{k} = {v!r}" for k, v in fields.items())
    net = "\n".join(f"{k} = {v!r}" for k, v in TINY_NET.to_dict().items())
    return (
        f'objective = "supernet"\npreset = "default"\nn_trials = {n_trials}\n[sampler]\nname = "random"\n'
        f"[proxy]\n{proxy}\nseeds = 1\n[supernet]\n{net}\n"
    )


def test_a_study_runs_on_the_supernet_objective(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: SupernetTask
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVO_FPN_CACHE", str(task.store.cache_dir))
    monkeypatch.delenv("EVO_FPN_STORAGE", raising=False)
    (tmp_path / "one-shot.toml").write_text(tiny_study(n_trials=3))
    assert main(["--study", "one-shot.toml", "--no-progress", "--device", "cpu", "--threads", "1"]) == 0
    study = optuna.load_study(study_name="one-shot", storage=f"sqlite:///{tmp_path / 'studies' / 'one-shot.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for t in study.trials:
        spec = ArchSpec.from_json(t.user_attrs[record.SPEC])
        assert t.value == t.user_attrs["ap"] == task.evaluate(spec)["ap"]  # the worker used the cached supernet
        assert t.user_attrs["neck_flops"] == task.costs(spec)["neck_flops"]
        assert t.user_attrs[record.OBJECTIVE] == "supernet"
        assert t.user_attrs[record.BACKBONE_BUILD] == task.backbone_build
    assert study.user_attrs["fingerprint_parts"]["objective"] == "supernet"
    assert study.user_attrs["config"]["supernet"]["epochs"] == 2.0
    (tmp_path / "bad.toml").write_text('objective = "supernet"\n[supernet]\nsampling = "greedy"\n')
    assert main(["--study", "bad.toml", "--no-progress"]) == 2
    assert not (tmp_path / "studies" / "bad.db").exists()


def first_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: SupernetTask, name: str, n_trials: int
) -> list[str]:
    """Run study ``name`` from the fixture's cache in ``tmp_path``; its command line, for the next worker."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVO_FPN_STORAGE", raising=False)
    monkeypatch.setenv("EVO_FPN_CACHE", str(task.store.cache_dir))
    (tmp_path / f"{name}.toml").write_text(tiny_study(n_trials=n_trials))
    args = ["--study", f"{name}.toml", "--no-progress", "--device", "cpu", "--threads", "1"]
    assert main(args) == 0
    return args


def forget_published_builds(tmp_path: Path, name: str) -> None:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'studies' / f'{name}.db'}")
    assert set(study.user_attrs[caches.ATTR]) == {"stage", "supernet"}
    study.set_user_attr(caches.ATTR, {})


def test_a_worker_with_an_empty_cache_fetches_the_studys_builds_instead_of_training_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], task: SupernetTask
) -> None:
    """Issue 29: two workers with separate $EVO_FPN_CACHE folders join one study; the stage and
    the supernet are trained once, by the first, and the second uses exactly that build."""
    args = first_worker(tmp_path, monkeypatch, task, "shared", n_trials=2)
    assert "stored this worker's cache files" in capsys.readouterr().err
    fresh = tmp_path / "second-machine"
    monkeypatch.setenv("EVO_FPN_CACHE", str(fresh))

    def never(*_: object, **__: object) -> None:
        raise AssertionError("the second worker trained its own build")

    monkeypatch.setattr(features_module, "build_stage", never)
    monkeypatch.setattr(supernet_training, "train_supernet", never)
    assert main([*args, "--n-trials", "4"]) == 0
    err = capsys.readouterr().err
    assert err.count("fetching the study's") == 2 and "no backbone stage" not in err
    for path in (task.store.cache_path(), task.cache_path()):
        copy = fresh / path.name
        assert copy.read_bytes() == path.read_bytes() and damage(copy) is None
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 'studies' / 'shared.db'}")
    assert [t.user_attrs[record.BACKBONE_BUILD] for t in study.trials] == [task.backbone_build] * 4
    other = tmp_path / "third-machine"  # an unreadable artifact store is one line, before any build
    monkeypatch.setenv("EVO_FPN_CACHE", str(other))
    assert main([*args, "--n-trials", "5", "--artifacts", str(tmp_path / "nowhere")]) == 2
    assert "cannot read" in capsys.readouterr().err and not (other / task.store.cache_path().name).exists()


def test_a_worker_on_another_build_of_the_backbone_stage_is_warned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], task: SupernetTask
) -> None:
    """A second machine trains the same stage configuration into other weights; its worker
    joins the study, says so in one line, and records its own build on its trials."""
    args = first_worker(tmp_path, monkeypatch, task, "mixed", n_trials=2)
    assert "another build" not in capsys.readouterr().err
    forget_published_builds(tmp_path, "mixed")  # a study from before builds were stored with it
    other = tmp_path / "other-machine"
    other.mkdir()
    for path in task.store.cache_dir.iterdir():  # the same files, but another backbone
        if path.is_file() and not path.name.startswith("."):
            (other / path.name).write_bytes(path.read_bytes())
        elif path.is_dir():
            (other / path.name).symlink_to(path)
    stage = other / task.store.cache_path().name
    blob = torch.load(stage, map_location="cpu", weights_only=True)
    first = next(k for k, v in blob["backbone"].items() if v.is_floating_point())
    blob["backbone"][first] = blob["backbone"][first] + 1e-3
    torch.save(blob, stage)
    checksum_path(stage).write_text(file_digest(stage))  # a stage built there, not a damaged copy
    monkeypatch.setenv("EVO_FPN_CACHE", str(other))
    assert main([*args, "--n-trials", "3"]) == 0
    err = capsys.readouterr().err
    rebuilt = SupernetTask(TINY, SpaceConfig(), TINY_NET, device="cpu", progress=False, cache_dir=other).prepare()
    assert rebuilt.backbone_build != task.backbone_build
    warning = [line for line in err.splitlines() if "another build" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: 2 finished trial(s)")
    assert task.backbone_build in warning[0] and rebuilt.backbone_build in warning[0]
    study = optuna.load_study(study_name="mixed", storage=f"sqlite:///{tmp_path / 'studies' / 'mixed.db'}")
    builds = [t.user_attrs[record.BACKBONE_BUILD] for t in study.trials]
    assert builds == [task.backbone_build] * 2 + [rebuilt.backbone_build]


def test_a_worker_without_the_stage_is_warned_before_it_trains_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], task: SupernetTask
) -> None:
    """A new machine joining a study would spend its first tens of minutes building a stage
    whose features differ from the study's: it says so before it starts, naming the study's
    build and the file to copy, and the study is left as it was."""
    args = first_worker(tmp_path, monkeypatch, task, "joined", n_trials=1)
    assert "no backbone stage" not in capsys.readouterr().err  # it had the stage
    forget_published_builds(tmp_path, "joined")  # a study from before builds were stored with it
    fresh = tmp_path / "new-machine"
    fresh.mkdir()
    for path in task.store.cache_dir.iterdir():  # the dataset, but no stage
        if path.is_dir():
            (fresh / path.name).symlink_to(path)
    monkeypatch.setenv("EVO_FPN_CACHE", str(fresh))

    def stopped(*_: object, **__: object) -> None:
        raise KeyboardInterrupt  # the user's Ctrl-C on reading the warning

    monkeypatch.setattr(features_module, "build_stage", stopped)
    assert main([*args, "--n-trials", "2"]) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "interrupted"
    warning = [line for line in err if "no backbone stage" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ")
    assert task.backbone_build in warning[0] and task.store.cache_path().name in warning[0]
    study = optuna.load_study(study_name="joined", storage=f"sqlite:///{tmp_path / 'studies' / 'joined.db'}")
    assert len(study.trials) == 1 and study.user_attrs["n_trials"] == 1  # nothing written


@pytest.mark.slow  # ~50 s: two workers build the features and the supernet
@pytest.mark.postgres
def test_two_workers_on_postgresql_train_the_supernet_once_and_both_score_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    cache = tmp_path / "cache"  # fresh: the backbone features and the supernet are built by the workers
    monkeypatch.setenv("EVO_FPN_CACHE", str(cache))
    monkeypatch.delenv("EVO_FPN_STORAGE", raising=False)
    (tmp_path / "shared.toml").write_text(tiny_study(n_trials=6))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--study", "shared.toml", "--storage", pg_url, "--device", "cpu", "--threads", "1", "--no-progress"]
    procs = [
        subprocess.Popen([sys.executable, "-m", "evo_fpn.run", *args, "--worker-index", str(i)], cwd=tmp_path,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in (0, 1)
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    files = sorted(cache.glob("supernet-*.pt"))
    assert len(files) == 1  # one supernet for the two workers
    blob = torch.load(files[0], map_location="cpu", weights_only=True)
    study = optuna.load_study(study_name="shared", storage=pg_url)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 6
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2 and blob["meta"]["trained_by"] in workers  # one of them trained it, both scored
    task = SupernetTask(TINY, SpaceConfig(), TINY_NET, device="cpu", progress=False, cache_dir=cache).prepare()
    assert task.cache_path() == files[0]
    for t in trials:
        assert t.value == task.evaluate(ArchSpec.from_json(t.user_attrs[record.SPEC]))["ap"]
