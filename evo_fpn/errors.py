"""Errors that cross module boundaries, in a leaf module so that nothing imports upwards.

Library code raises these (or ordinary exceptions); the command line (:mod:`evo_fpn.cli.common`)
maps them to its one-line errors. :class:`TrialFailed` fails one trial (the runner records
its reason and goes on); :class:`DatasetError` and :class:`UsageError` name the fix.
"""

from __future__ import annotations


class TrialFailed(Exception):
    """The trial cannot produce a score (e.g. the loss became non-finite); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UsageError(Exception):
    """Something the user can fix: the message names the problem and the fix."""


class DatasetError(Exception):
    """A dataset the loader cannot use; the message names the file and the fix."""
