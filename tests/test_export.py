"""A found neck out of evo-fpn: in torchvision's detectors, as ONNX / TorchScript, with trained weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN
from evo_fpn.cli.export import main
from evo_fpn.errors import UsageError
from evo_fpn.model.backbone_with_neck import BackboneWithNeck, backbone_with_neck, load_trained
from evo_fpn.model.detector import build_detector
from evo_fpn.model.export import example_inputs, export_neck
from evo_fpn.model.neck import build_neck

ATOL = 1e-4
"""ONNX Runtime and TorchScript against PyTorch, float32 on CPU: measured differences are ~4e-6."""

IMAGES = [torch.rand(3, 64, 64), torch.rand(3, 48, 80)]
TARGETS = [
    {"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
    {"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0], [40.0, 10.0, 78.0, 44.0]]), "labels": torch.tensor([2, 1])},
]


def _neck(spec=PUBLISHED_NASFPN, channels=(128, 256, 512)):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    neck = build_neck(spec, channels, 16, 2)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is not an identity norm
        for m in neck.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return neck.eval()


def _torch_outputs(neck, inputs) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return [t.numpy() for t in neck(list(inputs)).values()]


@pytest.mark.parametrize("spec", [PUBLISHED_NASFPN, FPN_LIKE], ids=["published", "fpn"])
def test_onnx_is_valid_and_matches_pytorch(tmp_path: Path, spec) -> None:  # type: ignore[no-untyped-def]
    neck = _neck(spec)
    path = export_neck(neck, tmp_path / "neck.onnx", image_size=(96, 80), fmt="onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["c3", "c4", "c5"]
    assert [o.name for o in session.get_outputs()] == ["p3", "p4", "p5", "p6", "p7"]
    inputs = example_inputs(neck, (96, 80), batch=2, seed=1)  # another batch size than exported
    got = session.run(None, {f"c{3 + i}": x.numpy() for i, x in enumerate(inputs)})
    want = _torch_outputs(neck, inputs)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert want[0].shape == (2, 16, 12, 10) and want[-1].shape == (2, 16, 1, 1)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=0)
    assert neck.training is False and list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_torchscript_matches_pytorch(tmp_path: Path) -> None:
    neck = _neck(channels=(24, 48, 576)).train()  # the export runs in eval mode and restores the mode
    path = export_neck(neck, tmp_path / "neck.pt", image_size=64, fmt="torchscript")
    assert neck.training
    loaded = torch.jit.load(str(path))
    inputs = example_inputs(neck, 64, batch=3, seed=2)
    with torch.no_grad():
        got = [t.numpy() for t in loaded(*inputs)]
    for g, w in zip(got, _torch_outputs(neck.eval(), inputs), strict=True):
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=0)


def _train_and_predict(model: torch.nn.Module) -> None:
    model.train()
    losses = model(IMAGES, TARGETS)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    neck = model.backbone.neck
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in neck.parameters())
    model.eval()
    with torch.no_grad():
        out = model(IMAGES)
    assert len(out) == 2 and {"boxes", "scores", "labels"} <= set(out[0])


@pytest.mark.parametrize("detector", [RetinaNet, FasterRCNN])
@pytest.mark.parametrize("spec", [PUBLISHED_NASFPN, FPN_LIKE], ids=["published", "fpn"])
def test_torchvision_detectors_train_and_predict(detector, spec) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    backbone = backbone_with_neck(spec, "resnet10", width=16, repeats=1, neck_norm="group")
    with torch.no_grad():
        maps = backbone(torch.rand(1, 3, 64, 64))
    # torchvision's convention: "0".. in level order; FasterRCNN's default RoI pooler reads "0".."3".
    assert list(maps) == ["0", "1", "2", "3", "4"] and backbone.names == {"0": 3, "1": 4, "2": 5, "3": 6, "4": 7}
    assert [m.shape[-1] for m in maps.values()] == [8, 4, 2, 1, 1] and backbone.out_channels == 16
    _train_and_predict(detector(backbone, num_classes=3, min_size=64, max_size=80))


def test_fcos_with_the_found_neck() -> None:
    torch.manual_seed(0)
    backbone = backbone_with_neck("published", "resnet10", width=32, repeats=1)  # FCOS: GroupNorm(32)
    _train_and_predict(FCOS(backbone, num_classes=3, min_size=64, max_size=80))


def test_levels_pick_the_returned_maps() -> None:
    backbone = backbone_with_neck("fpn", "resnet10", width=8, repeats=1, levels=(3, 4, 5, 6)).eval()
    with torch.no_grad():
        maps = backbone(torch.rand(1, 3, 64, 64))
    assert list(maps) == ["0", "1", "2", "3"] and backbone.levels == (3, 4, 5, 6)
    with pytest.raises(ValueError, match="levels"):
        BackboneWithNeck(backbone=backbone.backbone, neck=backbone.neck, levels=(4, 3))
    with pytest.raises(UsageError, match="unknown backbone"):
        backbone_with_neck("fpn", "resnet9000")


def _trained_run(tmp_path: Path, spec=PUBLISHED_NASFPN, width: int = 16) -> Path:  # type: ignore[no-untyped-def]
    """What python -m evo_fpn.train leaves: model.pt (the Detector's state_dict) and metrics.json."""
    torch.manual_seed(1)
    config = {"backbone": "resnet10", "width": width, "repeats": 2, "neck_norm": "group", "cell_conv": "conv3x3"}
    detector = build_detector(spec, num_classes=3, image_size=64, **config)
    with torch.no_grad():
        for p in detector.parameters():
            p.add_(0.01)  # differ from a fresh build
    run = tmp_path / "run"
    run.mkdir()
    torch.save(detector.state_dict(), run / "model.pt")
    record = {"spec": spec.to_json(), "spec_hash": spec.canonical_hash(), "config": config}
    (run / "metrics.json").write_text(json.dumps(record))
    return run


def test_load_trained_takes_neck_and_backbone(tmp_path: Path) -> None:
    run = _trained_run(tmp_path)
    state = torch.load(run / "model.pt", weights_only=True)
    model = backbone_with_neck(PUBLISHED_NASFPN, "resnet10", width=16, repeats=2, neck_norm="group")
    record = load_trained(model, run)  # the run folder or its model.pt
    assert record["spec_hash"] == PUBLISHED_NASFPN.canonical_hash()
    for key, value in model.neck.state_dict().items():
        assert torch.equal(value, state[f"retina.backbone.{key}"])
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[f"backbone.{key}"])


