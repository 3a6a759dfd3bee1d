"""Damaged cache files are never used: the corruption drill.

A cache file (the backbone stage, the supernet) carries its SHA-256 beside it; a flipped
byte, a truncated or empty file is moved aside and rebuilt under the lock, and the rebuilt
stage and supernet score exactly what the intact files scored.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_proxy import TINY
from test_supernet import TINY_NET

from evo_fpn.arch.space import SpaceConfig
from evo_fpn.arch.spec import PUBLISHED_NASFPN
from evo_fpn.tasks.supernet import SupernetTask
from evo_fpn.training.cache import DAMAGED_SUFFIX, checksum_path, damage, load_verified


def built(calls: list[int]):  # type: ignore[no-untyped-def]
    def build() -> dict:
        calls.append(1)
        return {"weights": torch.arange(4096, dtype=torch.float32), "meta": {"n": len(calls)}}

    return build


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("harm", "reason"),
    [
        (lambda p: flip(p, p.stat().st_size // 2), "SHA-256"),  # a flipped byte inside the tensor data
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3]), "SHA-256"),  # a truncated copy
        (lambda p: p.write_bytes(b""), "empty file"),
    ],
)
def test_a_damaged_file_is_moved_aside_and_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture, harm, reason: str
) -> None:
    path, calls = tmp_path / "stage.pt", []
    first = load_verified(path, built(calls), what="backbone stage")
    assert calls == [1] and checksum_path(path).is_file() and damage(path) is None
    harm(path)
    assert reason in (damage(path) or "")
    again = load_verified(path, built(calls), what="backbone stage")
    assert calls == [1, 1] and torch.equal(again["weights"], first["weights"]) and damage(path) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {path}: damaged backbone stage ({reason}")
    assert (tmp_path / f"stage.pt{DAMAGED_SUFFIX}").is_file()  # kept for a post-mortem, never read


def test_an_intact_file_is_loaded_not_rebuilt_and_an_old_one_without_checksum_is_adopted(tmp_path: Path) -> None:
    path, calls = tmp_path / "stage.pt", []
    load_verified(path, built(calls), what="supernet")
    load_verified(path, built(calls), what="supernet")
    assert calls == [1]
    checksum_path(path).unlink()  # as written before checksums
    assert load_verified(path, built(calls), what="supernet")["meta"] == {"n": 1} and calls == [1]
    assert checksum_path(path).is_file() and damage(path) is None
    path.write_bytes(b"not a torch file")  # an old file that does not load is rebuilt, not adopted
    checksum_path(path).unlink()
    assert load_verified(path, built(calls), what="supernet")["meta"] == {"n": 2}


def test_corruption_drill_on_the_real_stage_and_supernet_scores_exactly_as_intact(tmp_path: Path) -> None:
    torch.set_num_threads(1)

    def score() -> dict:
        task = SupernetTask(TINY, SpaceConfig(), TINY_NET, device="cpu", progress=False, cache_dir=tmp_path)
        return task.prepare().evaluate(PUBLISHED_NASFPN)

    intact = score()
    task = SupernetTask(TINY, SpaceConfig(), TINY_NET, device="cpu", progress=False, cache_dir=tmp_path)
    stage, supernet = task.store.cache_path(), task.cache_path()
    for path in (stage, supernet):
        flip(path, path.stat().st_size // 2)
        assert damage(path) is not None
    again = score()
    assert damage(stage) is None and damage(supernet) is None
    assert again["ap"] == intact["ap"] and again["ap50"] == intact["ap50"]
