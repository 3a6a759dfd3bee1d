"""One build of the backbone stage (and of the supernet) for a whole study.

Trials trained on different builds of the stage are not comparable (the same settings trained
on two machines gave torchvision FPN 0.2358 and 0.2498), so the first worker of a study stores
its cache files with the study: each file as an Optuna artifact in the study's artifact store,
its SHA-256 and size in the study user attr ``cache_files``. A worker that joins later, with no
such file or another build of it, fetches the study's build before it prepares anything, instead
of training its own. A task names its files with ``cache_files() -> {kind: path}``
(:class:`~evo_fpn.tasks.proxy.ProxyTask`: the stage; the supernet task: the stage and the
supernet); tasks without one (synthetic, end to end) have nothing to share.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact

from evo_fpn.errors import UsageError
from evo_fpn.storage import rdb as st
from evo_fpn.training.cache import install, recorded_digest

ATTR = "cache_files"
"""Study user attr: ``{kind: {"name", "sha256", "bytes", "artifact_id"}}``."""

WHAT = {"stage": "backbone stage", "supernet": "supernet"}


def task_cache_files(task: Any) -> dict[str, Path]:
    files = getattr(task, "cache_files", None)
    return dict(files()) if callable(files) else {}


def adopt_study_builds(
    url: str, study_name: str, task: Any, artifact_dir: Path, *, log: Callable[[str], None]
) -> list[str]:
    """Before ``task`` prepares: make this machine's cache files the study's builds, fetching
    those it lacks or has another build of; return the kinds fetched. Reads the storage only."""
    files = task_cache_files(task)
    if not files or not st.study_exists(url, study_name):
        return []
    with st.reader(url) as storage:
        shared = storage.get_study_user_attrs(storage.get_study_id_from_name(study_name)).get(ATTR, {})
    store = FileSystemArtifactStore(str(artifact_dir))
    fetched = []
    for kind, path in files.items():
        rec = shared.get(kind)
        if not rec or rec.get("name") != path.name:
            continue
        if path.is_file() and recorded_digest(path) == rec["sha256"]:
            continue
        what = WHAT.get(kind, kind)
        had = "another build of it" if path.is_file() else "none"
        log(f"study {study_name!r} trained on {what} {path.name} ({rec['sha256'][:12]}); this machine has {had}: "
            f"fetching the study's from {artifact_dir} ({rec['bytes'] / 1e6:.0f} MB)")  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)

        def fetch(tmp: Path, artifact_id: str = rec["artifact_id"]) -> None:
            download_artifact(artifact_store=store, file_path=str(tmp), artifact_id=artifact_id)

        try:
            install(path, fetch, sha256=rec["sha256"], what=what)
        except (OSError, optuna.artifacts.exceptions.ArtifactNotFound) as exc:
            raise UsageError(
                f"study {study_name!r} keeps its {what} in the artifact store {artifact_dir}, which this worker "
                f"cannot read ({exc}): pass --artifacts with the folder every worker shares, or copy {path.name} "
                f"into {path.parent}"
            ) from None
        fetched.append(kind)
    return fetched


def publish_builds(study: optuna.Study, task: Any, artifact_dir: Path) -> list[str]:
    """After ``task`` prepared: store its cache files with ``study`` if the study has none of
    that kind yet (the first worker's build becomes the study's); return the kinds stored."""
    shared = dict(study.user_attrs.get(ATTR, {}))
    added = []
    for kind, path in task_cache_files(task).items():
        if kind in shared or not path.is_file():
            continue
        store = FileSystemArtifactStore(str(artifact_dir))
        artifact_dir.mkdir(parents=True, exist_ok=True)
        artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)
        shared[kind] = {
            "name": path.name,
            "sha256": recorded_digest(path),
            "bytes": path.stat().st_size,
            "artifact_id": artifact_id,
        }
        added.append(kind)
    if added:
        study.set_user_attr(ATTR, shared)
    return added
