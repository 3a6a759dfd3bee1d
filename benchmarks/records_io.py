"""The benchmarks' records: committed JSON lines, one run a line, read the same way everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``benchmarks/records/*.jsonl`` file (none when it does not exist yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
