"""``python -m launch.export``: ``dpnn export`` run from the checkout (the code: dpnn/cli/export.py)."""
import sys

from dpnn.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
