"""``python -m evo_fpn.inspect``: table, hash, cost; JSON output; one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN
from evo_fpn.cli.inspect import main
from evo_fpn.model.cost import neck_cost


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_published_defaults_are_the_paper_r50_7at256(capsys):
    code, out, err = run_main(capsys, "published")
    assert code == 0 and err == ""
    cost = neck_cost(PUBLISHED_NASFPN, "resnet50", 256, 7, 640)
    assert PUBLISHED_NASFPN.table() in out
    assert f"canonical hash     {PUBLISHED_NASFPN.canonical_hash()}" in out
    assert "7@256 on resnet50 (C3..C5 = 512/1024/2048)" in out
    assert "7 per repeat" in out
    assert f"{cost['neck_params']:,}" in out
    assert f"{cost['neck_flops'] / 1e9:.4g} G per image at 640x640" in out


def test_json_output_has_the_contract_keys(capsys):
    code, out, _ = run_main(
        capsys,
        "fpn",
        "--backbone",
        "resnet18",
        "--channels",
        "64",
        "--repeats",
        "3",
        "--image-size",
        "100x75",
        "--json",
    )
    assert code == 0
    info = json.loads(out)  # one JSON object, nothing else on stdout
    cost = neck_cost(FPN_LIKE, "resnet18", 64, 3, (100, 75))
    assert info["hash"] == FPN_LIKE.canonical_hash()
    assert info["cells"] == FPN_LIKE.to_dict()["cells"]
    assert (info["neck_params"], info["neck_flops"]) == (cost["neck_params"], cost["neck_flops"])
    assert info["in_channels"] == [128, 256, 512] and info["image_size"] == [100, 75]


def test_spec_files_in_every_form(capsys, tmp_path):
    as_spec = tmp_path / "mine.json"
    as_spec.write_text(PUBLISHED_NASFPN.to_json(indent=2))
    as_string = tmp_path / "attr.json"
    as_string.write_text(json.dumps(PUBLISHED_NASFPN.to_json()))  # the trial's "spec" user attr, as stored
    as_params = tmp_path / "params.json"
    as_params.write_text(json.dumps(NasFpnSpace().encode(PUBLISHED_NASFPN)))
    for path in (as_spec, as_string, as_params):
        code, out, _ = run_main(capsys, str(path), "--backbone", "128,256,512", "--repeats", "1", "--json")
        assert code == 0
        info = json.loads(out)
        assert info["hash"] == PUBLISHED_NASFPN.canonical_hash()
        assert info["in_channels"] == [128, 256, 512]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/no/such/spec.json"], "cannot read spec file"),
        (["{path}", "--channels", "0"], "--channels"),
        (["published", "--repeats", "two"], "--repeats"),
        (["published", "--image-size", "0"], "--image-size"),
        (["published", "--image-size", "64x"], "--image-size"),
        (["published", "--backbone", "vgg16"], "unknown backbone"),
        (["published", "--backbone", "1,2"], "unknown backbone"),
        (["published", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(capsys, tmp_path, argv, message):
    path = tmp_path / "ok.json"
    path.write_text(PUBLISHED_NASFPN.to_json())
    code, out, err = run_main(capsys, *(a.format(path=path) for a in argv))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"cells": 3}', "malformed"),
        ("[]", "'cells' list"),
        (PUBLISHED_NASFPN.to_json().replace('"inputs": [1, 5]', '"inputs": [5, 5]'), "distinct"),
        (PUBLISHED_NASFPN.to_json().replace('"global_pool"', '"attention"', 1), "unknown op"),
    ],
)
def test_malformed_specs_give_one_line_and_exit_2(capsys, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, out, err = run_main(capsys, str(path))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_module_runs_as_a_command(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "evo_fpn.inspect", "published", "--json"], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["hash"] == PUBLISHED_NASFPN.canonical_hash()
    bad = tmp_path / "bad.json"
    bad.write_text('{"cells": [')
    fail = subprocess.run(
        [sys.executable, "-m", "evo_fpn.inspect", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert fail.returncode == 2 and "Traceback" not in fail.stderr
    assert fail.stderr.startswith("error: ") and fail.stderr.count("\n") == 1
