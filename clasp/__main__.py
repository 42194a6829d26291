"""Entry point for ``python -m clasp`` and the zipapp."""

import sys

from clasp.cli import main

if __name__ == "__main__":
    sys.exit(main())
