"""``python -m launch.train``: ``dpnn train`` run from the checkout (the code: dpnn/cli/train.py)."""
import sys

from dpnn.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
