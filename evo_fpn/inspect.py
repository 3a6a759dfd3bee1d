"""``python -m evo_fpn.inspect``: the entry point; the command lives in :mod:`evo_fpn.cli.inspect`."""

import os
import sys

# Before torch loads OpenMP: threads waiting at a barrier sleep instead of spinning, so a run
# beside another CPU job does not burn the shared cores against it (issue 31); a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from evo_fpn.cli.inspect import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
