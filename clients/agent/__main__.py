"""`python -m clients.agent`: the same as the `reclo-agent` command."""

import sys

from .entry import main

if __name__ == "__main__":  # not when merely imported (the layering test imports every module)
    sys.exit(main())