def test_load_trained_with_the_wrong_spec_names_both_hashes(tmp_path: Path) -> None:
    run = _trained_run(tmp_path)
    # Same cell count: the state_dicts would load without a complaint; only the record tells.
    model = backbone_with_neck(FPN_LIKE, "resnet10", width=16, repeats=2, neck_norm="group")
    with pytest.raises(UsageError) as err:
        load_trained(model, run / "model.pt")
    message = str(err.value)
    assert PUBLISHED_NASFPN.canonical_hash() in message and FPN_LIKE.canonical_hash() in message
    assert "\n" not in message
    wide = backbone_with_neck(PUBLISHED_NASFPN, "resnet10", width=32, repeats=2, neck_norm="group")
    with pytest.raises(UsageError, match=r"do not fit this neck .*width 16") as err:
        load_trained(wide, run)
    assert "\n" not in str(err.value)
    (run / "metrics.json").unlink()
    with pytest.raises(UsageError, match="cannot tell which spec"):
        load_trained(model, run)


def test_cli_writes_onnx_and_torchscript(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "neck.onnx"
    args = ["fpn", "--backbone", "mobilenet_v3_small", "--width", "8", "--repeats", "1", "--image-size", "64"]
    assert main([*args, "--format", "onnx", "--out", str(out)]) == 0
    onnx.checker.check_model(onnx.load(str(out)))
    printed = capsys.readouterr().out
    assert "c3 (1, 24, 8, 8)" in printed and FPN_LIKE.canonical_hash() in printed
    assert main([*args, "--out", str(tmp_path / "neck.pt")]) == 0  # the format from the suffix
    assert torch.jit.load(str(tmp_path / "neck.pt"))(*example_inputs(build_neck("fpn", (24, 48, 576), 8, 1), 64))


def test_cli_exports_trained_weights(tmp_path: Path) -> None:
    run = _trained_run(tmp_path)
    out = tmp_path / "trained.onnx"
    # backbone, width, repeats and norm come from the run
    assert (
        main([str(run / "metrics.json"), "--weights", str(run / "model.pt"), "--out", str(out), "--image-size", "64"])
        == 0
    )
    neck = build_neck(PUBLISHED_NASFPN, (128, 256, 512), 16, 2)  # BatchNorm: the run's GroupNorm must replace it
    with pytest.raises(UsageError, match="do not fit"):
        load_trained(neck, run)
    detector = build_detector(PUBLISHED_NASFPN, num_classes=3, image_size=64, backbone="resnet10", width=16,
                              repeats=2, neck_norm="group")  # fmt: skip
    load_trained(detector.neck, run)
    inputs = example_inputs(detector.neck, 64)
    got = ort.InferenceSession(str(out)).run(None, {f"c{3 + i}": x.numpy() for i, x in enumerate(inputs)})
    for g, w in zip(got, _torch_outputs(detector.neck.eval(), inputs), strict=True):
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["missing.json", "--backbone", "resnet18"], "cannot read spec file"),
        (["published", "--backbone", "resnet9000"], "unknown backbone"),
        (["published"], "pass --backbone"),
        (["published", "--backbone", "resnet18", "--width", "0"], "--width: expected a positive integer"),
        (["published", "--backbone", "resnet18", "--width", "wide"], "--width: expected a positive integer"),
        (["published", "--backbone", "resnet18", "--image-size", "0"], "--image-size"),
        (["published", "--backbone", "resnet18", "--format", "tflite"], "--format"),
        (["published", "--backbone", "resnet18", "--weights", "nowhere/model.pt"], "not found"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys, args, says) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "neck.onnx"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("out", "says"),
    [(".", "is a folder"), ("missing/neck.onnx", "does not exist"), ("neck.tflite", "cannot tell the format")],
)
def test_cli_bad_out_is_one_line_and_writes_nothing(tmp_path: Path, capsys, out, says) -> None:  # type: ignore[no-untyped-def]
    assert main(["published", "--backbone", "resnet18", "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_cli_weights_of_another_spec_is_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = _trained_run(tmp_path)
    out = tmp_path / "neck.onnx"
    assert main(["fpn", "--weights", str(run / "model.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and PUBLISHED_NASFPN.canonical_hash() in err and FPN_LIKE.canonical_hash() in err
    assert not out.exists()
