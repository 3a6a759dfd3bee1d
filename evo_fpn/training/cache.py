"""Cache files that workers share (the backbone stage, the supernet): built once, checksummed.

One process per machine builds a file under a file lock while the others wait; it is written
to a temp file and renamed, so no half-written file is ever read. Its SHA-256 is written next
to it (``NAME.sha256``) before the rename and verified on every load, so a file damaged later
(a flipped byte, a truncated copy, a full disk) is never used: it is moved aside as
``NAME.damaged`` and rebuilt under the same lock, and the worker says so in one line.
A file from before checksums (no ``.sha256``) is adopted once it loads, and gets one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

CHECKSUM_SUFFIX = ".sha256"
DAMAGED_SUFFIX = ".damaged"
REPLACED_SUFFIX = ".replaced"


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_once(path: Path, build: Callable[[], dict[str, Any]]) -> None:
    """Make sure ``path`` exists: one process per machine runs ``build`` under a file lock while
    the others wait, and the result is written atomically with its checksum, so a builder killed
    midway leaves nothing behind (the next one takes the lock and builds)."""
    if path.is_file():
        return
    with _locked(path):
        if not path.is_file():
            _save_atomically(build(), path)


def damage(path: Path) -> str | None:
    """Why the file at ``path`` must not be used (``None``: its checksum matches, or it has none)."""
    expected = checksum_path(path)
    if not expected.is_file():
        return None
    try:
        want = expected.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        return f"unreadable checksum file ({type(exc).__name__})"
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    got = file_digest(path)
    return None if got == want else f"SHA-256 {got[:12]} != recorded {want[:12]} ({size:,} bytes)"


def load_verified(path: Path, build: Callable[[], dict[str, Any]], *, what: str) -> dict[str, Any]:
    """The cache file at ``path`` (built first if missing), verified against its checksum.

    A damaged file, or one ``torch.load`` cannot read, is moved aside and rebuilt with ``build``
    under the lock (a worker that waited for another's rebuild loads that one)."""
    build_once(path, build)
    reason = damage(path)
    blob = _load(path) if reason is None else None
    if reason is None and blob is None:
        reason = "unreadable by torch.load"
    if blob is not None:
        recorded_digest(path)  # a file from before checksums loads, so it is adopted: record its hash
        return blob
    print(f"warning: {path}: damaged {what} ({reason}); moved aside and rebuilt", file=sys.stderr)
    with _locked(path):
        if damage(path) is not None or _load(path) is None:  # nobody rebuilt it meanwhile
            os.replace(path, path.with_name(path.name + DAMAGED_SUFFIX))
            _save_atomically(build(), path)
    blob = _load(path)
    if blob is None or damage(path) is not None:
        raise OSError(f"{path}: the rebuilt {what} cannot be read back; check the disk (df -h {path.parent})")
    return blob


def recorded_digest(path: Path) -> str:
    """The file's SHA-256 as recorded beside it (computed, and recorded, for an older file)."""
    expected = checksum_path(path)
    if expected.is_file():
        return expected.read_text().strip()
    digest = file_digest(path)
    _write_text_atomically(expected, digest)
    return digest


def install(path: Path, fetch: Callable[[Path], None], *, sha256: str, what: str) -> None:
    """Put another machine's build at ``path``: ``fetch(tmp)`` writes it to a temp file in the
    same folder, which must hash to ``sha256``; it then replaces the local file (kept beside as
    ``NAME.replaced``) under the lock, with its checksum, so readers see one build or the other."""
    with _locked(path):
        if path.is_file() and recorded_digest(path) == sha256:
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)  # fetchers refuse to overwrite
        try:
            fetch(Path(tmp))
            got = file_digest(Path(tmp))
            if got != sha256:
                raise OSError(f"the fetched {what} hashes to {got[:12]}, not the study's {sha256[:12]}")
            os.chmod(tmp, 0o644)
            if path.is_file():
                os.replace(path, path.with_name(path.name + REPLACED_SUFFIX))
            _write_text_atomically(checksum_path(path), sha256)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is rebuilt, whatever torch raised
        return None


def _save_atomically(blob: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same folder, record its checksum, then rename: readers see
    all or nothing, and the checksum always describes the file it sits next to."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(blob, tmp)
        os.chmod(tmp, 0o644)
        _write_text_atomically(checksum_path(path), file_digest(Path(tmp)))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_text_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
