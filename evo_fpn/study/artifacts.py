"""What people see of a study in optuna-dashboard: architecture artifacts and study figures.

* :func:`attach_architecture` uploads the trial's architecture picture (SVG from
  :mod:`evo_fpn.arch.draw`) as an Optuna artifact while the trial runs, so the dashboard's trial
  page shows it next to the user attrs.
* :func:`dashboard_command` prints the exact ``optuna-dashboard`` command for a storage,
  with any password masked.

The study-level figures are saved by :mod:`evo_fpn.viz.refresh`, above this layer.
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from evo_fpn.arch.draw import spec_to_svg
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.errors import UsageError
from evo_fpn.storage.urls import mask_url

if TYPE_CHECKING:
    from evo_fpn.compat import ArtifactStore

ARTIFACT_DIR_NAME = "artifacts"
"""Name of the artifact folder made next to a SQLite storage file."""


def default_artifact_dir(storage_url: str) -> Path:
    """The artifact folder for a storage: ``<folder of the .db>/artifacts`` for SQLite.

    Other storages (PostgreSQL, shared by many machines) have no folder of their own; the
    default is then ``studies/artifacts`` and every worker and the dashboard must be given
    the same shared folder with ``--artifact-dir``.
    """
    from sqlalchemy.engine import make_url

    try:
        url = make_url(storage_url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with a long text
        raise UsageError(f"cannot parse storage URL {mask_url(storage_url)!r}: {exc}") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(url.database).resolve().parent / ARTIFACT_DIR_NAME
    return Path("studies") / ARTIFACT_DIR_NAME


def make_artifact_store(artifact_dir: str | Path) -> FileSystemArtifactStore:
    """A file-system artifact store in ``artifact_dir`` (created if missing)."""
    path = Path(artifact_dir)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(base_path=str(path))


def attach_architecture(
    trial: optuna.Trial | optuna.trial.FrozenTrial,
    spec: ArchSpec,
    artifact_store: ArtifactStore,
    *,
    storage: optuna.storages.BaseStorage | None = None,
) -> str:
    """Upload the SVG picture of ``spec`` as an artifact of ``trial``; return the artifact id.

    Call it while the trial runs (optuna only attaches artifacts to a live ``Trial``, or to a
    ``FrozenTrial`` together with its ``storage``). The file is named after the trial and the
    canonical hash, so a downloaded picture says what it shows.
    """
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"spec must be an ArchSpec, got {type(spec).__name__}")
    title = f"trial {trial.number}  ·  {spec.canonical_hash()}"
    svg = spec_to_svg(spec, title=title)
    with tempfile.TemporaryDirectory(prefix="evo_fpn_arch_") as tmp:
        path = Path(tmp) / f"arch-trial{trial.number}-{spec.canonical_hash()}.svg"
        path.write_text(svg, encoding="utf-8")
        return upload_artifact(
            artifact_store=artifact_store,
            file_path=str(path),
            study_or_trial=trial,
            storage=storage,
            mimetype="image/svg+xml",
        )


def dashboard_command(storage_url: str, artifact_dir: str | Path | None) -> str:
    """The exact shell command that opens ``storage_url`` in optuna-dashboard.

    The password (if any) is masked as ``***``: replace it, or export it in a
    ``~/.pgpass`` / ``PGPASSWORD`` and drop it from the URL.
    """
    parts: list[Any] = ["optuna-dashboard", mask_url(storage_url)]
    if artifact_dir is not None:
        parts += ["--artifact-dir", str(artifact_dir)]
    return " ".join(shlex.quote(str(p)) for p in parts)
