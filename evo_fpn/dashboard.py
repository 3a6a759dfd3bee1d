"""``python -m evo_fpn.dashboard``: the entry point; the command lives in :mod:`evo_fpn.cli.dashboard`."""

import sys

from evo_fpn.cli.dashboard import main

if __name__ == "__main__":
    sys.exit(main())
