"""The benchmarks' fixed inputs: what the fidelity and noise figures of docs/benchmarks/ rest on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmarks.bench_fidelity as fid
from benchmarks.bench_fidelity import REFERENCES, reference_config
from benchmarks.bench_fidelity import main as fidelity_main
from benchmarks.bench_proxy import architectures, main, summarize_noise
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.tasks.proxy import PRESETS


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_fidelity_references_are_end_to_end_on_at_least_4x_the_default_proxys_images(name: str) -> None:
    proxy, ref = PRESETS["default"], REFERENCES[name]
    assert reference_config(proxy, name) is ref
    assert ref.backbone_mode == "end_to_end"
    assert ref.digits_train >= 4 * proxy.digits_train
    assert (ref.digits_val, ref.image_size, ref.digits_seed) == (proxy.digits_val, proxy.image_size, proxy.digits_seed)
    # ^ the same val images, so proxy and reference APs score the same thing


def test_fixed_references_do_not_move() -> None:
    # Their finished runs (results/fidelity_reference.jsonl) are keyed by these fingerprints; a
    # change to ProxyConfig's defaults must not silently start a new, empty reference. They moved
    # once on purpose, to 1 repeat with the default preset (the cells issue).
    fingerprints = {name: ref.fingerprint() for name, ref in REFERENCES.items()}
    assert fingerprints == {
        "adamw": "7b4040b9f6b6c7f1",
        "adamw-4ep": "119c7390dc0ed46d",
        "adamw-8ep": "8a67c982bbc7da89",
        "sgd": "f54731e3bc5a4d1f",
    }


def test_custom_reference_scales_the_proxys_images() -> None:
    ref = reference_config(PRESETS["quick"], scale=3, epochs=1.0)
    assert (ref.digits_train, ref.epochs, ref.backbone_mode) == (3 * PRESETS["quick"].digits_train, 1.0, "end_to_end")


def test_benchmark_architectures_are_distinct_and_seeded() -> None:
    archs = architectures(5)
    assert list(archs)[:3] == ["published", "fpn", "torchvision_fpn"]
    specs = [a for a in archs.values() if isinstance(a, ArchSpec)]
    assert len({s.canonical_hash() for s in specs}) == len(specs) == 7
    assert list(architectures(5)) == list(archs)


@pytest.mark.parametrize("shard", ["2/2", "1", "a/b", "-1/2"])
def test_bad_shard_is_a_usage_error(shard: str) -> None:
    for bench in (main, fidelity_main):
        with pytest.raises(SystemExit) as exc:
            bench(["--shard", shard])
        assert exc.value.code == 2


def test_bad_proxy_seeds_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        fidelity_main(["--report", "--proxy-seeds", "0"])
    assert exc.value.code == 2


def test_fidelity_report_ranks_the_mean_of_the_proxy_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fid, "RESULTS", tmp_path)
    monkeypatch.setattr(fid, "RECORDS", tmp_path)
    names = list(architectures(2))
    proxy_fp, ref_fp = PRESETS["default"].replace(seeds=1).fingerprint(), REFERENCES["adamw"].fingerprint()
    # Seed 0 alone ranks the 5 architectures backwards; the mean of seeds 0 and 1 ranks them
    # as the reference does. The last architecture lacks seed 1, so the mean leaves it out.
    proxy = [(n, 0, 0.5 - 0.1 * i) for i, n in enumerate(names)]
    proxy += [(n, 1, 0.3 * i) for i, n in enumerate(names[:-1])]
    with (tmp_path / "proxy_trials.jsonl").open("w") as f:
        for n, seed, ap in proxy:
            f.write(json.dumps({"fingerprint": proxy_fp, "arch": n, "seed": seed, "ap": ap}) + "\n")
    with (tmp_path / "fidelity_reference.jsonl").open("w") as f:
        for i, n in enumerate(names):
            f.write(json.dumps({"fingerprint": ref_fp, "arch": n, "seed": 0, "ap": 0.01 * i}) + "\n")

    assert fidelity_main(["--report", "--random", "2", "--reference", "adamw", "--proxy-seeds", "1"]) == 0
    one = json.loads((tmp_path / "bench_fidelity_default_adamw.json").read_text())
    assert one["tau"] == pytest.approx(-1.0) and len(one["rows"]) == 5
    assert PRESETS["default"].seeds == 2  # so the preset's own score is the mean of seeds 0 and 1
    assert fidelity_main(["--report", "--random", "2", "--reference", "adamw"]) == 0
    two = json.loads((tmp_path / "bench_fidelity_default_adamw_2seeds.json").read_text())
    assert [r[0] for r in two["rows"]] == names[:-1]
    assert two["rows"][1][1] == pytest.approx((0.4 + 0.3) / 2)
    assert two["tau"] == pytest.approx(1.0)
    assert "mean over seeds 0..1" in capsys.readouterr().out


def test_noise_scores_trials_as_the_mean_of_their_seeds() -> None:
    # Two seeds per trial: trial t of "a" is the mean of seeds 2t and 2t+1; "b" has trial 0 only.
    seed_ap = {("a", 0): 0.10, ("a", 1): 0.20, ("a", 2): 0.12, ("a", 3): 0.14, ("a", 4): 0.30, ("b", 0): 0.5}
    done = {key: {"ap": ap} for key, ap in seed_ap.items()}
    noise = summarize_noise(done, ["a", "b"], "a", trials=3, seeds=2)
    assert noise["trial_aps"] == pytest.approx([0.15, 0.13])  # trial 2 lacks seed 5: left out
    assert noise["ap_by_arch"] == {"a": pytest.approx(0.15)}  # b lacks seed 1
    assert noise["trial_std"] == pytest.approx(0.02**0.5 * 0.1)
    assert noise["seed_aps"] == [0.10, 0.20, 0.12, 0.14, 0.30]
    # pooled over the architectures with both seeds (only "a"): var(0.10, 0.20) = 0.005
    assert noise["pooled_seed_std"] == pytest.approx(0.005**0.5)
    assert noise["pooled_trial_std"] == pytest.approx(0.005**0.5 / 2**0.5)


def test_pooled_noise_and_its_signal_to_noise_come_from_every_architectures_own_seeds() -> None:
    seed_ap = {("a", 0): 0.10, ("a", 1): 0.14, ("b", 0): 0.30, ("b", 1): 0.32, ("c", 0): 0.2}
    done = {key: {"ap": ap} for key, ap in seed_ap.items()}
    noise = summarize_noise(done, ["a", "b", "c"], "a", trials=1, seeds=2)
    pooled = ((0.0008 + 0.0002) / 2) ** 0.5  # var(0.10, 0.14) = 0.0008, var(0.30, 0.32) = 0.0002
    assert noise["pooled_seed_std"] == pytest.approx(pooled)
    spread = 0.095  # pstdev of the means 0.12 and 0.31 ("c" lacks seed 1)
    assert noise["arch_std"] == pytest.approx(spread)
    assert noise["snr_pooled"] == pytest.approx(spread / (pooled / 2**0.5))


def test_cells_report_prints_the_recorded_rows_as_one_json_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import bench_cells

    records = tmp_path / "cells.jsonl"
    rows = [("default", "published", 0, 0.20), ("default", "published", 1, 0.22), ("none", "fpn", 0, 0.3)]
    with records.open("w") as f:
        for setting, arch, seed, ap in rows:
            config = bench_cells.config_for("proxy", setting)
            rec = {"fingerprint": config.fingerprint(), "config": config.to_dict(), "mode": "proxy",
                   "setting": setting, "arch": arch, "seed": seed, "ap": ap,
                   "ap50": 2 * ap, "neck_flops": 1000, "neck_params": 10, "train_seconds": 5.0,
                   "threads": 1}  # fmt: skip
            f.write(json.dumps(rec) + "\n")
        stale = {**rec, "config": {**rec["config"], "epochs": 3.0}, "seed": 7}  # trained something else
        f.write(json.dumps(stale) + "\n")
    assert bench_cells.main(["--report", "--json", "--records", str(records)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["setting"], r["arch"], r["seeds"]) for r in out] == [("default", "published", 2), ("none", "fpn", 1)]
    first = out[0]
    assert first["mode"] == "proxy" and first["ap_mean"] == pytest.approx(0.21) and first["neck_flops"] == 1000
    assert first["ap_std"] == pytest.approx(0.01414, abs=1e-4) and out[1]["ap_std"] is None

    # --list names exactly the runs these records lack (the stale one counts for nothing), per shard
    argv = [
        "--settings",
        "default,none",
        "--archs",
        "published,fpn",
        "--seeds",
        "2",
        "--list",
        "--records",
        str(records),
    ]
    assert bench_cells.main(argv) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert listed == [
        ["proxy", "default", "fpn", "seed", "0"],
        ["proxy", "none", "published", "seed", "0"],
        ["proxy", "default", "fpn", "seed", "1"],
        ["proxy", "none", "published", "seed", "1"],
        ["proxy", "none", "fpn", "seed", "1"],
    ]
    assert bench_cells.main([*argv, "--shard", "1/2"]) == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == listed[1::2]
    assert len(records.read_text().splitlines()) == 4  # nothing trained, nothing written


def test_cells_records_without_a_config_land_in_the_row_of_what_they_trained(tmp_path: Path) -> None:
    # Records written before the default became 1 repeat name the setting of their day: "default"
    # then meant 3 repeats, "repeats1" what is now the default. Unknown fingerprints are stale.
    from benchmarks import bench_cells
    from benchmarks.bench_fidelity import REFERENCES

    old_default = PRESETS["default"].replace(seeds=1, repeats=3)
    base = {"ap50": 0.4, "neck_flops": 1, "neck_params": 1, "train_seconds": 1.0, "threads": 1, "seed": 0}
    records = [
        {**base, "mode": "proxy", "setting": "default", "changes": {}, "arch": "published", "ap": 0.17,
         "fingerprint": old_default.fingerprint()},
        {**base, "mode": "proxy", "setting": "repeats1", "changes": {"repeats": 1}, "arch": "published", "ap": 0.25,
         "fingerprint": old_default.replace(repeats=1).fingerprint()},
        {**base, "mode": "reference", "setting": "default", "changes": {}, "arch": "torchvision_fpn", "ap": 0.5,
         "fingerprint": REFERENCES["adamw-8ep"].replace(repeats=3).fingerprint()},
        {**base, "mode": "proxy", "setting": "default", "changes": {}, "arch": "fpn", "ap": 0.9,
         "fingerprint": "0" * 16},
    ]  # fmt: skip
    rows = {(r["mode"], r["setting"], r["arch"]): r["ap_mean"] for r in bench_cells.summarise(records)}
    assert rows == {
        ("proxy", "default", "published"): 0.25,
        ("proxy", "repeats3", "published"): 0.17,
        ("reference", "default", "torchvision_fpn"): 0.5,  # its repeats never mattered
    }
    assert bench_cells.done_keys(records) == {
        (bench_cells.run_key(bench_cells.config_for(m, s), a), a, 0)
        for m, s, a in [("proxy", "default", "published"), ("proxy", "repeats3", "published"),
                        ("reference", "default", "torchvision_fpn")]
    }  # fmt: skip


def test_cells_settings_run_only_where_they_change_the_network() -> None:
    from benchmarks.bench_cells import applies

    assert applies("torchvision_fpn", "default") and applies("torchvision_fpn", "group")
    assert applies("torchvision_fpn", "fpn_batch") and not applies("published", "fpn_batch")
    for setting in ("none", "repeats3", "anytime", "bn_recal"):  # torchvision's FPN: no norm, no repeats
        assert not applies("torchvision_fpn", setting) and applies("published", setting)


def test_supernet_report_ranks_each_lever_against_the_recorded_proxy_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from scipy.stats import kendalltau

    from benchmarks import bench_supernet as bs
    from benchmarks.bench_proxy import seed_config

    monkeypatch.setattr(bs, "RECORDS", tmp_path)
    names = list(bs.space_archs())[:6]
    seed0, seed1 = [0.10, 0.30, 0.20, 0.40, 0.25, 0.35], [0.12, 0.28, 0.22, 0.41, 0.20, 0.30]
    fingerprint = seed_config(PRESETS["default"]).fingerprint()
    with (tmp_path / "proxy_trials.jsonl").open("w") as f:
        for i, n in enumerate(names):
            f.write(json.dumps({"fingerprint": fingerprint, "arch": n, "seed": 0, "ap": seed0[i]}) + "\n")
            if i < 5:  # the last architecture lacks seed 1: in the seed-0 column only
                f.write(json.dumps({"fingerprint": fingerprint, "arch": n, "seed": 1, "ap": seed1[i]}) + "\n")
    key, recal, finetune, _ = bs.scoring(bs.lever_task("default", progress=False))
    supernet_ap = [0.01, 0.05, 0.02, 0.04, 0.03, 0.06]
    records = tmp_path / "supernet.jsonl"
    with records.open("w") as f:
        for i, n in enumerate(names):
            rec = {"lever": "default", "supernet_key": key, "recal_batches": recal, "finetune_steps": finetune,
                   "checkpoint": "48", "supernet_seconds": 600.0, "arch": n, "ap": supernet_ap[i],
                   "eval_seconds": 2.0 + i}  # fmt: skip
            f.write(json.dumps(rec) + "\n")
            f.write(json.dumps({**rec, "recal_batches": recal + 1, "ap": 0.9}) + "\n")  # scored otherwise: not shown
    assert bs.main(["--report", "--json", "--records", str(records)]) == 0
    rows = {r["lever"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"default", "recal0", "shipped"}  # recal0 is the default since issue 31: the same records
    row = rows["default"]
    assert rows["recal0"] == {**row, "lever": "recal0"}
    assert rows["shipped"]["tau_proxy"] == row["tau_proxy"] and rows["shipped"]["commit"]
    mean = [(a + b) / 2 for a, b in zip(seed0[:5], seed1[:5], strict=True)]
    assert row["lever"] == "default" and row["archs"] == 6 and row["n_proxy"] == 5 and row["n_seed0"] == 6
    assert row["tau_proxy"] == pytest.approx(kendalltau(supernet_ap[:5], mean).statistic)
    assert row["tau_seed0"] == pytest.approx(kendalltau(supernet_ap, seed0).statistic)
    assert row["seconds_per_trial"] == 4.5 and row["supernet_minutes"] == 10.0 and row["tau_reference"] is None
    assert bs.seed_agreement() == {"tau_seed0_seed1": pytest.approx(kendalltau(seed0[:5], seed1[:5]).statistic), "n": 5}


def test_torchvision_fpn_trains_the_same_detector_at_any_repeats() -> None:
    """Why ``load_references`` lets torchvision FPN's run at another ``repeats`` stand for the
    reference's: the same seed builds the same weights and gives the same losses."""
    import torch

    one = REFERENCES["adamw-8ep"]
    three = one.replace(repeats=3)
    assert one.fingerprint() != three.fingerprint()
    images = torch.randint(0, 256, (2, 3, one.image_size, one.image_size), dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([3])}] * 2
    models, losses = [], []
    for config in (one, three):
        torch.manual_seed(0)
        model = config.build_detector("torchvision_fpn", num_classes=10, with_backbone=True).train()
        models.append(model.state_dict())
        losses.append(model(images, targets))
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    assert losses[0].keys() == losses[1].keys()
    assert all(torch.equal(losses[0][k], losses[1][k]) for k in losses[0])


