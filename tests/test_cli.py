"""The command-line pieces every entry point shares: the parser, ``--set``, the spec loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN, SpecError
from evo_fpn.cli import common as cli
from evo_fpn.cli.common import ArgumentParser, UsageError, load_arch, parse_sets


def test_a_bad_flag_is_a_usage_error_naming_the_command() -> None:
    p = ArgumentParser(prog="python -m evo_fpn.x")
    p.add_argument("--n", type=int)
    with pytest.raises(UsageError, match=r"unrecognized arguments: --bogus \(see python -m evo_fpn.x --help\)"):
        p.parse_args(["--bogus"])
    with pytest.raises(UsageError, match="invalid int value"):
        p.parse_args(["--n", "two"])


@pytest.mark.parametrize("module", ["run", "compare", "inspect", "dashboard"])
def test_every_entry_point_uses_the_one_parser(module: str) -> None:
    import importlib

    mod = importlib.import_module(f"evo_fpn.cli.{module}")
    if module == "compare":
        assert mod.main(["--bogus"]) == 2
    else:
        assert isinstance(mod.build_parser(), ArgumentParser)


def test_parse_sets_reads_toml_values_and_bare_words_as_text() -> None:
    got = parse_sets(
        ["proxy.epochs=2", "lr=0.5", "flag=true", "ops=['sum']", 'name="x y"', "neck_norm=group", "k = 3 ", "e="]
    )
    assert got == {
        "proxy.epochs": 2,
        "lr": 0.5,
        "flag": True,
        "ops": ["sum"],
        "name": "x y",
        "neck_norm": "group",
        "k": 3,
        "e": "",
    }
    assert parse_sets(["a=1", "a=2"]) == {"a": 2}
    for bad in ("nonsense", "=3"):
        with pytest.raises(UsageError, match="KEY=VALUE"):
            parse_sets([bad])


def test_load_arch_reads_every_form(tmp_path: Path) -> None:
    assert load_arch("published") is PUBLISHED_NASFPN and load_arch("fpn") is FPN_LIKE
    assert load_arch("torchvision_fpn", allow_torchvision_fpn=True) == "torchvision_fpn"
    forms = {
        "spec.json": PUBLISHED_NASFPN.to_json(indent=2),
        "attr.json": json.dumps(PUBLISHED_NASFPN.to_json()),  # the "spec" user attr, as stored
        "params.json": json.dumps(NasFpnSpace().encode(PUBLISHED_NASFPN)),
        "metrics.json": json.dumps({"ap": 0.2, "spec": PUBLISHED_NASFPN.to_json()}),  # train's record
        "trial.json": json.dumps({"number": 3, "spec": PUBLISHED_NASFPN.to_dict()}),
    }
    for name, text in forms.items():
        (tmp_path / name).write_text(text)
        spec = load_arch(str(tmp_path / name))
        assert spec == PUBLISHED_NASFPN and spec.name == Path(name).stem, name
    inline = load_arch(PUBLISHED_NASFPN.to_json())
    assert inline == PUBLISHED_NASFPN


def test_load_arch_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "best.json").write_text(FPN_LIKE.to_json())
    assert load_arch("~/best.json") == FPN_LIKE


def test_the_torchvision_name_is_the_necks() -> None:
    from evo_fpn.model.neck import FPN_NAME

    assert cli.TORCHVISION_FPN == FPN_NAME


@pytest.mark.parametrize(
    ("source", "content", "error", "needles"),
    [
        ("missing.json", None, UsageError, ["cannot read spec file", "neither one of published, fpn"]),
        ("torchvision_fpn", None, UsageError, ["torchvision's own FPN", "not a spec"]),
        ("bad.json", "{not json", SpecError, ["bad.json: not valid JSON"]),
        ("list.json", "[]", SpecError, ["list.json: spec must be a JSON object with a 'cells' list"]),
        ("cells.json", '{"cells": 3}', SpecError, ["cells.json: malformed cell"]),
        ("record.json", '{"spec": "{oops"}', SpecError, ["record.json: spec is not valid JSON"]),
        ("params.json", '{"cell0.input_i": "P9"}', SpecError, ["params.json: params miss decisions"]),
        ('{"cells": [}', None, SpecError, ["inline spec: not valid JSON"]),
        (PUBLISHED_NASFPN.to_json().replace('"global_pool"', '"attention"', 1), None, SpecError, ["unknown op"]),
    ],
)
def test_load_arch_gives_one_clear_error_per_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, content: str | None, error: type, needles: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / source).write_text(content)
    with pytest.raises(error) as exc:
        load_arch(source)
    message = str(exc.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_load_arch_names_torchvision_fpn_when_it_is_allowed() -> None:
    with pytest.raises(UsageError, match="neither one of published, fpn, torchvision_fpn"):
        load_arch("nope.json", allow_torchvision_fpn=True)
