"""Loss and accuracy curves of a training history as a PNG (matplotlib, from the ``plot`` extra)."""
from __future__ import annotations

import importlib.util
import math

from dpnn.io import atomic_write

INSTALL_HINT = "pip install matplotlib (in a dpnn checkout: pip install -e '.[plot]')"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def matplotlib_available() -> bool:
    """True when matplotlib can be imported (checked without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


def _series(history: dict, key: str) -> list[float]:
    return [math.nan if v is None else float(v) for v in history.get(key, [])]


def event_marks(events: list[dict]) -> list[tuple[int, str, str]]:
    """(1-based epoch, label, line style) of each event drawn on the curves: where early stopping
    stopped (dashed) and whose weights were restored (dotted)."""
    labels = {"early_stopping": ("early stopping", "--"), "restored_best_weights": ("weights restored", ":")}
    return [(e["epoch"], *labels[e["event"]]) for e in events if e.get("event") in labels]


def plot_history(history: dict, path: str, title: str = "", events: list[dict] = ()) -> None:
    """Write ``path`` (PNG, atomically): loss on the left, accuracy on the right, per epoch.

    ``history`` is the dict ``fit`` returns: lists ``loss``, ``acc``, ``val_loss``, ``val_acc``;
    ``events`` (``History.events``) mark the epoch early stopping stopped at and the one whose
    weights were restored, with a vertical line each.
    """
    if not matplotlib_available():
        raise PlotUnavailable(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}")
    import matplotlib
    matplotlib.use("Agg")            # no display needed; must precede pyplot
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            ys = _series(history, prefix + key)
            if ys and not all(math.isnan(v) for v in ys):
                ax.plot(range(1, len(ys) + 1), ys, style, label=("validation " if prefix else "train ") + label)
        for epoch, label, style in event_marks(list(events)):
            ax.axvline(epoch, color="grey", linestyle=style, label=f"{label} (epoch {epoch})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
