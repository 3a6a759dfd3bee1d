"""``python -m evo_fpn.compare``: the entry point; the command lives in :mod:`evo_fpn.cli.compare`."""

import sys

from evo_fpn.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
