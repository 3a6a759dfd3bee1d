"""Storage URLs: a password never shows, whatever the URL looks like."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from evo_fpn.storage.rdb import StorageError, _scrub, mask_url, parse_url
from evo_fpn.study import artifacts as report


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://evo:s3cret@db.lab:5432/evo_fpn", "postgresql+psycopg://evo:***@db.lab:5432/evo_fpn"),
        ("postgresql://user:s3cret@host:notaport/db", "postgresql://user:***@host:notaport/db"),  # bad port
        ("postgresql://user:s3/cret@host:x/db", "postgresql://user:***@host:x/db"),  # '/' in the password
        ("postgresql://user:s3@cret@host/db", "postgresql://user:***@host/db"),  # unescaped '@'
        ("postgresql://user:s3?cret@host/db", "postgresql://user:***@host/db"),  # unescaped '?'
        ("://user:s3cret@host/db", "://user:***@host/db"),  # no scheme
        ("user:s3cret@host/db", "user:***@host/db"),
        ("postgresql://user@host/db?password=s3cret&sslmode=off", "postgresql://user@host/db?password=***&sslmode=off"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("sqlite:///studies/evo.db", "sqlite:///studies/evo.db"),
        ("sqlite:///C:/runs/a@b.db", "sqlite:///C:/runs/a@b.db"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url_hides_the_password_even_when_sqlalchemy_cannot_parse_the_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "s3" not in mask_url(url)  # every password here starts with s3


def test_the_unparsable_url_really_is_unparsable_and_every_printer_masks_it() -> None:
    url = "postgresql://user:s3cret@host:notaport/db"
    with pytest.raises(ValueError):
        make_url(url)  # SQLAlchemy rejects it: the case report.py used to print unmasked
    with pytest.raises(StorageError) as exc:
        parse_url(url)
    assert "s3cret" not in str(exc.value) and "***" in str(exc.value)
    assert "s3cret" not in report.dashboard_command(url, None)
    with pytest.raises(report.UsageError) as exc2:
        report.default_artifact_dir(url)
    assert "s3cret" not in str(exc2.value)


def test_scrub_removes_the_password_from_driver_messages() -> None:
    assert _scrub("FATAL: auth failed for s3/cret", "postgresql://u:s3/cret@h:x/db") == "FATAL: auth failed for ***"
    assert _scrub("no\n password  here", "postgresql://u@h/db") == "no password here"
