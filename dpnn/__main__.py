"""``python -m dpnn train ...``: the ``dpnn`` command without its script on PATH."""
import sys

from dpnn.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
