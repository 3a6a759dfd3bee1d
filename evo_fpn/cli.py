"""Shared command-line plumbing: bad input becomes one clear line and exit code 2.

Every ``python -m evo_fpn.X`` entry point wraps its ``main`` with :func:`guard`, and raises
:class:`UsageError` (or one of the library's own error types) for anything the user can fix.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from evo_fpn.spec import SpecError

F = TypeVar("F", bound=Callable[..., int | None])


class UsageError(Exception):
    """Something the user can fix: the message names the problem and the fix."""


USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, SpecError)
"""Exception types shown as one line (exit 2) instead of a traceback. Modules may extend it."""


def register_user_error(exc_type: type[BaseException]) -> None:
    """Let a module's own error type be reported as a one-line user error."""
    global USER_ERRORS
    if exc_type not in USER_ERRORS:
        USER_ERRORS = (*USER_ERRORS, exc_type)


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
