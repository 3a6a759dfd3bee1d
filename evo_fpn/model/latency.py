"""Measured forward latency of a detector: a property of the machine, not of the architecture.

:func:`measure` times the network of a :class:`~evo_fpn.model.detector.Detector` (normalisation,
backbone, neck, head) on one image at batch 1, in eval mode without gradients, on the given
device: ``warmup`` untimed passes, then the median (and std) of ``runs`` timed ones, CUDA
synchronised around each. Post-processing (box decoding, NMS) is left out: with untrained
weights it would time an arbitrary number of boxes. The result names the device
(:func:`device_name`), because the same network is several times faster or slower on another
machine, or on the same one with other jobs running: latencies from different machines do not
mix in one study.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from evo_fpn.record import LATENCY_DEVICE


def device_name(device: torch.device) -> str:
    """``"cuda: NVIDIA H200"`` or ``"cpu: <processor> (N threads)"``."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {_cpu_model()} ({torch.get_num_threads()} threads)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def measure(model: Any, image_size: int, *, device: torch.device, warmup: int = 5, runs: int = 20) -> dict[str, Any]:
    """``latency_ms`` (median), ``latency_std_ms`` and ``latency_device`` of ``model``'s network
    on one ``image_size`` image (see the module doc)."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if model.backbone is None:
        raise ValueError("latency is of the whole detector: build it with its backbone")
    was_training = model.training
    model.eval()
    images = torch.randint(0, 256, (1, 3, image_size, image_size), dtype=torch.uint8, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def forward() -> None:
        feats = list(model.neck(model.backbone(model.normalize(images))).values())
        model.retina.head(feats)

    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + runs):
                sync()
                t0 = time.perf_counter()
                forward()
                sync()
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
    finally:
        model.train(was_training)
    return {
        "latency_ms": float(statistics.median(times)),
        "latency_std_ms": float(statistics.pstdev(times)),
        LATENCY_DEVICE: device_name(device),
    }
