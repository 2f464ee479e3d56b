"""``python -m launch.data``: ``dpnn data`` run from the checkout (the code: dpnn/cli/data.py)."""
import sys

if __name__ == "__main__":
    try:                                     # Ctrl-C while dpnn imports: an interrupt, not a traceback
        from dpnn.cli.data import main
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(main())
