"""``python -m evo_fpn.export``: the entry point; the command lives in :mod:`evo_fpn.cli.export`."""

import sys

from evo_fpn.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
