"""An architecture named by a user: a reference name, inline JSON, or a file (spec, record, params).

The entry points and the enqueue step read architectures the same way, so the parsing lives
here, below both, and names its source in every error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal, overload

from evo_fpn.arch.spec import REFERENCE_SPECS, ArchSpec, SpecError
from evo_fpn.errors import UsageError

TORCHVISION_FPN = "torchvision_fpn"
"""The name of torchvision's own FPN (``evo_fpn.model.neck.FPN_NAME``): a baseline, not a spec of cells."""


@overload
def load_arch(source: str, *, allow_torchvision_fpn: Literal[False] = False) -> ArchSpec: ...
@overload
def load_arch(source: str, *, allow_torchvision_fpn: bool) -> ArchSpec | str: ...
def load_arch(source: str, *, allow_torchvision_fpn: bool = False) -> ArchSpec | str:
    """An architecture named on the command line, as a validated :class:`ArchSpec`.

    ``source`` is one of:

    * ``published`` or ``fpn`` (:data:`evo_fpn.arch.spec.REFERENCE_SPECS`);
    * ``torchvision_fpn``, returned as that string, only with ``allow_torchvision_fpn=True``
      (it is torchvision's FPN, which has no cells to inspect);
    * inline JSON starting with ``{`` (a spec, e.g. a copied ``spec`` user attr);
    * a path (``~`` expanded) to a JSON file holding a spec (``ArchSpec.to_json``), a spec as
      a JSON string (a trial's ``spec`` user attr as stored), a record with a ``spec`` key
      (``metrics.json`` of ``python -m evo_fpn.train``, a saved trial), or a trial's params
      (``cell0.input_i`` ..., decoded in the default search space).

    A file's spec is named after the file. Raises :class:`UsageError` for a source that is none
    of these (an unreadable file) and :class:`~evo_fpn.arch.spec.SpecError` for one that is not a
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
            from evo_fpn.arch.space import NasFpnSpace

            return dataclasses.replace(NasFpnSpace().decode(data), name=name)
    return ArchSpec.from_dict(data, name=name)
