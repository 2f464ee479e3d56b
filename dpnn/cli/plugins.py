"""``--plugin FILE.py`` and ``--import MODULE``: the user's own code for the command-line tools.

A custom layer decorated with ``@dpnn.register_layer`` loads from an architecture JSON only once
its class is registered; from the shell that means importing the file that defines it:

    dpnn train --plugin my_layers.py --model my_model.json
    dpnn predict --plugin my_layers.py --weights weights.hdf5 photos/
    dpnn gui --import mypackage.layers --weights weights.hdf5

Importing a plugin runs its code, by the user's explicit request on the command line; loading
a weights file still never executes code. The plugin's module is pickled by value for the
worker processes (they need not find it on their own ``sys.path``).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
import traceback
from types import ModuleType

_loaded: dict[str, ModuleType] = {}        # a plugin's absolute path or module name -> its module


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--plugin FILE.py and --import MODULE, each repeatable."""
    parser.add_argument("--plugin", action="append", default=None, metavar="FILE.py",
                        help="import this Python file first, so the layers it registers with "
                             "@dpnn.register_layer load from an architecture JSON (repeatable; runs its code)")
    parser.add_argument("--import", dest="import_modules", action="append", default=None, metavar="MODULE",
                        help="import this module first (on sys.path or in the current directory), like "
                             "--plugin (repeatable)")


def _by_value(module: ModuleType) -> None:
    """Workers get the plugin's classes themselves, not a reference to a module they cannot import."""
    try:
        import cloudpickle
        cloudpickle.register_pickle_by_value(module)
    except (ImportError, AttributeError, ValueError):    # old cloudpickle, or a built-in module
        pass


def _reason(e: BaseException) -> str:
    """The error and the plugin's own line that raised it (the last frame outside this module)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename != __file__
              and "importlib" not in f.filename]
    where = f" (line {frames[-1].lineno} of {frames[-1].filename})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def import_file(path: str) -> ModuleType:
    """Run ``path`` as a module (once per path); ValueError with one line when it cannot be."""
    key = os.path.abspath(path)
    if key in _loaded:
        return _loaded[key]
    if not os.path.isfile(path):
        raise ValueError(f"--plugin {path}: file not found; give the path of a .py file")
    name = "dpnn_plugin_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, key)
    if spec is None or spec.loader is None:
        raise ValueError(f"--plugin {path}: not a Python file; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:                # the user's code: any error is reported, in one line
        del sys.modules[name]
        raise ValueError(f"--plugin {path}: importing it failed: {_reason(e)}") from None
    _by_value(module)
    _loaded[key] = module
    return module


def import_module(name: str) -> ModuleType:
    """Import ``name`` (the current directory first on the path); ValueError with one line otherwise."""
    if name in _loaded:
        return _loaded[name]
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(name)
    except Exception as e:
        raise ValueError(f"--import {name}: importing it failed: {_reason(e)}") from None
    _by_value(module)
    _loaded[name] = module
    return module


def load(args) -> list[ModuleType]:
    """Import every --plugin and --import of ``args`` (those already imported are not run again)."""
    modules = [import_file(p) for p in getattr(args, "plugin", None) or []]
    return modules + [import_module(m) for m in getattr(args, "import_modules", None) or []]
