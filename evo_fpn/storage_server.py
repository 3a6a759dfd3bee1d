"""``python -m evo_fpn.storage_server``: the entry point; the command lives in :mod:`evo_fpn.cli.storage_server`."""

import sys

from evo_fpn.cli.storage_server import main

if __name__ == "__main__":
    sys.exit(main())
