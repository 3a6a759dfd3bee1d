"""Self-contained plotly pages of searches: one per study, and one comparing studies.

    python -m evo_fpn.dashboard --study NAME [--storage URL] [--out dashboards/out]
    python -m evo_fpn.dashboard --compare 'evo-*' 'rl-*' [--storage URL] [--out dashboards/out]

Each page is a single HTML file with plotly.js inlined, so it opens offline and can be
mailed or archived. Studies are read from ``--storage``, else ``$EVO_FPN_STORAGE``, else
each study's own ``studies/NAME.db`` (the runner's default). ``--study`` and ``--compare``
accept names and shell-style patterns; the comparison page groups the studies by the
sampler recorded with each study and draws the mean and the min-max band over seeds. The
pages are built by :mod:`evo_fpn.viz.pages`; see :mod:`evo_fpn.viz.figures` for what each
figure counts (pruned trials, for instance, are kept out of best-so-far curves).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import optuna

from evo_fpn.cli.common import ArgumentParser, UsageError, guard
from evo_fpn.storage.urls import mask_url
from evo_fpn.viz import pages
from evo_fpn.viz.study_data import StudyData

DEFAULT_DIR = Path("studies")
"""Where the runner keeps one SQLite file per study (``studies/NAME.db``) by default."""
DEFAULT_OUT = "dashboards/out"


def _list_studies(storage: str) -> list[str]:
    try:
        return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    except Exception as exc:  # bad URL, unreachable server, missing driver
        raise UsageError(f"cannot open storage {mask_url(storage)}: {str(exc).splitlines()[0]}") from None


def locate(storage: str | None, patterns: Sequence[str]) -> list[tuple[str, str]]:
    """``(study name, storage URL)`` of the studies matching ``patterns`` (names or globs).

    With a storage (``--storage`` or ``$EVO_FPN_STORAGE``) every study is looked up there;
    without one, each study lives in its own default file ``studies/NAME.db``, as the
    runner stores it, and patterns are matched against the studies in ``studies/*.db``.
    """
    if storage is not None:
        known = [(n, storage) for n in _list_studies(storage)]
        where = mask_url(storage)
    else:
        known = []
        for db in sorted(DEFAULT_DIR.glob("*.db")):
            known += [(n, f"sqlite:///{db}") for n in _list_studies(f"sqlite:///{db}")]
        where = f"{DEFAULT_DIR}/*.db (pass --storage URL for another storage)"
    out: list[tuple[str, str]] = []
    for pattern in patterns:
        hits = [k for k in known if fnmatch.fnmatchcase(k[0], pattern)]
        if not hits:
            names = [n for n, _ in known]
            raise UsageError(
                f"no study matches {pattern!r} in {where}; "
                f"known: {', '.join(names[:10]) or 'none'}{' ...' if len(names) > 10 else ''}"
            )
        out += [k for k in hits if k not in out]
    return out


def _load(name: str, storage: str) -> StudyData:
    return StudyData.from_study(optuna.load_study(study_name=name, storage=storage))


def write_pages(storage: str | None, study: Sequence[str], compare: Sequence[str], out: Path) -> list[Path]:
    """Write the study pages and (if any ``compare``) the comparison page; return their paths."""
    singles = locate(storage, study) if study else []
    written = [pages.write_study_page(_load(name, url), out) for name, url in singles]
    if compare:
        located = [*singles, *[k for k in locate(storage, compare) if k not in singles]]
        written.append(pages.write_compare_page([_load(n, url) for n, url in located], out))
    return written


def _sqlite_file(storage: str) -> Path | None:
    """The database file of a SQLite URL (so a typo is not silently a new, empty database)."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(storage)
    except Exception:
        return None
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m evo_fpn.dashboard",
        description="Write self-contained plotly pages (HTML, plotly.js inlined) of evo-fpn studies.",
    )
    p.add_argument("--study", action="append", default=[], metavar="NAME", help="study to draw (repeatable; glob ok)")
    p.add_argument(
        "--compare", nargs="+", default=[], metavar="STUDY", help="also write one page overlaying these studies"
    )
    p.add_argument(
        "--storage",
        default=os.environ.get("EVO_FPN_STORAGE") or None,
        help="Optuna storage URL (default: $EVO_FPN_STORAGE, else each study's studies/NAME.db)",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the pages (default: {DEFAULT_OUT})")
    return p


@guard
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.study and not args.compare:
        raise UsageError("name a study with --study NAME, or studies to overlay with --compare STUDY ...")
    storage = args.storage
    db = _sqlite_file(storage) if storage is not None else None
    if db is not None and not db.exists():
        raise UsageError(f"no storage file {db}; run a search first or pass --storage URL")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for path in write_pages(storage, args.study, args.compare, Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
