"""``python -m evo_fpn.run``: the entry point; the command lives in :mod:`evo_fpn.cli.run`."""

import sys

from evo_fpn.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
