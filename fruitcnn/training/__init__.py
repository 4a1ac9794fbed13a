"""The one training path for every dataset and both head types.

:func:`train` builds (or resumes) the model a :class:`RunConfig` declares, trains it
with ``model.fit`` (or, for several workers, the same steps and callbacks in a
``strategy.run`` loop: ``engine``), evaluates validation (and by default test) data after every epoch,
keeps the model of the best validation epoch, and writes the run folder described in
``fruitcnn.runs``.

``history.csv`` has one row per finished epoch with the columns ``epoch``,
``timestamp`` (ISO-8601 wall clock at the end of the epoch's evaluations),
``elapsed_s`` (seconds of training and evaluation since the run started, summed over
resumed sessions), ``train_s`` (seconds
of this epoch's optimisation steps, without evaluation), ``lr`` (learning rate
of the epoch's first step), then ``{train,val,test}_loss`` and
``{train,val,test}_accuracy``. For the four-head model ``accuracy`` is the aggregate
(all four heads right) and ``{split}_{head}_loss`` / ``{split}_{head}_accuracy``
follow for every head. Train figures are Keras's running means over the epoch
(training mode: dropout on, batch statistics); val and test are evaluated at the end
of the epoch in inference mode. Losses include the L2 penalty when ``l2 > 0``.

The parts: ``loop`` (:func:`train` and the run's state), ``models`` (the models
trained and evaluated, the optimizer, the input pipeline), ``watch`` (the callbacks:
per-epoch evaluation and records, divergence, plateau, time budget) and ``engine``
(fit and evaluate under the run's ``--strategy``).
"""

from fruitcnn.training.loop import (
    TrainingDiverged,
    TrainingFailed,
    TrainResult,
    budget_summary,
    check_resumable,
    check_run,
    data_description,
    train,
)
from fruitcnn.training.models import (
    batches,
    channel_statistics,
    eval_batch_size,
    evaluation_model,
    head_specs,
    heads_model,
    make_optimizer,
    saved_evaluator,
    saved_model,
    standard_metrics,
    steps_per_epoch,
    training_model,
)
from fruitcnn.training.watch import (
    EXPLODED,
    FLAT,
    _Validation,
    chance_loss,
    divergence_advice,
    not_learning_advice,
)

__all__ = [
    "EXPLODED",
    "FLAT",
    "TrainResult",
    "TrainingDiverged",
    "TrainingFailed",
    "_Validation",
    "batches",
    "budget_summary",
    "chance_loss",
    "channel_statistics",
    "check_resumable",
    "check_run",
    "data_description",
    "divergence_advice",
    "eval_batch_size",
    "evaluation_model",
    "head_specs",
    "heads_model",
    "make_optimizer",
    "not_learning_advice",
    "saved_evaluator",
    "saved_model",
    "standard_metrics",
    "steps_per_epoch",
    "train",
    "training_model",
]
