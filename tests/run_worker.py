"""Helpers for the runner tests: synthetic study files and ``python -m evo_fpn.run`` processes.

The synthetic objective goes through the runner's real plumbing (config, storage, budget
lock, heartbeats, objective, user attrs) without training detectors, so mechanics tests
(workers, kills, resume) take seconds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

RUN = [sys.executable, "-m", "evo_fpn.run"]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def write_study(
    folder: Path,
    name: str = "syn",
    *,
    n_trials: int = 4,
    sampler: str = "random",
    sleep: float = 0.0,
    heartbeat_interval: int = 1,
    grace_period: int = 2,
    synthetic: dict[str, Any] | None = None,
    space: dict[str, Any] | None = None,
    extra: str = "",
) -> Path:
    """A study file using the synthetic objective; returns its path."""
    lines = [f'description = "test study {name}"', f"n_trials = {n_trials}", 'objective = "synthetic"', extra, ""]
    lines += ["[sampler]", f'name = "{sampler}"', ""]
    lines += ["[synthetic]", f"sleep = {sleep}"] + [f"{k} = {toml_value(v)}" for k, v in (synthetic or {}).items()]
    lines += ["", "[runner]", f"heartbeat_interval = {heartbeat_interval}", f"grace_period = {grace_period}", ""]
    if space:
        lines += ["[space]"] + [f"{k} = {toml_value(v)}" for k, v in space.items()]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def sigint_default() -> None:
    """A shell's background job (``cmd &``) starts with SIGINT ignored, which children inherit and
    Python then never turns into KeyboardInterrupt: give the worker a terminal's default back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: Sequence[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*RUN, *args, "--no-progress"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=sigint_default,
    )  # fmt: skip


def run(args: Sequence[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, *args, "--no-progress"], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def wait_for(predicate, timeout: float, what: str, poll: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def load(url: str, name: str = "syn") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def start_server(url: str, cwd: Path, *, pool_size: int = 4, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """``python -m evo_fpn.storage_server`` for ``url`` on a free port; returns it and its ``grpc://`` URL."""
    from evo_fpn.storage.testing_pg import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "evo_fpn.storage_server", "--storage", url, "--port", str(port)]
        + ["--pool-size", str(pool_size)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the server's one line once it listens (or its error)
    if proc.poll() is not None or "storage server for" not in line:
        proc.kill()
        raise AssertionError(f"storage server did not start: {line}{proc.stderr.read()}")
    return proc, f"grpc://localhost:{port}"


def stop(proc: subprocess.Popen | None) -> str:
    """Stop a process we started (SIGTERM, then SIGKILL) and return its stderr."""
    if proc is None:
        return ""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    _, err = proc.communicate()
    return err or ""
