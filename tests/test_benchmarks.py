"""The benchmarks' fixed inputs: what the README's fidelity and noise figures rest on."""

from __future__ import annotations

import pytest

from benchmarks.bench_fidelity import REFERENCES, reference_config
from benchmarks.bench_fidelity import main as fidelity_main
from benchmarks.bench_proxy import architectures, main
from evo_fpn.proxy import PRESETS
from evo_fpn.spec import ArchSpec


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
    # change to ProxyConfig's defaults must not silently start a new, empty reference.
    fingerprints = {name: ref.fingerprint() for name, ref in REFERENCES.items()}
    assert fingerprints == {"adamw": "78da16709026c913", "adamw-4ep": "bf3c397ebb1412d6", "sgd": "e6277b56d2cc0094"}


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
