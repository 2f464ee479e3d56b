"""The history ``fit`` returns: per-epoch lists under dpnn's and Keras's names."""
from __future__ import annotations

from .base import KERAS_NAMES, Callback
from .monitor import monitored


class History(dict, Callback):
    """What ``fit`` returns: ``history.history['loss']`` as in Keras, and the same lists as
    ``history['loss']`` (it is the dict itself). Keys: ``loss``, ``accuracy``, ``learning_rate``
    and, with validation data only, ``val_loss``, ``val_accuracy`` (Keras's names), each also
    under dpnn's short name (``acc``, ``lr``, ``val_acc``): one list under two keys. ``events``:
    what the callbacks announced, e.g.
    ``{'epoch': 3, 'event': 'early_stopping', 'message': 'Epoch 3: early stopping'}``;
    ``epoch``: the (0-based) epochs recorded.

    ``fit(history=d)`` continues the lists of a dict ``d`` (an earlier run's, even one read back
    from JSON with the two names as two lists): they are the same list objects, so ``d``
    follows too.
    """
    KEYS = ("loss", "acc", "val_loss", "val_acc", "lr")

    def __init__(self, history: dict | None = None) -> None:
        super().__init__(history or {})
        self._mirror = history
        self.epoch: list[int] = []
        self.events: list[dict] = []
        for keras, ours in KERAS_NAMES.items():       # one list under both names
            if ours not in self and keras in self:
                self[ours] = self[keras]
            if ours in self:
                self._alias(keras, ours)

    @property
    def history(self) -> "History":
        return self

    def _alias(self, keras: str, ours: str) -> None:
        self[keras] = self[ours]
        if self._mirror is not None:
            self._mirror[ours] = self._mirror[keras] = self[ours]

    def expect(self, keys) -> None:
        """Start these lists (empty) unless they exist, in the caller's dict too; each under
        its Keras name as well."""
        keras_of = {ours: keras for keras, ours in KERAS_NAMES.items()}
        for key in keys:
            values = self.setdefault(key, [])
            if self._mirror is not None:
                self._mirror[key] = values
            if key in keras_of:
                self._alias(keras_of[key], key)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.epoch.append(epoch)
        self.expect(key for key in self.KEYS if key in logs)
        for key in self.KEYS:
            if key in logs:
                self[key].append(float(logs[key]))

    def record(self, epoch: int, event: str, message: str) -> None:
        self.events.append({"epoch": epoch + 1, "event": event, "message": message})


def best_in_history(history: dict, best: float, monitor: str | None = None) -> int | None:
    """The first (0-based) epoch of ``history`` whose monitored figure is ``best``, or None."""
    n = len(history.get("loss", []))
    for epoch in range(n):
        logs = {k: v[epoch] for k, v in history.items() if isinstance(v, list) and len(v) == n}
        if monitored(logs, monitor)[1] == best:
            return epoch
    return None
