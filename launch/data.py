"""``python -m launch.data``: ``dpnn data`` run from the checkout (the code: dpnn/cli/data.py)."""
import sys

from dpnn.cli.data import main

if __name__ == "__main__":
    sys.exit(main())
