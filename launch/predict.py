"""``python -m launch.predict``: ``dpnn predict`` run from the checkout (the code: dpnn/cli/predict.py)."""
import sys

from dpnn.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
