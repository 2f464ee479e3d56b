"""``python -m launch.train``: ``dpnn train`` run from the checkout (the code: dpnn/cli/train.py)."""
import sys

if __name__ == "__main__":
    try:                                     # Ctrl-C while dpnn imports: an interrupt, not a traceback
        from dpnn.cli.train import main
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(main())
