"""The README's two set-up commands stay true: CI runs the test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block is not None, "README must open with a bash block of set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.index("```bash") < text.index("\n## "), "the set-up commands come before any section"
    run, test = setup_commands()
    assert run.endswith("python -m evo_fpn.run --study quick") and "pip install -e ." in run
    assert test.endswith("&& pytest") and "'.[dev]'" in test
    assert (ROOT / "studies" / "quick.toml").is_file()


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, test = setup_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci
    # set -e ignores a failure before the last command of an && list: the next line must stop CI
    assert ci[ci.index(test) + 1].startswith("[ $? -eq 0 ] || {")


def test_the_cells_table_is_what_the_records_say(capsys: pytest.CaptureFixture[str]) -> None:
    # The README's ablation table is `bench_cells --report --markdown` over the committed records.
    from benchmarks import bench_cells

    assert bench_cells.main(["--report", "--markdown"]) == 0
    rendered = capsys.readouterr().out.strip()
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- cells-table -->\n", 1)[1].split("\n\n", 1)[0].strip()
    assert table == rendered, "stale: paste `python -m benchmarks.bench_cells --report --markdown`"
