"""How many worker processes ``fit`` starts when the caller does not say (``workers=None``).

Every core, wherever starting worker processes is safe: a script file whose training runs under
``if __name__ == '__main__':`` (workers re-import the main script; unguarded training would run
again in each of them), in a process that is not itself a worker, on a platform with the
``forkserver`` start method. Elsewhere (an interactive session, a notebook, an unguarded script,
Windows) one process, and one line saying how to get every core. ``DPNN_FIT_WORKERS`` (an int
or 'auto') overrides the choice; the test suite sets it to 1.
"""
from __future__ import annotations

import ast
import functools
import multiprocessing as mp
import os
import sys

from .placement import parse_count, usable_cores

ENV = "DPNN_FIT_WORKERS"


def is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == '__main__':`` (either side of the ==)."""
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], ast.Eq)):
        return False
    sides = [node.test.left, node.test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    values = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and values == ["__main__"]


@functools.lru_cache(maxsize=8)
def guarded_lines(path: str, mtime: float) -> tuple[tuple[int, int], ...]:
    """(first, last) line of each top-level ``__main__`` guard's body in the script ``path``."""
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return ()
    return tuple((node.body[0].lineno, node.end_lineno) for node in tree.body if is_main_guard(node))


def main_script_call() -> tuple[str | None, bool]:
    """(the main script's path, or None without one; whether this call comes from inside its
    ``__main__`` guard, directly or through the functions the guarded code calls)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not os.path.isfile(path):
        return None, False
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is vars(main) and frame.f_code.co_name == "<module>":
            line = frame.f_lineno
            spans = guarded_lines(os.path.abspath(path), os.path.getmtime(path))
            return path, any(first <= line <= last for first, last in spans)
        frame = frame.f_back
    return path, False           # not under the script's top level (a thread, an atexit hook...)


def default_workers(backend=None) -> tuple[int | str, str | None]:
    """(workers for fit, the one line to show when that is one process on several cores, or None)."""
    if ENV in os.environ:
        return parse_count(os.environ[ENV], ENV), None
    if backend not in (None, "local") or usable_cores() == 1:
        return 1, None               # MPI ranks: one worker each unless workers= says otherwise
    how = "pass workers='auto' to fit to use every core"
    if mp.parent_process() is not None:
        return 1, None               # a worker process itself (importing an unguarded script)
    if "forkserver" not in mp.get_all_start_methods():
        return 1, (f"fit trains in this process (1 of {usable_cores()} cores): this platform has no "
                   f"forkserver start method; {how} from a script under `if __name__ == '__main__':`")
    path, guarded = main_script_call()
    if guarded:
        return "auto", None
    if path is None:
        return 1, f"fit trains in this process (1 of {usable_cores()} cores) outside a script file; {how}"
    return 1, (f"fit trains in this process (1 of {usable_cores()} cores): put the training in "
               f"{os.path.basename(path)} under `if __name__ == '__main__':` to use every core (worker "
               "processes re-import the script)")
