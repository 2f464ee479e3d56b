"""The callback contract: :class:`Callback`, Keras's hooks, and the log names they share."""
from __future__ import annotations

KERAS_NAMES = {"accuracy": "acc", "val_accuracy": "val_acc", "learning_rate": "lr"}   # -> dpnn's


def with_keras_names(logs: dict) -> dict:
    """``logs`` with Keras's names beside dpnn's (``accuracy`` = ``acc``...), in place."""
    for keras, ours in KERAS_NAMES.items():
        if ours in logs:
            logs[keras] = logs[ours]
    return logs


class Callback:
    """Override any hook; ``self.model`` (the model), ``self.params`` (``epochs``, ``steps``,
    ``verbose``, as in Keras) and ``self.session`` (the :class:`dpnn.training.TrainingSession`:
    engine, callbacks, progress) are set before training. ``logs`` may be omitted when a hook is
    called by hand (Keras's tests do).

    ``on_train_batch_begin/end`` call ``on_batch_begin/end`` unless overridden (Keras's aliases),
    so override either name.
    """
    model = None
    session = None

    @property
    def params(self) -> dict:
        """Keras's ``{'epochs', 'steps', 'verbose'}`` of the running fit (or what was set)."""
        if "_params" in self.__dict__:
            return self._params
        return self.session.params if self.session is not None else {}

    @params.setter
    def params(self, value) -> None:      # a subclass may keep its own ``self.params``
        self._params = value

    def set_model(self, model) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = params

    def on_train_begin(self, logs: dict | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_batch_end(self, batch: int, logs: dict | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_test_begin(self, logs: dict | None = None) -> None: ...
    def on_test_end(self, logs: dict | None = None) -> None: ...
    def on_train_end(self, logs: dict | None = None) -> None: ...

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_end(batch, logs)

    def announce(self, epoch: int, event: str | None, message: str, verbose: int | None = None) -> None:
        """Tell the user ``message``: recorded in ``History.events`` during fit (unless ``event``
        is None), printed when ``verbose`` > 0, or (``verbose`` None) when fit itself is verbose;
        rank 0 alone prints."""
        if self.session is not None:
            self.session.announce(epoch, event, message, verbose)
        elif verbose:              # called by hand, outside fit
            print(message)
