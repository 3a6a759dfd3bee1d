"""``python -m evo_fpn.train``: trains a spec end to end, saves weights + metrics, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evo_fpn.arch.spec import PUBLISHED_NASFPN
from evo_fpn.cli.train import main

TINY = [
    "--preset", "quick", "--no-progress", "--device", "cpu", "--threads", "1",
    "--set", "digits_train=24", "--set", "digits_val=8", "--set", "image_size=64",
    "--set", "digits_min_scale=8", "--set", "digits_max_scale=48", "--set", "width=16",
    "--set", "batch_size=8", "--set", "head_depth=1",
]  # fmt: skip


def test_train_spec_file_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("EVO_FPN_CACHE", str(tmp_path / "cache"))
    spec_file = tmp_path / "best.json"
    spec_file.write_text(PUBLISHED_NASFPN.to_json())
    out = tmp_path / "run"
    assert main(["--arch", str(spec_file), "--epochs", "2", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    for key in ("ap ", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"):
        assert key in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["backbone_mode"] == "end_to_end" and metrics["config"]["epochs"] == 2
    assert metrics["spec_hash"] == PUBLISHED_NASFPN.canonical_hash()
    state = torch.load(out / "model.pt", weights_only=True)
    assert any(k.startswith("backbone.") for k in state) and any(k.startswith("retina.head.") for k in state)
    assert json.loads((out / "spec.json").read_text())["cells"]


def test_user_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["--arch", str(tmp_path / "nope.json"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "neither one of" in err and err.count("\n") == 1
    bad = tmp_path / "bad.json"
    bad.write_text('{"cells": [{"level": 3}]}')
    assert main(["--arch", str(bad), *TINY]) == 2
    assert "malformed cell" in capsys.readouterr().err
    assert main(["--arch", "fpn", "--set", "nonsense=1", *TINY]) == 2
    assert "unknown proxy setting" in capsys.readouterr().err
    assert main(["--arch", "fpn", "--data", str(tmp_path / "missing"), *TINY]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--arch", "fpn", "--set", "seeds=2", *TINY]) == 2
    assert "trains and saves one model" in capsys.readouterr().err
