"""Exceptions dpnn raises for user mistakes and engine failures."""


class DataError(ValueError):
    """A data file or array is malformed (bad IDX header, NaN pixels, labels out of range...)."""


class WeightsError(ValueError):
    """A weights/architecture file is missing, corrupt, or does not match its model."""


class NotPortableError(TypeError):
    """A layer, loss, optimizer or augmentation function cannot be sent to the worker processes
    (it holds a lock, an open file...); the message names it and says what to do."""


class WorkerError(RuntimeError):
    """A data-parallel worker raised or died; the message names it and carries its traceback."""


class OutputError(WeightsError, OSError):
    """An output file could not be written (full disk, a device or directory in its place...);
    what was already there is intact.

    An OSError by nature; also a WeightsError so that every CLI which reports unusable
    weights files with one line reports a failed write the same way. ``path`` is the file,
    ``what`` which output it is ("checkpoint", "--out", "--history"...; "output" by default),
    ``reason`` why, in a few words ("No space left on device").
    """

    def __new__(cls, message: str, *args, **kwargs):
        return OSError.__new__(cls, message)         # OSError would read 3 arguments as errno...

    def __init__(self, message: str, path: str | None = None, what: str = "output",
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.path, self.what, self.reason = path, what, reason or message
