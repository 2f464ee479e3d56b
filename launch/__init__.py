"""Command-line entry points: ``python -m launch.train``, ``launch.gui``, ``launch.data``."""
