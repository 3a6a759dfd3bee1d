"""The neck: cell semantics, sizes, gradients, equivalences, costs, torchvision compatibility."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_spec import INDEPENDENT_A, INDEPENDENT_B
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead

from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN, ArchSpec, Cell, make_spec
from evo_fpn.model.cost import backbone_feature_shapes, count_flops, count_params, neck_cost
from evo_fpn.model.neck import (
    BACKBONE_CHANNELS,
    GlobalPoolCell,
    NasFpn,
    PyramidRepeat,
    SumCell,
    TorchvisionFpn,
    build_neck,
    global_pool_merge,
    resample,
)

IN = (16, 24, 32)  # small C3..C5 channels for fast tests


def features(h: int, w: int, batch: int = 2, in_channels=IN, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(s, generator=g)
        for s in ((batch, *shape[1:]) for shape in backbone_feature_shapes(in_channels, (h, w)))
    ]


def swap_inputs(spec: ArchSpec, k: int) -> ArchSpec:
    cells = list(spec.cells)
    c = cells[k]
    cells[k] = Cell(c.level, c.op, (c.inputs[1], c.inputs[0]), c.is_output)
    return ArchSpec(tuple(cells), spec.min_level, spec.max_level).validate()


def with_op(spec: ArchSpec, k: int, op: str) -> ArchSpec:
    cells = list(spec.cells)
    c = cells[k]
    cells[k] = Cell(c.level, op, c.inputs, c.is_output)
    return ArchSpec(tuple(cells), spec.min_level, spec.max_level).validate()


# -- the ops and resampling ---------------------------------------------------------------
def test_global_pool_formula_on_a_tiny_tensor():
    coarse = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]], [[-1.0, -4.0], [-0.5, -3.0]]]])  # (1, 2, 2, 2)
    fine = torch.tensor([[[[2.0, 1.0], [0.0, -1.0]], [[4.0, 2.0], [1.0, 0.0]]]])
    s0, s1 = 1 / (1 + math.exp(-3.0)), 1 / (1 + math.exp(0.5))  # sigmoid of each channel's global MAX
    expected = torch.tensor(
        [
            [
                [[1 + 2 * s0, -2 + 1 * s0], [3 + 0 * s0, 0 - 1 * s0]],
                [[-1 + 4 * s1, -4 + 2 * s1], [-0.5 + s1, -3 + 0 * s1]],
            ]
        ]
    )
    torch.testing.assert_close(global_pool_merge(coarse, fine), expected)
    assert not torch.allclose(global_pool_merge(fine, coarse), expected)  # the roles matter


def _identity_cell(cell: nn.Module) -> nn.Module:
    """Make ReLU -> conv -> norm the identity on non-negative maps, to read the merge itself."""
    nn.init.dirac_(cell.conv.weight)
    cell.norm = nn.Identity()
    return cell


@pytest.mark.parametrize(
    ("inputs", "coarse_first"),
    [((1, 3), False), ((3, 1), True), ((1, 5), True), ((5, 1), True)],  # (P4, P6), (P6, P4), ties -> first
)
def test_global_pool_cell_uses_the_coarser_input_as_attention(inputs, coarse_first):
    spec = make_spec(
        [
            (4, "sum", (1, 2), False),  # cell0 @P4 (index 5), for the equal-level cases
            (4, "global_pool", inputs, False),
            (3, "sum", (0, 6), True),
            (4, "sum", (5, 6), True),
            (5, "sum", (2, 7), True),
            (6, "sum", (3, 8), True),
            (7, "sum", (4, 9), True),
        ]
    )
    repeat = PyramidRepeat(spec=spec, channels=2, norm_layer=nn.BatchNorm2d)
    cell = _identity_cell(repeat.cells[1])
    assert isinstance(cell, GlobalPoolCell)
    g = torch.Generator().manual_seed(1)
    sizes = {3: (8, 8), 4: (4, 4), 5: (2, 2), 6: (1, 1), 7: (1, 1)}
    nodes = [torch.rand(1, 2, *sizes[lvl], generator=g) for lvl in range(3, 8)]
    nodes.append(torch.rand(1, 2, 4, 4, generator=g))  # cell0's output
    a, b = (resample(nodes[x], sizes[4], 4 - spec.node_level(x)) for x in inputs)
    coarse, fine = (a, b) if coarse_first else (b, a)
    expected = torch.relu(coarse + fine * torch.sigmoid(coarse.amax(dim=(2, 3), keepdim=True)))
    torch.testing.assert_close(cell(nodes, sizes), expected)


def test_resample_max_pools_with_ceil_and_upsamples_nearest():
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    down = resample(x, (3, 3), 1)
    assert down.flatten().tolist() == [6, 8, 9, 16, 18, 19, 21, 23, 24]  # 2x2 windows, border kept
    assert resample(x, (2, 2), 2).flatten().tolist() == [18, 19, 23, 24]  # kernel = stride = 4
    up = resample(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), (4, 3), -1)
    assert up.shape[-2:] == (4, 3) and up[0, 0, :, 0].tolist() == [1, 1, 3, 3]
    assert resample(x, (5, 5), 0) is x
    assert resample(x, (2, 3), 1).shape[-2:] == (2, 3)  # an unusual target is still met exactly


# -- the network ---------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(100, 75), (129, 129), (64, 64), (33, 200), (1, 1)])
@pytest.mark.parametrize("arch", [PUBLISHED_NASFPN, FPN_LIKE, "torchvision_fpn"], ids=["published", "fpn", "tv_fpn"])
def test_output_shapes_for_any_input_size(arch, hw):
    neck = build_neck(arch, IN, 8, 2)
    out = neck(features(*hw))
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    assert neck.out_channels == 8
    h, w = hw
    for k, lvl in enumerate(range(3, 8)):
        expected = (math.ceil(h / 2**lvl), math.ceil(w / 2**lvl))
        assert out[f"p{lvl}"].shape == (2, 8, *expected), (k, out[f"p{lvl}"].shape)


def test_input_may_be_an_ordered_dict_or_list_and_repeats_have_their_own_weights():
    neck = build_neck(PUBLISHED_NASFPN, IN, 8, 3).eval()
    feats = features(40, 48)
    from_list = neck(feats)
    from_dict = neck({"0": feats[0], "1": feats[1], "2": feats[2]})
    for k in from_list:
        torch.testing.assert_close(from_list[k], from_dict[k])
    assert len(neck.stages) == 3
    convs = [s.cells[0].conv.weight for s in neck.stages]
    assert convs[0].data_ptr() != convs[1].data_ptr() and not torch.equal(convs[0], convs[1])
    anytime = neck.forward_repeats(feats)
    assert len(anytime) == 3
    for k in from_list:
        torch.testing.assert_close(anytime[-1][k], from_list[k])


@pytest.mark.parametrize("spec", [PUBLISHED_NASFPN, FPN_LIKE], ids=["published", "fpn"])
def test_gradients_reach_every_cell_in_every_repeat(spec):
    neck = build_neck(spec, IN, 8, 3)
    feats = [f.requires_grad_() for f in features(48, 40, seed=3)]
    out = neck(feats)
    g = torch.Generator().manual_seed(4)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in out.values())
    loss.backward()
    for r, stage in enumerate(neck.stages):
        for k, cell in enumerate(stage.cells):
            grad = cell.conv.weight.grad
            assert grad is not None and grad.abs().sum() > 0, f"repeat {r} cell{k} gets no gradient"
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


def test_unused_raw_p5_and_p7_reach_the_published_outputs():
    """Raw P5 and P7 feed no cell of the published spec: only the unused-feature rule uses them."""
    repeat = PyramidRepeat(spec=PUBLISHED_NASFPN, channels=4, norm_layer=nn.BatchNorm2d)
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    feats = [torch.randn(2, 4, *s, requires_grad=True) for s in sizes]
    outs = repeat(feats)
    p5_out, p7_out = outs[2], outs[4]
    (g5,) = torch.autograd.grad((p5_out * torch.randn_like(p5_out)).sum(), feats[2], retain_graph=True)
    (g7,) = torch.autograd.grad((p7_out * torch.randn_like(p7_out)).sum(), feats[4], retain_graph=True)
    assert g5.abs().sum() > 0 and g7.abs().sum() > 0
    # ... and no cell reads them: they do not reach P3 / P4 (P6 reads the P5 and P7 outputs).
    for k in (0, 1):
        grads = torch.autograd.grad(outs[k].sum(), [feats[2], feats[4]], retain_graph=True, allow_unused=True)
        assert all(gr is None or gr.abs().sum() == 0 for gr in grads)


def _same_outputs(a: nn.Module, b: nn.Module, feats) -> bool:
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    with torch.no_grad():
        oa, ob = a(feats), b(feats)
    return all(torch.allclose(oa[k], ob[k], atol=1e-5) for k in oa)


@pytest.mark.parametrize("k", [0, 1, 4, 5, 6], ids=lambda k: f"cell{k}")
def test_specs_with_equal_hash_build_the_same_function(k):
    """Swapping sum inputs, or differing-level pooling inputs, changes neither hash nor outputs."""
    torch.manual_seed(0)
    swapped = swap_inputs(PUBLISHED_NASFPN, k)
    assert swapped.canonical_hash() == PUBLISHED_NASFPN.canonical_hash()
    a, b = build_neck(PUBLISHED_NASFPN, IN, 8, 2), build_neck(swapped, IN, 8, 2)
    assert _same_outputs(a, b, features(40, 40))


def test_independent_intermediate_cells_in_either_order_build_the_same_function():
    a_spec, b_spec = INDEPENDENT_A, INDEPENDENT_B  # one network, intermediate cells in either order
    assert a_spec.canonical_hash() == b_spec.canonical_hash()
    torch.manual_seed(0)
    a, b = build_neck(a_spec, IN, 8, 2).eval(), build_neck(b_spec, IN, 8, 2).eval()
    swap = {"cells.0.": "cells.1.", "cells.1.": "cells.0."}
    state = {}
    for key, value in a.state_dict().items():
        for old, new in swap.items():
            if old in key:
                key = key.replace(old, new)
                break
        state[key] = value
    b.load_state_dict(state)
    feats = features(40, 40)
    with torch.no_grad():
        oa, ob = a(feats), b(feats)
    for k in oa:
        torch.testing.assert_close(oa[k], ob[k])


def test_swapping_equal_level_pooling_inputs_changes_the_function():
    torch.manual_seed(0)
    spec = with_op(PUBLISHED_NASFPN, 1, "global_pool")  # global_pool(P4, cell0 @P4)
    swapped = swap_inputs(spec, 1)
    assert swapped.canonical_hash() != spec.canonical_hash()
    a, b = build_neck(spec, IN, 8, 2), build_neck(swapped, IN, 8, 2)
    assert not _same_outputs(a, b, features(40, 40))


def test_norm_layer_is_configurable():
    neck = build_neck(PUBLISHED_NASFPN, IN, 8, 2, norm_layer=partial(nn.GroupNorm, 4))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in neck.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in neck.modules()) == 3 + 2 * 7
    out = neck(features(20, 20, batch=1))  # batch 1 in training mode: fine with GroupNorm
    assert out["p7"].shape == (1, 8, 1, 1)


def test_projection_only_where_channels_differ():
    neck = build_neck(FPN_LIKE, (8, 16, 8), 8, 1)
    kinds = [type(p).__name__ for p in neck.projections]
    assert kinds == ["Identity", "Sequential", "Identity"]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="channels"):
        build_neck(PUBLISHED_NASFPN, IN, 0, 1)
    with pytest.raises(ValueError, match="repeats"):
        build_neck(PUBLISHED_NASFPN, IN, 8, 0)
    with pytest.raises(ValueError, match="backbone levels"):
        build_neck(PUBLISHED_NASFPN, (8,) * 6, 8, 1)
    with pytest.raises(ValueError, match="unknown neck"):
        build_neck("bifpn", IN, 8, 1)
    neck = build_neck(PUBLISHED_NASFPN, IN, 8, 1)
    with pytest.raises(ValueError, match="expected 3 backbone maps"):
        neck(features(32, 32)[:2])


def test_reference_names_and_the_torchvision_fpn():
    neck = build_neck("published", IN, 8, 1)
    assert isinstance(neck, NasFpn) and neck.spec == PUBLISHED_NASFPN
    fpn = build_neck("torchvision_fpn", IN, 8, 5)
    assert isinstance(fpn, TorchvisionFpn) and fpn.out_channels == 8
    assert isinstance(build_neck(FPN_LIKE, IN, 8, 1).stages[0].cells[0], SumCell)


@pytest.mark.parametrize("arch", [PUBLISHED_NASFPN, "torchvision_fpn"], ids=["published", "tv_fpn"])
def test_torchvision_retinanet_accepts_the_neck(arch):
    """The contract: backbone + neck is a valid ``backbone`` for torchvision's RetinaNet."""
    body = IntermediateLayerGetter(resnet18(weights=None), {"layer2": "0", "layer3": "1", "layer4": "2"})
    neck = build_neck(arch, BACKBONE_CHANNELS["resnet18"], 32, 1)
    backbone = nn.Sequential(body, neck)
    backbone.out_channels = neck.out_channels
    model = RetinaNet(backbone, num_classes=3, min_size=96, max_size=128).eval()
    with torch.no_grad():
        (det,) = model([torch.rand(3, 100, 75)])
    assert set(det) == {"boxes", "scores", "labels"}
    model.train()
    model.transform.min_size, model.transform.max_size = (160,), 224  # BatchNorm needs P7 > 1x1 at batch 1
    losses = model(
        [torch.rand(3, 90, 120)], [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1])}]
    )
    assert set(losses) == {"classification", "bbox_regression"} and all(torch.isfinite(v) for v in losses.values())


