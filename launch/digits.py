"""``python -m launch.digits``: ``dpnn digits`` run from the checkout (the code: dpnn/cli/digits.py)."""
import sys

if __name__ == "__main__":
    try:                                     # Ctrl-C while dpnn imports: an interrupt, not a traceback
        from dpnn.cli.digits import main
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(main())
