"""Storage URLs: which one a command uses, how it is read, and how it is printed without its password.

* SQLite by default (``studies/NAME.db``, one process); ``$EVO_FPN_STORAGE`` or ``--storage``
  choose another (:func:`resolve_url`).
* :func:`parse_url` accepts SQLite files, PostgreSQL through psycopg 3 and ``grpc://HOST:PORT``
  (an evo-fpn storage server), and names the fix for anything else.
* A password comes from the URL, ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads both) and is
  masked wherever a URL is printed (:func:`mask_url`) or echoed by a driver (:func:`scrub`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from evo_fpn.errors import UsageError

ENV_STORAGE = "EVO_FPN_STORAGE"
DEFAULT_DIR = Path("studies")


class StorageError(UsageError):
    """A storage URL that cannot be used; the message names the fix (password masked)."""


def default_url(study_name: str) -> str:
    """``sqlite:///studies/NAME.db`` (relative to the working directory)."""
    return f"sqlite:///{DEFAULT_DIR / (study_name + '.db')}"


def resolve_url(cli_value: str | None, study_name: str) -> str:
    """``--storage`` beats ``$EVO_FPN_STORAGE`` beats the SQLite default."""
    for value in (cli_value, os.environ.get(ENV_STORAGE)):
        if value is not None and value.strip():
            return value.strip()
    return default_url(study_name)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for printing.

    Masks by hand, not through SQLAlchemy, so that a URL SQLAlchemy cannot parse (a bad port,
    a typo) or parses wrongly (an unescaped ``@``, ``/`` or ``?`` in the password) never shows
    its password: the user info runs from ``://`` to the last ``@``, and everything after its
    first ``:`` is the password. When the user info holds another ``@`` the URL is ambiguous
    (SQLAlchemy reads part of the password as the host): then all of it is masked, the user
    too. An ``@`` in the query masks too much, never too little. A ``password=`` query
    parameter is masked too.
    """
    span = password_span(url)
    if span is not None:
        url = f"{url[: span[0]]}***{url[span[1] :]}"
    return _QUERY_PASSWORD.sub(r"\1***", url)


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def password_span(url: str) -> tuple[int, int] | None:
    """``(start, end)`` of what :func:`mask_url` hides in ``scheme://user:password@host...``:
    the password, or the whole user info when it holds another ``@``; ``None`` when there is none."""
    start = url.find("://")
    start = 0 if start < 0 else start + 3  # no scheme: still mask a user:password@ part
    at = url.rfind("@", start)
    if at < 0 or url.startswith("/", start):  # no user info, or a path (sqlite:///dir/a@b.db)
        return None
    if is_ambiguous(url):
        return start, at
    colon = url.find(":", start, at)
    if colon < 0 or "/" in url[start:colon]:  # no user:password@, or a path (sqlite:///C:/...)
        return None
    return colon + 1, at


def is_ambiguous(url: str) -> bool:
    """Whether ``url`` has more than one ``@`` after ``scheme://`` (outside a path such as
    ``sqlite:///dir/a@b.db``): an unescaped ``@`` in the password, which SQLAlchemy would read
    as the end of the user info, taking the rest of the password for the host."""
    start = url.find("://")
    start = 0 if start < 0 else start + 3
    return not url.startswith("/", start) and url.count("@", start) > 1


def scrub(text: str, url: str) -> str:
    """Remove the password of ``url`` from an error text (drivers sometimes echo the DSN)."""
    secrets = set()
    span = password_span(url)
    if span is not None:
        secrets.add(url[span[0] : span[1]])
        colon = url.find(":", span[0], span[1])
        if colon >= 0:  # the password alone (the span may hold the user too)
            secrets.add(url[colon + 1 : span[1]])
    try:
        secrets.add(make_url(url).password)
    except Exception:  # unparsable: the span above is all we know
        pass
    text = " ".join(str(text).split())
    for pw in sorted((str(p) for p in secrets if p), key=len, reverse=True):
        text = text.replace(pw, "***")
    return text


def parse_url(url: str) -> URL:
    """Parse and normalise a storage URL; only SQLite and PostgreSQL (psycopg 3) are supported.

    ``postgresql://`` and ``postgres://`` are read as ``postgresql+psycopg://`` (psycopg 3 is
    the driver this project installs). A server URL with an unescaped ``@`` in the password
    is refused: SQLAlchemy would connect to part of the password as the host.
    """
    try:
        parsed = make_url(url)
    except Exception:
        raise StorageError(
            f"invalid storage URL {mask_url(url)!r}: use sqlite:///path/to/file.db or "
            "postgresql+psycopg://USER@HOST:PORT/DBNAME"
        ) from None
    backend = parsed.get_backend_name()
    if backend != "sqlite" and is_ambiguous(url):
        raise StorageError(
            f"storage URL {mask_url(url)!r} has more than one '@': write an '@' in the password or the query as "
            "%40 (or give the password in PGPASSWORD or ~/.pgpass)"
        )
    if backend == "grpc":
        if not parsed.host or not parsed.port or parsed.database or parsed.username:
            raise StorageError(
                f"storage server URL {mask_url(url)!r} must be grpc://HOST:PORT "
                "(start the server with python -m evo_fpn.storage_server --storage DATABASE_URL)"
            )
        return parsed
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise StorageError(
                "an in-memory SQLite storage cannot be resumed or shared: give a file, e.g. sqlite:///studies/NAME.db"
            )
        return parsed
    if backend in ("postgresql", "postgres"):
        driver = parsed.get_driver_name()
        if backend == "postgres" or driver in ("", "psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        elif driver != "psycopg":
            raise StorageError(f"PostgreSQL driver {driver!r} is not supported: use postgresql+psycopg://...")
        if not parsed.database:
            raise StorageError(f"storage URL {mask_url(url)!r} names no database: add /DBNAME at the end")
        return parsed
    raise StorageError(
        f"unsupported storage {backend!r} in {mask_url(url)!r}: use sqlite:///FILE.db (one process), "
        "postgresql+psycopg://USER@HOST:PORT/DBNAME (many workers) or grpc://HOST:PORT (a storage server)"
    )


def normalise_url(url: str) -> str:
    """The parsed URL as a string with its password (for the storage itself, never printed)."""
    return parse_url(url).render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return parse_url(url).get_backend_name() == "sqlite"


def is_grpc(url: str) -> bool:
    """Whether ``url`` names an evo-fpn storage server (``grpc://HOST:PORT``)."""
    return parse_url(url).get_backend_name() == "grpc"


def sqlite_path(url: str) -> Path | None:
    parsed = parse_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None