# -- cost ----------------------------------------------------------------------------------
MMDET_NASFPN_R50_PARAMS = 29_990_144
"""mmdetection's NASFPN neck in ``retinanet_r50_nasfpn_crop640-50e_coco.py`` (7@256, BN), counted
from its layout: 3 lateral 1x1 convs + BN (512/1024/2048 -> 256, no bias) = 919,040; 2 extra
1x1 convs + BN before the P6/P7 max pools = 132,096; 7 stages x 7 out convs (mmcv merge cell:
ReLU -> 3x3 conv with bias -> BN) = 49 x 590,592 = 28,939,008."""


def test_published_r50_7at256_matches_the_reported_size():
    cost = neck_cost(PUBLISHED_NASFPN, "resnet50", 256, 7, 640)
    assert cost["conv3x3_per_repeat"] == 7
    # Our layout: the same laterals; P6/P7 pooled without the extra 1x1 convs; 3x3 convs without bias.
    assert cost["projection_params"] == (512 + 1024 + 2048) * 256 + 3 * 2 * 256
    assert cost["neck_params"] == cost["projection_params"] + 7 * 7 * (9 * 256 * 256 + 2 * 256)
    assert abs(cost["neck_params"] - MMDET_NASFPN_R50_PARAMS) / MMDET_NASFPN_R50_PARAMS < 0.05
    assert 50e9 < cost["neck_flops"] < 200e9


