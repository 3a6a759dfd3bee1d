"""The README and the docs stay true: CI runs the README's test command verbatim, the README stays
a short page for users, and the benchmark tables in docs/ are what the committed records say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

SETUP = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && python -m evo_fpn.run --study quick",
    "python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[dev]' && pytest",
)
"""The README's two set-up commands, verbatim: the install-and-demo command and the test command."""

MAX_README_LINES = 350
"""The README is the users' page; measurements and the long guide live in docs/."""


def setup_commands() -> list[str]:
    text = README.read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block is not None, "README must open with a bash block of set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_setup_commands() -> None:
    text = README.read_text()
    assert text.index("```bash") < text.index("\n## "), "the set-up commands come before any section"
    run, test = setup_commands()
    assert run.endswith("python -m evo_fpn.run --study quick") and "pip install -e ." in run
    assert test.endswith("&& pytest") and "'.[dev]'" in test
    assert (ROOT / "studies" / "quick.toml").is_file()


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) < MAX_README_LINES, f"README has {len(lines)} lines: move detail to docs/"
    # the title, then the bash block of the two commands, before any other text
    assert lines[0].startswith("# ") and lines[1:3] == ["", "```bash"], lines[:3]
    assert tuple(lines[3:5]) == SETUP and lines[5] == "```", lines[3:6]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, test = setup_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci
    # set -e ignores a failure before the last command of an && list: the next line must stop CI
    assert ci[ci.index(test) + 1].startswith("[ $? -eq 0 ] || {")


def test_ci_builds_the_docs_strictly_after_lint() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    build = ci.index("mkdocs build --strict")
    assert any(line.startswith("ruff check") for line in ci[:build]), "the site is built after the lint step"


def test_the_readmes_links_reach_files_that_exist() -> None:
    # mkdocs --strict checks the links between docs pages; the README is not one of them
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [link.split("#", 1)[0] for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")]
    assert local, "the README links to its docs pages"
    assert [link for link in local if not (ROOT / link).exists()] == []


def page_table(page: str, name: str) -> str:
    """The text between ``<!-- NAME-table -->`` and ``<!-- /NAME-table -->`` on a docs page."""
    text = (DOCS / page).read_text()
    start, end = f"<!-- {name}-table -->", f"<!-- /{name}-table -->"
    assert text.count(start) == 1 and text.count(end) == 1, f"docs/{page} marks its table once"
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_the_cells_table_is_what_the_records_say(capsys: pytest.CaptureFixture[str]) -> None:
    # docs/benchmarks/cells.md's ablation table is `bench_cells --report --markdown` over the committed records.
    from benchmarks import bench_cells

    assert bench_cells.main(["--report", "--markdown"]) == 0
    rendered = capsys.readouterr().out.strip()
    table = page_table("benchmarks/cells.md", "cells")
    assert table == rendered, "stale: paste `python -m benchmarks.bench_cells --report --markdown`"


def test_the_supernet_table_is_what_the_records_say(capsys: pytest.CaptureFixture[str]) -> None:
    # docs/benchmarks/supernet.md's lever table (and its line on the proxy's own seeds) is
    # `bench_supernet --report --markdown` over the committed records.
    from benchmarks import bench_supernet

    assert bench_supernet.main(["--report", "--markdown"]) == 0
    rendered = capsys.readouterr().out.strip()
    table = page_table("benchmarks/supernet.md", "supernet")
    assert table == rendered, "stale: paste `python -m benchmarks.bench_supernet --report --markdown`"
