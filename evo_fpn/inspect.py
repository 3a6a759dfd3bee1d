"""``python -m evo_fpn.inspect``: the entry point; the command lives in :mod:`evo_fpn.cli.inspect`."""

import sys

from evo_fpn.cli.inspect import main

if __name__ == "__main__":
    sys.exit(main())