def test_meta_device_cost_equals_a_real_forward_count():
    cost = neck_cost(PUBLISHED_NASFPN, IN, 8, 2, (100, 75))
    neck = build_neck(PUBLISHED_NASFPN, IN, 8, 2)
    assert cost["neck_params"] == count_params(neck)
    assert cost["neck_flops"] == count_flops(neck, features(100, 75, batch=1)) > 0
    assert neck.training  # count_flops restores the mode
    assert count_flops(neck, features(100, 75, batch=2)) == 2 * cost["neck_flops"]


def test_cost_grows_with_width_repeats_and_image_size():
    base = neck_cost(PUBLISHED_NASFPN, "resnet18", 64, 3, 256)
    assert neck_cost(PUBLISHED_NASFPN, "resnet18", 128, 3, 256)["neck_params"] > base["neck_params"]
    assert neck_cost(PUBLISHED_NASFPN, "resnet18", 64, 5, 256)["neck_flops"] > base["neck_flops"]
    assert neck_cost(PUBLISHED_NASFPN, "resnet18", 64, 3, 512)["neck_flops"] > 3 * base["neck_flops"]
    tv = neck_cost("torchvision_fpn", "resnet50", 256, 7, 640)
    assert tv["conv3x3_per_repeat"] == 5  # 3 output convs + P6/P7 convs
    assert tv["neck_params"] == count_params(build_neck("torchvision_fpn", BACKBONE_CHANNELS["resnet50"], 256, 1))
    with pytest.raises(ValueError, match="unknown backbone"):
        neck_cost(PUBLISHED_NASFPN, "vgg", 64, 1, 64)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_random_specs_and_their_equal_hash_variants_compute_the_same(data):
    """Any decoded spec builds and runs; swapping inputs the hash ignores keeps the outputs."""
    space = NasFpnSpace()
    params = {n: data.draw(st.sampled_from(d.choices), label=n) for n, d in space.distributions.items()}
    spec = space.decode(params)
    cells = list(spec.cells)
    for k, c in enumerate(cells):
        la, lb = (spec.node_level(x) for x in c.inputs)
        if c.op == "sum" or la != lb:
            cells[k] = Cell(c.level, c.op, (c.inputs[1], c.inputs[0]), c.is_output)
    variant = ArchSpec(tuple(cells)).validate()
    assert variant.canonical_hash() == spec.canonical_hash()
    torch.manual_seed(0)
    a, b = build_neck(spec, (4, 4, 4), 4, 1), build_neck(variant, (4, 4, 4), 4, 1)
    assert _same_outputs(a, b, features(37, 29, in_channels=(4, 4, 4)))


def test_whole_r50_nasfpn_640_matches_the_tpu_model_zoo():
    """R-50 + published 7@256 + RetinaNet head (90 classes, 9 anchors) at 640: about 60 M
    parameters and 141 G (multiply-adds, i.e. half of FlopCounterMode's FLOPs) in the zoo."""
    with torch.device("meta"):
        body = IntermediateLayerGetter(resnet50(weights=None), {"layer2": "0", "layer3": "1", "layer4": "2"})
        neck = build_neck(PUBLISHED_NASFPN, BACKBONE_CHANNELS["resnet50"], 256, 7)
        head = RetinaNetHead(256, 9, 90)
        image = torch.empty(1, 3, 640, 640)

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.neck, self.head = body, neck, head

        def forward(self, x):
            return self.head(list(self.neck(self.body(x)).values()))

    model = Detector()
    params, macs = count_params(model), count_flops(model, image) / 2
    assert abs(params - 60e6) / 60e6 < 0.05, params
    assert abs(macs - 141e9) / 141e9 < 0.05, macs
