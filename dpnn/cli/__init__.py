"""dpnn's commands: ``dpnn train``, ``predict``, ``export``, ``data``, ``gui``, ``digits``.

One implementation, three ways in: the ``dpnn`` console script (``dpnn/cli/main.py``, installed
with the package, runs from any folder), ``python -m dpnn`` (the same), and ``python -m
launch.train`` ... in a checkout (``launch/`` holds one-line shims). What a command prints names
the way it was started, so a hint pasted into the same shell works.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys

COMMANDS = ("train", "predict", "export", "data", "gui", "digits")


def _started_as() -> str:
    """'dpnn' (the console script), 'module' (python -m dpnn) or 'launch' (python -m launch.NAME)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "dpnn":
        return "dpnn"
    if os.path.basename(argv0) == "__main__.py" and os.path.basename(os.path.dirname(argv0)) == "dpnn":
        return "module"
    return "launch"


def prog(name: str) -> str:
    """The command ``name`` as its user typed it: ``dpnn train`` or ``dpnn train``
    (usage lines and error prefixes)."""
    return {"dpnn": f"dpnn {name}", "module": f"python -m dpnn {name}"}.get(_started_as(),
                                                                           f"python -m launch.{name}")


def runnable(name: str) -> str:
    """The command ``name`` as a line to paste into a shell, working outside an activated venv:
    ``dpnn train`` when that is the script on PATH, else the script's or the interpreter's path
    (``.venv/bin/dpnn train``, ``.venv/bin/dpnn train``)."""
    how = _started_as()
    if how == "dpnn":
        script = os.path.abspath(sys.argv[0])
        found = shutil.which("dpnn")
        if found and os.path.samefile(found, script):
            return f"dpnn {name}"
        return f"{shlex.quote(_short(script))} {name}"
    module = f"dpnn {name}" if how == "module" else f"launch.{name}"
    return f"{shlex.quote(_short(sys.executable))} -m {module}"


def _short(path: str) -> str:
    """``path`` relative to the current folder when it lies inside it (a checkout's .venv)."""
    return os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path
