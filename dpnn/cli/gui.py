"""Draw a digit, see the model's top-3 guesses.

    dpnn digits                          # train the default digit model first
    dpnn gui                             # weights/digits.hdf5 (+ weights/digits.json)
    dpnn gui --weights runs/x/model.hdf5 # any model saved by dpnn train or Model.save
    dpnn gui --plugin my_layers.py --weights custom.hdf5   # a model with your own layers

Draw with the left mouse button; a prediction follows every stroke. Keys: ``c`` clear,
``p``/Return predict, ``q``/Escape quit. Every prediction is also printed to stdout as
one line, ``prediction: 7 0.93 | 1 0.04 | 9 0.01`` (class, probability; best first), so
a session can be scripted and logged. Once the window is up, one line
``ready: canvas WxH+X+Y`` gives the drawing area's position inside the window.

An unusable weights file is reported as one ``error:`` line on stderr (exit status 2);
an error dialog is shown too only when someone can close it: by default when stdin is a
terminal and the display is not a virtual one made by ``xvfb-run`` (``--error-dialog
always`` for a desktop launcher, ``never`` for scripts).

Exit status: 0 normal quit, 2 unusable weights file or no display.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from dpnn.datasets import DIGIT_CLASSES, FASHION_CLASSES
from dpnn.digits import preprocess_drawing
from dpnn.errors import WeightsError
from dpnn.io import read_model_info

from . import plugins, prog
from .drawing import BUFFER_SIZE, DrawingBuffer, Viewport
from .predict import class_probabilities

DEFAULT_WEIGHTS = os.path.join("weights", "digits.hdf5")   # written by `dpnn digits`
INPUT_SHAPE = (28, 28, 1)
TOP_K = 3
EXIT_ERROR = 2
TITLE = "dpnn digit predictor"
ERROR_TITLE = "dpnn predictor: error"     # no model loaded: nothing to name the window after


class Classifier:
    """A loaded model that turns a drawing buffer into ranked (class name, probability) pairs."""

    def __init__(self, model, class_names: list[str]) -> None:
        self.model, self.class_names = model, class_names

    def rank(self, x: np.ndarray, k: int = TOP_K) -> list[tuple[str, float]]:
        """Model input (1, 28, 28, 1) -> the k most probable (class, probability), best first."""
        probs = class_probabilities(self.model, x)[0]  # (K,): a softmax output is not applied twice
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.class_names[i], float(probs[i])) for i in order]

    def classify(self, pixels: np.ndarray, k: int = TOP_K) -> list[tuple[str, float]] | None:
        """Drawing (H, W) ink-high -> :meth:`rank` of its preprocessed image; None if empty."""
        x = preprocess_drawing(pixels)  # (1, 28, 28, 1) or None
        return None if x is None else self.rank(x, k)


def format_prediction(top: list[tuple[str, float]]) -> str:
    """``prediction: 7 0.93 | 1 0.04 | 9 0.01``."""
    return "prediction: " + " | ".join(f"{name} {p:.2f}" for name, p in top)


def class_names_for(metadata: dict, num_classes: int) -> list[str]:
    """Names from the model's metadata, else digits / Fashion-MNIST names / indices."""
    if not isinstance(metadata, dict):      # not a JSON object: as good as no metadata
        metadata = {}
    names = metadata.get("class_names")
    if isinstance(names, list) and len(names) == num_classes:
        return [str(n) for n in names]
    dataset = str(metadata.get("dataset", ""))
    if "fashion" in dataset.lower() and num_classes == len(FASHION_CLASSES):
        return list(FASHION_CLASSES)
    if num_classes == len(DIGIT_CLASSES):
        return list(DIGIT_CLASSES)
    return [str(i) for i in range(num_classes)]


def window_title(classifier: Classifier, weights: str) -> str:
    """'dpnn digit predictor - digits.hdf5' for digits; else named after the model's data set
    ('dpnn fashion-mnist predictor - weights.hdf5') or, without one, 'dpnn image predictor'."""
    metadata = classifier.model.metadata if isinstance(classifier.model.metadata, dict) else {}
    what = "digit" if classifier.class_names == DIGIT_CLASSES else str(metadata.get("dataset") or "image")
    return f"dpnn {what} predictor - {os.path.basename(weights)}"


