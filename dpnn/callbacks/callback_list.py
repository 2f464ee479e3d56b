"""How the loop calls the callbacks: :class:`CallbackList`, every hook on every callback in order."""
from __future__ import annotations

from .early_stopping import BestWeights
from .history import History

BATCH_ALIASES = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}


class CallbackList:
    """Calls each hook on every callback, after the built-in best-weights tracker and the
    history (so that the others, a checkpoint writer among them, see this epoch recorded)."""

    def __init__(self, callbacks: list, model, history: History | None = None) -> None:
        self.best_weights = BestWeights()
        self.history = history if history is not None else History()
        self.callbacks = [self.best_weights, self.history] + list(callbacks)
        for cb in self.callbacks:
            cb.model = model

    def set_session(self, session) -> None:
        for cb in self.callbacks:
            cb.session = session

    def __getattr__(self, hook: str):
        if not hook.startswith("on_"):
            raise AttributeError(hook)
        alias = BATCH_ALIASES.get(hook)

        def call(*args):
            for cb in self.callbacks:
                method = getattr(cb, hook, None)
                if method is None and alias:           # a duck-typed callback with the old name only
                    method = getattr(cb, alias, None)
                if method is not None:
                    method(*args)
        return call

    def on_diverged(self) -> None:
        """The loss went NaN/inf: put the best weights seen so far back into the model, and the
        optimizer state of that moment (its moments now hold NaN/inf too)."""
        self.best_weights.restore(optimizer=True)
