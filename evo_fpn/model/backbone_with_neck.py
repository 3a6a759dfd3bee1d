"""A found neck in your own detector: backbone + neck in torchvision's detection convention.

torchvision's detectors take any ``backbone`` module with an ``out_channels`` attribute whose
forward returns an ``OrderedDict[str, Tensor]`` of maps (``BackboneWithFPN``). :class:`BackboneWithNeck`
is that module for a searched spec, built from the project's own backbone and neck, so a found
neck drops into ``RetinaNet``, ``FCOS`` or ``FasterRCNN``::

    from torchvision.models.detection import FasterRCNN, RetinaNet
    from evo_fpn.arch.load import load_arch
    from evo_fpn.model.backbone_with_neck import backbone_with_neck, load_trained

    spec = load_arch("runs/train-x/spec.json")          # or "published", "fpn", a trial's spec
    backbone = backbone_with_neck(spec, "resnet50", width=256, repeats=7)
    load_trained(backbone, "runs/train-x/model.pt")     # optional: the weights train saved
    model = RetinaNet(backbone, num_classes=91)         # or FCOS(...), FasterRCNN(backbone, 91)

The maps are named ``"0"``, ``"1"``, ... in level order (torchvision's convention), by default
P3..P7 (strides 8..128): ``"0"`` = P3 ... ``"4"`` = P7, and ``backbone.levels`` says which
P-level each name is. Five maps match the five anchor sizes of the default anchor generators
of RetinaNet, FCOS and FasterRCNN's RPN, and FasterRCNN's default RoI pooler reads
``"0".."3"`` (P3..P6), so all three work with their defaults. A neck with other levels (a P3-P6
NAS-FPNLite spec, or ``levels=(3, 4, 5, 6)``) needs an ``AnchorGenerator`` with one size
tuple per returned map. No weights are downloaded: the backbone starts random
(``weights_path`` loads a local torchvision classifier state_dict) and :func:`load_trained`
loads a model ``python -m evo_fpn.train`` saved.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from evo_fpn.arch.spec import ArchSpec
from evo_fpn.errors import UsageError
from evo_fpn.model.detector import Backbone, neck_norm_layer
from evo_fpn.model.neck import CELL_CONVS, FPN_NAME, build_neck

RUN_FILES = ("metrics.json", "spec.json")
"""What ``python -m evo_fpn.train`` writes beside ``model.pt``: the record of which spec it trained."""


class BackboneWithNeck(nn.Module):
    """Backbone (C3..C5) -> neck -> ``OrderedDict`` of the chosen levels, named ``"0"``, ``"1"``, ...

    ``out_channels`` is the neck's width, as torchvision's detectors need it.
    """

    def __init__(self, *, backbone: Backbone, neck: nn.Module, levels: Sequence[int] | None = None) -> None:
        super().__init__()
        neck_levels = tuple(getattr(neck, "levels", (3, 4, 5, 6, 7)))
        levels = neck_levels if levels is None else tuple(int(v) for v in levels)
        if not levels or list(levels) != sorted(set(levels)) or not set(levels) <= set(neck_levels):
            raise ValueError(f"levels must be increasing, distinct and among the neck's {neck_levels}, got {levels}")
        self.backbone = backbone
        self.neck = neck
        self.out_channels: int = int(neck.out_channels)
        self.levels: tuple[int, ...] = levels
        self._picks = [neck_levels.index(v) for v in levels]

    @property
    def names(self) -> dict[str, int]:
        """Map name -> P-level (``{"0": 3, "1": 4, ...}``)."""
        return {str(i): level for i, level in enumerate(self.levels)}

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        maps = list(self.neck(self.backbone(images)).values())
        return OrderedDict((str(i), maps[k]) for i, k in enumerate(self._picks))


def backbone_with_neck(
    spec: ArchSpec | str,
    backbone: str = "resnet50",
    *,
    width: int = 256,
    repeats: int = 7,
    levels: Sequence[int] | None = None,
    neck_norm: str = "batch",
    cell_conv: str = "conv3x3",
    weights_path: str | None = None,
) -> BackboneWithNeck:
    """The backbone for torchvision's ``RetinaNet``/``FCOS``/``FasterRCNN`` with the neck of ``spec``.

    ``spec``: an :class:`ArchSpec` (e.g. from :func:`evo_fpn.arch.load.load_arch`), ``"published"``,
    ``"fpn"`` or ``"torchvision_fpn"``. ``backbone``: one of :data:`evo_fpn.model.detector.BACKBONES`,
    built with ``weights=None``. ``width``/``repeats``: the neck's channels and repeats (the paper's
    7@256 by default). ``levels``: the P-levels returned (default: all the neck makes, P3..P7).
    ``neck_norm``: ``batch`` (the project's default), ``group`` (for small batches) or ``none``.
    """
    if width < 1 or repeats < 1:
        raise UsageError(f"width and repeats must be >= 1, got width {width}, repeats {repeats}")
    if cell_conv not in CELL_CONVS:
        raise UsageError(f"unknown cell conv {cell_conv!r}; choose one of {', '.join(CELL_CONVS)}")
    body = Backbone(backbone, weights_path=weights_path)
    neck = build_neck(
        spec, body.out_channels, width, repeats, norm_layer=neck_norm_layer(spec, neck_norm), conv=cell_conv
    )
    return BackboneWithNeck(backbone=body, neck=neck, levels=levels)


def spec_hash(neck: nn.Module) -> str:
    """The spec hash ``python -m evo_fpn.train`` records for ``neck`` (``torchvision_fpn`` for torchvision's)."""
    spec = getattr(neck, "spec", None)
    return spec.canonical_hash() if isinstance(spec, ArchSpec) else FPN_NAME


def trained_record(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``model.pt`` (or its run folder) -> (its path, what the run recorded: ``spec_hash``, ``config``).

    The spec is read from ``metrics.json`` beside it, else from ``spec.json``: a ``model.pt`` is a bare
    state_dict, and two specs with as many cells have the same parameter names and shapes, so
    only the record can tell which spec the weights belong to.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.pt"
    if not p.is_file():
        raise UsageError(f"trained weights {p} not found; pass a model.pt written by python -m evo_fpn.train")
    metrics, spec_file = (p.with_name(name) for name in RUN_FILES)
    try:
        if metrics.is_file():
            record = json.loads(metrics.read_text(encoding="utf-8"))
            if isinstance(record, dict) and isinstance(record.get("spec_hash"), str):
                return p, record
        if spec_file.is_file():
            spec = ArchSpec.from_json(spec_file.read_text(encoding="utf-8"))
            return p, {"spec_hash": spec.canonical_hash(), "config": {}}
    except (OSError, ValueError) as exc:  # unreadable JSON or spec: SpecError is a ValueError
        raise UsageError(f"cannot read the run record beside {p} ({exc})") from None
    raise UsageError(
        f"cannot tell which spec {p} was trained with: keep the {' or '.join(RUN_FILES)} "
        "python -m evo_fpn.train wrote beside it"
    )


def load_trained(model: BackboneWithNeck | nn.Module, path: str | Path) -> dict[str, Any]:
    """Load the neck (and, when it was trained, the backbone) of a ``python -m evo_fpn.train`` model.

    ``model`` is a :class:`BackboneWithNeck` or a bare neck. The run's recorded spec must be the
    neck's spec (same canonical hash), and width, repeats, backbone, norm and cell conv must be the
    run's (see its ``metrics.json`` ``config``); otherwise a one-line :class:`UsageError` says what
    differs. A run trained on cached features (``--mode cached``) saved no backbone: the backbone
    is then left as it is. Returns the run's record.
    """
    p, record = trained_record(path)
    neck = model.neck if isinstance(model, BackboneWithNeck) else model
    want, got = spec_hash(neck), record["spec_hash"]
    if want != got:
        raise UsageError(
            f"{p} was trained with spec {got}, but this neck's spec is {want}: "
            "pass the spec of that run (its spec.json) or the weights of this spec"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UsageError(f"cannot read trained weights {p} ({exc})") from None
    if not isinstance(state, dict):
        raise UsageError(f"{p} is not a state_dict saved by python -m evo_fpn.train")
    parts = {"neck": _sub_state(state, "retina.backbone.")}
    if isinstance(model, BackboneWithNeck) and any(k.startswith("backbone.") for k in state):
        parts["backbone"] = _sub_state(state, "backbone.")
    if not parts["neck"]:
        raise UsageError(f"{p} holds no neck weights (no retina.backbone.* keys); is it a model.pt of evo_fpn.train?")
    config = record.get("config") or {}
    ran = ", ".join(
        f"{k} {config[k]}" for k in ("backbone", "width", "repeats", "neck_norm", "cell_conv") if k in config
    )
    for name, sub in parts.items():
        module = neck if name == "neck" else model.backbone  # type: ignore[union-attr]
        try:
            module.load_state_dict(sub)
        except RuntimeError as exc:
            first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
            hint = f"; the run used {ran}" if ran else ""
            raise UsageError(f"{p}: the {name} weights do not fit this {name} ({first}){hint}") from None
    return record


def _sub_state(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
