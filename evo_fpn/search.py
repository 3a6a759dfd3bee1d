"""``python -m evo_fpn.search``: the entry point; the command lives in :mod:`evo_fpn.cli.search`."""

import sys

from evo_fpn.cli.search import main

if __name__ == "__main__":
    sys.exit(main())
