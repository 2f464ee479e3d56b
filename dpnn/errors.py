"""Exceptions dpnn raises for user mistakes and engine failures."""


class DataError(ValueError):
    """A data file or array is malformed (bad IDX header, NaN pixels, labels out of range...)."""


class WeightsError(ValueError):
    """A weights/architecture file is missing, corrupt, or does not match its model."""


class WorkerError(RuntimeError):
    """A data-parallel worker raised or died; the message names it and carries its traceback."""
