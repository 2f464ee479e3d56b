"""``python -m launch.predict``: ``dpnn predict`` run from the checkout (the code: dpnn/cli/predict.py)."""
import sys

if __name__ == "__main__":
    try:                                     # Ctrl-C while dpnn imports: an interrupt, not a traceback
        from dpnn.cli.predict import main
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(main())
