"""The entry points set OpenMP's passive wait policy before torch loads (a user's value wins)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import sys, evo_fpn\n"
    "assert 'torch' not in sys.modules, 'evo_fpn imports torch before the shim can set the policy'\n"
    "import evo_fpn.{name}, os\n"
    "print(os.environ.get('OMP_WAIT_POLICY'))\n"
)


@pytest.mark.parametrize("name", ["run", "search", "train", "compare", "inspect", "export"])
@pytest.mark.parametrize("user", [None, "ACTIVE"])
def test_entry_points_wait_passively_unless_told(name: str, user: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user:
        env["OMP_WAIT_POLICY"] = user
    out = subprocess.run([sys.executable, "-c", PROBE.format(name=name)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (user or "PASSIVE")
