"""``python -m launch.export``: ``dpnn export`` run from the checkout (the code: dpnn/cli/export.py)."""
import sys

if __name__ == "__main__":
    try:                                     # Ctrl-C while dpnn imports: an interrupt, not a traceback
        from dpnn.cli.export import main
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(main())