def load_classifier(path: str) -> Classifier:
    """Load ``path`` and check it classifies 28x28x1 images; raises WeightsError otherwise."""
    from dpnn import Model
    if not os.path.lexists(path) and not os.path.lexists(path + ".npz"):
        hint = ""
        if path == DEFAULT_WEIGHTS:
            hint = " (train it with `make digits` or `dpnn digits`)"
        raise WeightsError(f"weights file {path!r} not found{hint}; pass --weights PATH")
    _, input_shape, _ = read_model_info(path)       # refuse another input before building it
    if input_shape is not None and tuple(input_shape) != INPUT_SHAPE:
        raise WeightsError(f"{path} cannot be used to classify drawings: it takes inputs of shape "
                           f"{tuple(input_shape)}; the GUI needs a classifier of 28x28x1 images "
                           "(N, 28, 28, 1) -> (N, classes)")
    model = Model.load(path)
    try:
        if not model.built:
            model.build((1, *INPUT_SHAPE))
        if tuple(model.input_shape[1:]) != INPUT_SHAPE:
            raise ValueError(f"it takes inputs of shape {tuple(model.input_shape[1:])}")
        if len(model.output_shape) != 2 or model.output_shape[1] < 2:
            raise ValueError(f"its output has shape {tuple(model.output_shape[1:])}, not class scores")
    except ValueError as e:
        raise WeightsError(f"{path} cannot be used to classify drawings: {e}; the GUI needs a "
                           "classifier of 28x28x1 images (N, 28, 28, 1) -> (N, classes)") from None
    return Classifier(model, class_names_for(model.metadata, model.output_shape[1]))


def display_problem() -> str | None:
    """Why Tk cannot open a window here, or None when it probably can."""
    if sys.platform.startswith(("win", "darwin")):
        return None
    if not os.environ.get("DISPLAY"):
        return ("no display: DISPLAY is not set. Run the GUI in a desktop session, with ssh -X, "
                "or under a virtual X server (xvfb-run dpnn gui ...)")
    return None


def wants_dialog(mode: str) -> bool:
    """Whether to show an error dialog: 'always', 'never', or 'auto' = someone can close it.

    'auto' needs a terminal on stdin and a display that is not xvfb-run's: under xvfb-run
    or from a script, a dialog would wait forever for a click nobody can give.
    """
    if mode != "auto":
        return mode == "always"
    under_xvfb_run = "xvfb-run" in os.environ.get("XAUTHORITY", "")
    return sys.stdin is not None and sys.stdin.isatty() and not under_xvfb_run


