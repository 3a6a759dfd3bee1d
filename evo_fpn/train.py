"""``python -m evo_fpn.train``: the entry point; the command lives in :mod:`evo_fpn.cli.train`."""

import sys

from evo_fpn.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
