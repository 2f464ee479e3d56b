"""``python -m launch.gui``: ``dpnn gui`` run from the checkout (the code: dpnn/cli/gui.py)."""
import sys

from dpnn.cli.gui import main

if __name__ == "__main__":
    sys.exit(main())
