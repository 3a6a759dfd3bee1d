"""Storage URLs: a password never shows, whatever the URL looks like."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from evo_fpn.storage.urls import StorageError, mask_url, parse_url, scrub
from evo_fpn.study import artifacts as report


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://evo:s3cret@db.lab:5432/evo_fpn", "postgresql+psycopg://evo:***@db.lab:5432/evo_fpn"),
        ("postgresql://user:s3cret@host:notaport/db", "postgresql://user:***@host:notaport/db"),  # bad port
        ("postgresql://user:s3/cret@host:x/db", "postgresql://user:***@host:x/db"),  # '/' in the password
        ("postgresql://user:s3@cret@host/db", "postgresql://***@host/db"),  # unescaped '@': all of the user info
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
    assert scrub("FATAL: auth failed for s3/cret", "postgresql://u:s3/cret@h:x/db") == "FATAL: auth failed for ***"
    assert scrub("no\n password  here", "postgresql://u@h/db") == "no password here"


AMBIGUOUS = [
    # SQLAlchemy reads host SecretHalf, database MoreSecret: half the password would print as the address
    ("postgresql+psycopg://evo:s3hunter2@SecretHalf/MoreSecret?x@127.0.0.1:55432/evo_fpn",
     "postgresql+psycopg://***@127.0.0.1:55432/evo_fpn"),
    # SQLAlchemy reads host SecretHalf@127.0.0.1
    ("postgresql+psycopg://evo:s3hunter2@SecretHalf@127.0.0.1:55432/db", "postgresql+psycopg://***@127.0.0.1:55432/db"),
]  # fmt: skip


@pytest.mark.parametrize(("url", "masked"), AMBIGUOUS)
def test_an_ambiguous_url_masks_everything_between_the_scheme_and_the_last_at(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "s3" not in scrub(f"could not translate host name {url}", url)
    with pytest.raises(StorageError) as exc:
        parse_url(url)  # never connects to part of the password as a host, never prints it
    message = str(exc.value)
    assert masked in message and "%40" in message
    assert "Secret" not in message and "hunter" not in message and "s3" not in message


def test_an_at_in_a_sqlite_path_is_a_path_not_a_password() -> None:
    url = "sqlite:///runs/a@b/c@d.db"
    assert mask_url(url) == url
    assert str(parse_url(url).database) == "runs/a@b/c@d.db"