def test_references_include_bench_cells_rows_and_torchvision_fpn_at_other_repeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fid, "RECORDS", tmp_path)
    ref = REFERENCES["adamw-8ep"]
    own, three = ref.fingerprint(), ref.replace(repeats=3).fingerprint()
    rows = [
        ("cells.jsonl", own, "published", 0.48),
        ("cells.jsonl", three, "torchvision_fpn", 0.54),
        ("cells.jsonl", three, "fpn", 0.24),  # FPN-like at 3 repeats is another network: left out
        ("fidelity_reference.jsonl", own, "random1-x", 0.30),
        ("fidelity_reference.jsonl", REFERENCES["adamw"].fingerprint(), "random2-y", 0.10),
    ]
    for name, fingerprint, arch, ap in rows:
        with (tmp_path / name).open("a") as f:
            f.write(json.dumps({"fingerprint": fingerprint, "arch": arch, "seed": 0, "ap": ap}) + "\n")
    done = fid.load_references(ref)
    assert {k: v["ap"] for k, v in done.items()} == {
        ("published", 0): 0.48,
        ("torchvision_fpn", 0): 0.54,
        ("random1-x", 0): 0.30,
    }
    with (tmp_path / "fidelity_reference.jsonl").open("a") as f:  # its own repeats win
        f.write(json.dumps({"fingerprint": own, "arch": "torchvision_fpn", "seed": 0, "ap": 0.5}) + "\n")
    assert fid.load_references(ref)[("torchvision_fpn", 0)]["ap"] == 0.5


