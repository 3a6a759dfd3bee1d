"""Shared command-line plumbing: bad input becomes one clear line and exit code 2.

Every ``python -m evo_fpn.X`` entry point wraps its ``main`` with :func:`guard`, and raises
:class:`UsageError` (or one of the library's own error types) for anything the user can fix.
The pieces every entry point shares live here once, so they cannot drift apart:
:class:`ArgumentParser` (a bad flag is a ``UsageError``), :func:`parse_sets` (``--set
KEY=VALUE`` with TOML values) and :func:`load_arch` (an architecture named on the command line).
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from evo_fpn.arch.load import TORCHVISION_FPN, load_arch  # noqa: F401  (the entry points name architectures)
from evo_fpn.arch.spec import SpecError
from evo_fpn.errors import DatasetError, TrialFailed, UsageError

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
        except Exception as exc:
            reason = disk_full(exc)
            if reason is None:
                raise
            return fail(
                f"the disk is full ({reason}): free space there and rerun the same command; finished trials "
                "are kept and the interrupted one is retried",
                code=1,
            )

    return wrapper  # type: ignore[return-value]


DISK_FULL = ("database or disk is full", "no space left on device", "could not extend file", "disk quota exceeded")
"""How SQLite, the OS and PostgreSQL say that a write found no space."""


def disk_full(exc: BaseException) -> str | None:
    """The disk-full reason anywhere in ``exc``'s chain (``None``: not a full disk). Optuna wraps
    SQLite's error in its own and may raise an unrelated one after it, so the chain is read."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return os.strerror(exc.errno).lower()
        text = str(exc).lower()
        for sign in DISK_FULL:
            if sign in text:
                return sign
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one ``error:`` line (exit 2 via :func:`guard`) like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a bad one is argparse's one-line error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def image_size_arg(text: str) -> tuple[int, int]:
    """An argparse type: ``S`` or ``HxW`` -> (height, width)."""
    from evo_fpn.model.cost import image_hw

    try:
        values = [int(p) for p in text.lower().split("x")]
        return image_hw(values[0] if len(values) == 1 else tuple(values))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S or HxW with positive integers, got {text!r}") from None


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
