"""The last step of ``python -m evo_fpn.search``: read the stages' studies, write the report and exports.

Everything here is read from the storage (so any machine of a shared search can write the
report) except ``model.pt``, which the machine that trained it wrote; without it the exports
are of an untrained neck of the same spec and the report says so. Every file is written
beside its final name and renamed, so a killed run never leaves half a file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from evo_fpn import record
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.model.export import export_neck
from evo_fpn.storage import rdb as st
from evo_fpn.study import pipeline, retrain
from evo_fpn.study.enqueue import ENQUEUED_FROM
from evo_fpn.tasks.proxy import ProxyConfig, ProxyTask
from evo_fpn.viz.report import ReportData, headline, report_html, report_md
from evo_fpn.viz.study_data import StudyData


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` beside ``path`` and rename it into place (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def dump_json(path: Path, data: Any) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def finalists(url: str, finalists_study: str, screen_study: str, winner_number: int) -> list[dict[str, Any]]:
    """The finalists' rows, best proxy AP first, with the supernet AP each had in the screen."""
    with pipeline.reading(url, screen_study) as screen:
        screen_ap = {t.number: t.value for t in screen.get_trials(deepcopy=False)} if screen else {}
    rows = []
    with pipeline.reading(url, finalists_study) as study:
        assert study is not None
        for t in study.get_trials(deepcopy=False):
            if t.value is None or t.state.name != "COMPLETE":
                continue
            origin = t.user_attrs.get(ENQUEUED_FROM)
            m = re.search(r"#(\d+)$", origin or "")
            rows.append(
                {
                    "trial": t.number,
                    "origin": origin,
                    "ap": t.user_attrs.get("ap", t.value),
                    "ap50": t.user_attrs.get("ap50"),
                    "neck_flops": t.user_attrs.get("neck_flops"),
                    "neck_params": t.user_attrs.get("neck_params"),
                    "screen_ap": screen_ap.get(int(m.group(1))) if m else None,
                    "spec_hash": t.user_attrs.get(record.SPEC_HASH),
                    "winner": t.number == winner_number,
                }
            )
    rows.sort(key=lambda r: (-(r["ap"] or 0.0), r["trial"]))
    return rows


def write(
    s: pipeline.Settings,
    plan: Sequence[pipeline.Stage],
    *,
    out: Path,
    spec: ArchSpec,
    config: ProxyConfig,
    device: str,
    command: str,
) -> dict[str, Any]:
    """Write best.json, metrics.json, report.html, report.md, neck.onnx and neck.torchscript.pt
    into ``out``; return what was written and the data of the report."""
    names = {stage.key: stage.study for stage in plan}
    with pipeline.reading(s.url, names["retrain"]) as study:
        assert study is not None
        runs = retrain.results(study)
    with pipeline.reading(s.url, names["finalists"]) as study:
        assert study is not None
        _, best = pipeline.winner(study)
    task = ProxyTask(config, device=device, progress=False).prepare()
    costs = {arch: task.costs(_arch(arch, spec)) for arch in retrain.ARCHS}
    latency = {arch: task.latency(_arch(arch, spec)) for arch in retrain.ARCHS}
    notes = []
    model = task.build(spec)
    weights = out / "model.pt"
    if weights.is_file():
        model.load_state_dict(torch.load(weights, map_location=task.device, weights_only=True))
    else:
        writer = next((r.get(retrain.MODEL_WRITTEN_BY) for r in runs[retrain.FOUND] if r["seed"] == 0), None)
        notes.append(
            f"model.pt is not in {out}" + (f" (written by {writer})" if writer else "")
            + ": neck.onnx and neck.torchscript.pt hold an untrained neck of the found spec"
        )  # fmt: skip
    with pipeline.reading(s.url, names["screen"]) as study:
        screen = StudyData.from_study(study) if study is not None else None
    data = ReportData(
        name=s.name,
        spec=spec,
        runs=runs,
        costs=costs,
        latency=latency,
        finalists=finalists(s.url, names["finalists"], names["screen"], best.number),
        settings={
            "preset": s.preset,
            "data": s.data or "built-in digits",
            "screen": s.screen,
            "finalists": s.finalists,
            "retrain epochs": f"{s.retrain_epochs:g}",
            "seeds": s.seeds,
            "storage": st.mask_url(s.url),
        },  # fmt: skip
        command=command,
        screen=screen,
        notes=notes,
    )
    out.mkdir(parents=True, exist_ok=True)
    files = [write_atomic(out / "best.json", spec.to_json(indent=2) + "\n")]
    found0 = next((r for r in runs[retrain.FOUND] if r["seed"] == 0), None)
    metrics = {
        "spec": spec.to_json(),
        "spec_hash": spec.canonical_hash(),
        "config": config.to_dict(),
        "model_pt": {k: v for k, v in (found0 or {}).items() if k != record.SPEC},
        "runs": {arch: [{k: v for k, v in r.items() if k != record.SPEC} for r in rs] for arch, rs in runs.items()},
        "costs": costs,
        "latency": latency,
        "winner_trial": best.number,
        "headline": headline(data),
    }
    files.append(dump_json(out / "metrics.json", metrics))
    if weights.is_file():
        files.append(weights)
    files.append(write_atomic(out / "report.md", report_md(data)))
    files.append(write_atomic(out / "report.html", report_html(data)))
    model.cpu()
    files.append(export_neck(model.neck, out / "neck.onnx", image_size=config.image_size))
    files.append(export_neck(model.neck, out / "neck.torchscript.pt", image_size=config.image_size, fmt="torchscript"))
    return {"files": files, "data": data}


def headline_of(written: dict[str, Any]) -> str:
    return headline(written["data"])


def _arch(arch: str, spec: ArchSpec) -> ArchSpec | str:
    return spec if arch == retrain.FOUND else retrain.FPN