def test_bench_payoff_reports_the_baselines_from_the_records_and_found_necks_from_theirs(tmp_path: Path) -> None:
    import json as json_module

    from benchmarks import bench_payoff

    rows = bench_payoff.rows()
    keys = {"arch", "found", "mode", "epochs", "ap_mean", "ap_std", "seeds", "neck_flops", "spec_hash"}
    assert rows and all(keys <= set(r) for r in rows)
    fpn16 = next(r for r in rows if (r["arch"], r["mode"], r["epochs"]) == ("torchvision_fpn", "reference", 16.0))
    assert fpn16["seeds"] == 2 and round(fpn16["ap_mean"], 4) == 0.7036 and fpn16["found"] is False
    found = tmp_path / "payoff.jsonl"
    lines = [
        {
            "arch": "found-1",
            "mode": "reference",
            "epochs": 16,
            "seed": s,
            "ap": ap,
            "neck_flops": 3.4e7,
            "spec_hash": "ab",
        }
        for s, ap in ((0, 0.71), (1, 0.73), (1, 0.72))  # a seed's later record wins
    ]
    found.write_text("".join(json_module.dumps(x) + "\n" for x in lines))
    (row,) = bench_payoff.found_rows(found)
    assert row["found"] is True and row["seeds"] == 2 and abs(row["ap_mean"] - 0.715) < 1e-12


def test_bench_payoff_exports_a_screens_compact_records(tmp_path: Path) -> None:
    import json as json_module

    import optuna

    from benchmarks import bench_payoff

    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="screen", storage=url, direction="maximize")
    for i in range(3):
        t = study.ask()
        t.set_user_attr("spec_hash", f"h{i}")
        t.set_user_attr("neck_flops", 1000 + i)
        study.tell(t, 0.1 * i)
    path = bench_payoff.export_screen(f"{url}:screen", tmp_path / "screens")
    recs = [json_module.loads(line) for line in path.read_text().splitlines()]
    assert [(r["number"], r["spec_hash"], r["neck_flops"]) for r in recs] == [
        (0, "h0", 1000),
        (1, "h1", 1001),
        (2, "h2", 1002),
    ]
    assert recs[2]["value"] == 0.2 and recs[0]["state"] == "COMPLETE"
