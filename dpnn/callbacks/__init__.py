"""Keras-like callbacks: the history fit returns, early stopping, learning-rate schedules,
checkpoints, CSV and TensorBoard logs. One concept a module; every name is importable from here.

The loop (:class:`dpnn.training.TrainingSession`) calls every hook with Keras-style ``logs``
(Keras's names and dpnn's short ones, ``accuracy``/``acc``, ``learning_rate``/``lr``, side by side):

====================  ==================================================================================
on_train_begin        the engine (``engine``, ``workers``, ``ranks``, ``rank``...), ``samples``,
                      ``epochs``, ``initial_epoch``, ``batch_size``, ``steps``, ``validation``
on_epoch_begin        ``lr``, ``epochs``, ``samples``, ``steps``, ``batch_size``
on_train_batch_begin  ``batch`` (0-based step of the epoch), ``size``  (also ``on_batch_begin``)
on_train_batch_end    ``batch``, ``size``, ``loss``, ``accuracy`` of that batch, ``lr``  (also
                      ``on_batch_end``); ``model.stop_training = True`` here stops after this batch
on_test_begin/end     around the validation pass; ``on_test_end`` gets its ``loss``, ``accuracy``
on_epoch_end          ``loss``, ``accuracy``, ``val_loss``/``val_accuracy`` (only with validation
                      data), ``learning_rate``, ``samples_per_s``, ``time``
on_train_end          the last epoch's logs, ``epochs_run`` (counting earlier runs), ``stopped_epoch``
                      (1-based, or None)
====================  ==================================================================================

Every hook runs in the coordinator (and on every MPI rank, with the same numbers: the logs are
sums over the global batch); files are written by rank 0 alone. What a callback wants the user
to know (early stopping, weights restored, a learning-rate cut) goes through ``announce``:
printed when fit is verbose (or the callback's ``verbose=1``), recorded in ``History.events``
either way. Printing itself is a callback too (:mod:`dpnn.reporting`).
"""
from .base import KERAS_NAMES, Callback, with_keras_names  # noqa: F401
from .callback_list import CallbackList  # noqa: F401
from .csv_logger import CSVLogger  # noqa: F401
from .early_stopping import BestWeights, EarlyStopping  # noqa: F401
from .history import History, best_in_history  # noqa: F401
from .lr_schedules import LearningRateScheduler, LRScheduler, ReduceLROnPlateau  # noqa: F401
from .model_checkpoint import ModelCheckpoint  # noqa: F401
from .monitor import MonitorCallback, monitored  # noqa: F401
from .tensorboard import TensorBoard  # noqa: F401