def fail(message: str, dialog: str = "auto") -> int:
    """Report an error on stderr, and in a dialog when :func:`wants_dialog` says so."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    if wants_dialog(dialog) and display_problem() is None:
        import tkinter as tk
        from tkinter import messagebox
        try:
            root = tk.Tk()
        except tk.TclError:   # no usable display after all; stderr has the message
            return EXIT_ERROR
        root.withdraw()
        messagebox.showerror(ERROR_TITLE, message, parent=root)
        root.destroy()
    return EXIT_ERROR


class DigitApp:
    """The Tk window: a resizable drawing canvas, top-k probability bars, Clear/Predict buttons.

    All drawing state lives in ``buffer`` (a :class:`DrawingBuffer`); the canvas only
    shows it, scaled by a :class:`Viewport`, and is redrawn from its strokes on resize.
    """

    PAPER, INK, BACKGROUND = "white", "black", "#b8b8b8"

    def __init__(self, root, classifier: Classifier, buffer: DrawingBuffer, title: str = TITLE) -> None:
        import tkinter as tk
        from tkinter import ttk
        self.root, self.classifier, self.buffer = root, classifier, buffer
        root.title(title)
        root.minsize(420, 300)
        root.columnconfigure(0, weight=1)
        root.rowconfigure(0, weight=1)
        self.canvas = tk.Canvas(root, width=BUFFER_SIZE, height=BUFFER_SIZE, bg=self.BACKGROUND,
                                highlightthickness=0, cursor="pencil")
        self.canvas.grid(row=0, column=0, sticky="nsew", padx=8, pady=8)
        self.view = Viewport(BUFFER_SIZE, BUFFER_SIZE, buffer.size)
        panel = ttk.Frame(root, padding=(0, 8, 8, 8))
        panel.grid(row=0, column=1, sticky="ns")
        ttk.Label(panel, text=f"Top {TOP_K}", font=("TkDefaultFont", 12, "bold")).grid(
            row=0, column=0, columnspan=3, sticky="w")
        self.names, self.bars, self.percents = [], [], []
        for i in range(TOP_K):
            name = ttk.Label(panel, text="-", width=12, font=("TkDefaultFont", 14 if i == 0 else 11))
            bar = ttk.Progressbar(panel, length=140, maximum=100.0, mode="determinate")
            pct = ttk.Label(panel, text="", width=6, anchor="e")
            name.grid(row=1 + i, column=0, sticky="w", pady=2)
            bar.grid(row=1 + i, column=1, padx=4)
            pct.grid(row=1 + i, column=2, sticky="e")
            self.names.append(name), self.bars.append(bar), self.percents.append(pct)
        ttk.Label(panel, text="model input (28x28)").grid(row=5, column=0, columnspan=3, sticky="w",
                                                          pady=(12, 0))
        self.preview_image = preview_photo(None)
        self.preview = tk.Label(panel, image=self.preview_image, bd=0)
        self.preview.grid(row=6, column=0, columnspan=3, sticky="w")
        self.status = ttk.Label(panel, text="Draw a digit with the mouse", wraplength=260)
        self.status.grid(row=7, column=0, columnspan=3, sticky="w", pady=8)
        buttons = ttk.Frame(panel)
        buttons.grid(row=8, column=0, columnspan=3, sticky="w")
        ttk.Button(buttons, text="Clear (c)", command=self.clear).pack(side="left")
        ttk.Button(buttons, text="Predict (p)", command=self.predict).pack(side="left", padx=4)
        self._bind_events()

    def _bind_events(self) -> None:
        c = self.canvas
        c.bind("<Configure>", self._on_resize)
        c.bind("<ButtonPress-1>", self._on_press)
        c.bind("<B1-Motion>", self._on_drag)
        c.bind("<ButtonRelease-1>", self._on_release)
        for key in ("c", "C"):
            self.root.bind(f"<KeyPress-{key}>", lambda e: self.clear())
        for key in ("<KeyPress-p>", "<KeyPress-P>", "<Return>"):
            self.root.bind(key, lambda e: self.predict())
        for key in ("<KeyPress-q>", "<KeyPress-Q>", "<Escape>"):
            self.root.bind(key, lambda e: self.root.destroy())
        self.root.protocol("WM_DELETE_WINDOW", self.root.destroy)

    # -- drawing ------------------------------------------------------------------------
    def _brush_width(self) -> float:
        return 2 * self.buffer.brush_radius / self.view.scale

    def _on_press(self, event) -> None:
        x, y = self.view.to_buffer(event.x, event.y)
        self.buffer.begin_stroke(x, y)
        r = self.buffer.brush_radius / self.view.scale
        self.canvas.create_oval(event.x - r, event.y - r, event.x + r, event.y + r,
                                fill=self.INK, outline="", tags="ink")
        self.canvas.tag_raise("margin")

    def _on_drag(self, event) -> None:
        prev = self.buffer.extend_stroke(*self.view.to_buffer(event.x, event.y))
        if prev is not None:
            self.canvas.create_line(*self.view.to_widget(*prev), event.x, event.y, fill=self.INK,
                                    width=self._brush_width(), capstyle="round", tags="ink")
            self.canvas.tag_raise("margin")   # ink outside the square is not in the buffer

    def _on_release(self, event) -> None:
        if self.buffer.end_stroke():
            self.predict()

    def _on_resize(self, event) -> None:
        self.view = Viewport(event.width, event.height, self.buffer.size)
        self.redraw()

    def redraw(self) -> None:
        """Repaint the paper square and every stroke at the current scale."""
        c, view = self.canvas, self.view
        c.delete("all")
        (x0, y0), (x1, y1) = view.to_widget(0, 0), view.to_widget(self.buffer.size, self.buffer.size)
        c.create_rectangle(x0, y0, x1, y1, fill=self.PAPER, outline="")
        r = self.buffer.brush_radius / view.scale
        for stroke in self.buffer.strokes:
            points = [v for p in stroke for v in view.to_widget(*p)]
            if len(stroke) == 1:
                x, y = points
                c.create_oval(x - r, y - r, x + r, y + r, fill=self.INK, outline="", tags="ink")
            else:
                c.create_line(*points, fill=self.INK, width=2 * r, capstyle="round",
                              joinstyle="round", tags="ink")
        w, h = view.width, view.height
        for box in ((0, 0, w, y0), (0, y1, w, h), (0, 0, x0, h), (x1, 0, w, h)):   # around the paper
            c.create_rectangle(*box, fill=self.BACKGROUND, outline="", tags="margin")

    # -- actions ------------------------------------------------------------------------
    def clear(self) -> None:
        self.buffer.clear()
        self.canvas.delete("ink")
        self._show(None, None)
        self.status.configure(text="Draw a digit with the mouse")

    def predict(self) -> None:
        """Classify the drawing, update the bars and print one ``prediction:`` line."""
        x = preprocess_drawing(self.buffer.pixels)  # (1, 28, 28, 1) or None
        if x is None:
            self._show(None, None)
            self.status.configure(text="The canvas is empty: draw a digit first")
            return
        top = self.classifier.rank(x)
        self._show(top, x[0, :, :, 0])
        name, p = top[0]
        self.status.configure(text=f"Looks like {name} ({100 * p:.0f}%)")
        print(format_prediction(top), flush=True)

    def _show(self, top: list[tuple[str, float]] | None, image: np.ndarray | None) -> None:
        for i in range(TOP_K):
            name, p = top[i] if top and i < len(top) else ("-", None)
            self.names[i].configure(text=name)
            self.bars[i].configure(value=0.0 if p is None else 100.0 * p)
            self.percents[i].configure(text="" if p is None else f"{100 * p:.1f}%")
        self.preview_image = preview_photo(image)
        self.preview.configure(image=self.preview_image)

    # -- main loop ----------------------------------------------------------------------
    def run(self) -> int:
        """Show the window, announce the canvas geometry on stdout, run until quit."""
        self.root.update()
        self.root.focus_force()
        c = self.canvas
        dx, dy = c.winfo_rootx() - self.root.winfo_rootx(), c.winfo_rooty() - self.root.winfo_rooty()
        print(f"ready: canvas {c.winfo_width()}x{c.winfo_height()}+{dx}+{dy}", flush=True)
        self._poll()
        try:
            self.root.mainloop()
        except KeyboardInterrupt:
            return 130
        return 0

    def _poll(self) -> None:
        # Tk's loop does not return to Python while idle; waking it lets Ctrl-C through.
        self.root.after(250, self._poll)


def preview_photo(image: np.ndarray | None, zoom: int = 4):
    """A Tk photo of a (28, 28) image in [0, 1] (white ink on black), enlarged ``zoom`` times."""
    import tkinter as tk
    size = INPUT_SHAPE[0]
    pixels = np.zeros((size, size)) if image is None else image
    grey = np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)  # (28, 28)
    big = np.repeat(np.repeat(grey, zoom, axis=0), zoom, axis=1)  # (28*zoom, 28*zoom)
    header = f"P5 {big.shape[1]} {big.shape[0]} 255\n".encode()
    return tk.PhotoImage(data=header + big.tobytes(), format="PPM")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog("gui"), description=__doc__.split("\n")[0],
                                     epilog="Keys: c clear, p/Return predict, q/Escape quit. "
                                            "Exit status 2: unusable weights or no display.")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS,
                        help=f"model weights written by Model.save / dpnn train, with the "
                             f"architecture JSON beside it (default: {DEFAULT_WEIGHTS})")
    parser.add_argument("--error-dialog", choices=("auto", "always", "never"), default="auto",
                        help="also show errors in a dialog: auto (default) when stdin is a "
                             "terminal and the display is not xvfb-run's, always, or never")
    parser.add_argument("--brush", type=float, default=None,
                        help="brush radius in pixels of the 280x280 drawing (default: 11)")
    plugins.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.brush is not None and not 1 <= args.brush <= 40:
        parser.error(f"--brush must be between 1 and 40, got {args.brush}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plugins.load(args)                  # the layers of a custom model, before its JSON is read
        classifier = load_classifier(args.weights)
    except (ValueError, OSError) as e:   # WeightsError is a ValueError
        return fail(str(e), args.error_dialog)
    problem = display_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    import tkinter as tk
    try:
        root = tk.Tk(className="dpnn")
    except tk.TclError as e:
        print(f"error: cannot open a window on display {os.environ.get('DISPLAY', '')!r}: {e}",
              file=sys.stderr, flush=True)
        return EXIT_ERROR
    buffer = DrawingBuffer(BUFFER_SIZE, args.brush) if args.brush else DrawingBuffer()
    app = DigitApp(root, classifier, buffer, title=window_title(classifier, args.weights))
    names = ", ".join(classifier.class_names)
    print(f"model: {args.weights} ({len(classifier.class_names)} classes: {names})", flush=True)
    return app.run()


if __name__ == "__main__":
    sys.exit(main())
