"""``python -m launch.gui``: ``dpnn gui`` run from the checkout (the code: dpnn/cli/gui.py)."""
import sys

if __name__ == "__main__":
    try:                                     # Ctrl-C while dpnn imports: an interrupt, not a traceback
        from dpnn.cli.gui import main
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(main())
