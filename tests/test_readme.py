"""The README's two set-up commands stay true: CI runs the test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

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
