"""Shared command-line plumbing: bad input becomes one clear line and exit code 2.

Every ``python -m evo_fpn.X`` entry point wraps its ``main`` with :func:`guard`, and raises
:class:`UsageError` (or one of the library's own error types) for anything the user can fix.
The pieces every entry point shares live here once, so they cannot drift apart:
:class:`ArgumentParser` (a bad flag is a ``UsageError``), :func:`parse_sets` (``--set
KEY=VALUE`` with TOML values) and :func:`load_arch` (an architecture named on the command line).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from evo_fpn.errors import DatasetError, TrialFailed, UsageError
from evo_fpn.spec import REFERENCE_SPECS, ArchSpec, SpecError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

F = TypeVar("F", bound=Callable[..., int | None])


USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, SpecError, DatasetError, TrialFailed)
"""Exception types shown as one line (exit 2) instead of a traceback (subclasses included)."""


def fail(message: str, code: int = 2) -> int:
    """Print ``error: message`` (one line) to stderr and return ``code``."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def guard(main: F) -> F:
    """Run ``main``; user errors print one line and exit 2, Ctrl-C exits 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as exc:
            return fail(str(exc))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper  # type: ignore[return-value]


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one ``error:`` line (exit 2 via :func:`guard`) like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs -> ``{KEY: value}``, values read as TOML.

    ``2`` is an int, ``0.5`` a float, ``true`` a bool, ``[1, 2]`` a list, ``"text"`` or a bare
    word (``group``) text. Keys are kept as written (``proxy.epochs``): the caller knows what
    they name. A later pair overrides an earlier one; an item without ``=`` or without a key
    is a :class:`UsageError`.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {item!r} must look like KEY=VALUE, e.g. proxy.epochs=2")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[key] = value
    return out


TORCHVISION_FPN = "torchvision_fpn"
"""The name of torchvision's own FPN (``evo_fpn.neck.FPN_NAME``): a baseline, not a spec of cells."""


@overload
def load_arch(source: str, *, allow_torchvision_fpn: Literal[False] = False) -> ArchSpec: ...
@overload
def load_arch(source: str, *, allow_torchvision_fpn: bool) -> ArchSpec | str: ...
def load_arch(source: str, *, allow_torchvision_fpn: bool = False) -> ArchSpec | str:
    """An architecture named on the command line, as a validated :class:`ArchSpec`.

    ``source`` is one of:

    * ``published`` or ``fpn`` (:data:`evo_fpn.spec.REFERENCE_SPECS`);
    * ``torchvision_fpn``, returned as that string, only with ``allow_torchvision_fpn=True``
      (it is torchvision's FPN, which has no cells to inspect);
    * inline JSON starting with ``{`` (a spec, e.g. a copied ``spec`` user attr);
    * a path (``~`` expanded) to a JSON file holding a spec (``ArchSpec.to_json``), a spec as
      a JSON string (a trial's ``spec`` user attr as stored), a record with a ``spec`` key
      (``metrics.json`` of ``python -m evo_fpn.train``, a saved trial), or a trial's params
      (``cell0.input_i`` ..., decoded in the default search space).

    A file's spec is named after the file. Raises :class:`UsageError` for a source that is none
    of these (an unreadable file) and :class:`~evo_fpn.spec.SpecError` for one that is not a
    valid spec; either message is one line naming the source.
    """
    names = [*REFERENCE_SPECS, *([TORCHVISION_FPN] if allow_torchvision_fpn else [])]
    if source in REFERENCE_SPECS:
        return REFERENCE_SPECS[source]
    if source == TORCHVISION_FPN:
        if allow_torchvision_fpn:
            return source
        raise UsageError(
            f"{TORCHVISION_FPN} is torchvision's own FPN, not a spec of cells: pass {', '.join(names)} "
            "or a spec JSON file"
        )
    if source.lstrip().startswith("{"):
        where, name, text = "inline spec", "", source
    else:
        path = Path(source).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise UsageError(
                f"cannot read spec file {source!r} ({reason}): it is neither one of {', '.join(names)} "
                "nor a readable spec JSON file"
            ) from None
        where, name = source, path.stem
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{where}: not valid JSON ({exc})") from None
    try:
        return _spec_from_data(data, name)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _spec_from_data(data: Any, name: str) -> ArchSpec:
    if isinstance(data, str):  # a spec stored as a JSON string (a trial's "spec" user attr)
        return ArchSpec.from_json(data, name=name)
    if isinstance(data, dict) and "cells" not in data:
        if "spec" in data:  # a saved metrics / trial record
            return _spec_from_data(data["spec"], name)
        if any(k.startswith("cell0.") for k in data):  # a trial's params
            from evo_fpn.space import NasFpnSpace

            return dataclasses.replace(NasFpnSpace().decode(data), name=name)
    return ArchSpec.from_dict(data, name=name)
