"""``python -m evo_fpn.search``: the entry point; the command lives in :mod:`evo_fpn.cli.search`."""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin
from evo_fpn.cli.search import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
