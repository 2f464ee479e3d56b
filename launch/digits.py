"""``python -m launch.digits``: ``dpnn digits`` run from the checkout (the code: dpnn/cli/digits.py)."""
import sys

from dpnn.cli.digits import main

if __name__ == "__main__":
    sys.exit(main())
