"""Where a run's steps execute: this process, every local GPU, or several workers.

``--strategy`` (``TrainConfig.strategy``) names one of three ``tf.distribute``
strategies, made here once per process by :func:`make_strategy`:

``default``
    one process, one device: Keras's ``fit``.
``mirrored``
    ``tf.distribute.MirroredStrategy`` over every local GPU (on a machine without
    GPUs: the CPU as one replica, which is the default strategy with extra steps).
``multiworker``
    ``tf.distribute.MultiWorkerMirroredStrategy`` over the workers that the
    ``TF_CONFIG`` environment variable lists (TensorFlow's format, read by
    :func:`cluster`). Keras 3's ``fit`` fails under it (tensorflow/tensorflow#72388,
    keras-team/keras#20585), so ``fruitcnn.training.engine`` runs the same train and test
    steps in a ``strategy.run`` loop. The strategy must exist before TensorFlow runs its
    first operation (TensorFlow's rule); train.py makes it first thing.

Worker 0 (or the task of type ``chief``) is the chief: it alone writes the run folder;
the other workers write theirs into a temporary folder that is removed at the end
(:func:`scratch_folder`). ``python -m fruitcnn.distributed --workers N -- train.py ...``
starts N local workers on free ports (``fruitcnn.distributed.launch``).

This module imports TensorFlow only inside :func:`make_strategy` and the functions
that run collectives, so the launcher and ``--help`` start in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fruitcnn.claims import claimed_folder
from fruitcnn.config import STRATEGIES
from fruitcnn.runs import LOCK_FILE

# Name of a worker's temporary run folder (in the system's temporary directory).
WORKER_PREFIX = "fruitcnn-worker-"

# The environment variable TensorFlow reads the cluster from.
TF_CONFIG = "TF_CONFIG"
# Seconds a collective waits for the other workers before it fails (a worker that died
# is usually noticed sooner, by its missing heartbeats: ~10 s here).
COLLECTIVE_TIMEOUT_S = 600.0
# Task types that compute: TensorFlow's "chief" (optional) and "worker".
_COMPUTING = ("chief", "worker")
LAUNCH_ADVICE = "start local workers with: python -m fruitcnn.distributed --workers 2 -- train.py ..."


@dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker run (from ``TF_CONFIG``).

    Attributes:
        addresses: ``host:port`` of every computing task, chief first.
        index: this task's position in ``addresses``.
    """

    addresses: tuple[str, ...]
    index: int

    @property
    def is_chief(self) -> bool:
        """Whether this task writes the run folder."""
        return self.index == 0

    @property
    def workers(self) -> int:
        return len(self.addresses)

    def describe(self) -> str:
        role = "chief" if self.is_chief else "worker"
        return f"{role} {self.index} of {self.workers} ({self.addresses[self.index]})"


def cluster(environ: Mapping[str, str] | None = None) -> Cluster:
    """This process's task in the ``TF_CONFIG`` cluster.

    ``TF_CONFIG`` is JSON: ``{"cluster": {"worker": ["host:port", ...]}, "task":
    {"type": "worker", "index": 0}}``, optionally with a ``"chief": ["host:port"]``
    list (then the chief is that task, and worker indices count after it).

    Raises:
        ValueError: TF_CONFIG is missing or not of that form; the message shows what
            it holds and how to set it.
    """
    environ = os.environ if environ is None else environ
    text = environ.get(TF_CONFIG)
    if not text:
        raise ValueError(
            f"--strategy multiworker needs the {TF_CONFIG} environment variable, which names the workers "
            'and this one\'s place among them ({"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}); ' + LAUNCH_ADVICE
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{TF_CONFIG} is not JSON ({error.msg} at character {error.pos}): {text[:200]!r}."
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ValueError(f'{TF_CONFIG} needs a "cluster" object of task lists, got {text[:200]!r}.')
    tasks = config["cluster"]
    addresses: list[str] = []
    offsets = {}
    for kind in _COMPUTING:
        listed = tasks.get(kind, [])
        if not isinstance(listed, list) or not all(isinstance(item, str) and ":" in item for item in listed):
            raise ValueError(
                f'{TF_CONFIG}: cluster["{kind}"] must be a list of "host:port" texts, got {listed!r}.'
            )
        offsets[kind] = len(addresses)
        addresses.extend(listed)
    if len(tasks.get("chief", [])) > 1:
        raise ValueError(f'{TF_CONFIG}: a cluster has at most one "chief", got {tasks["chief"]!r}.')
    if not addresses:
        raise ValueError(f'{TF_CONFIG} lists no "worker" (or "chief") addresses: {text[:200]!r}.')
    task = config.get("task")
    if not isinstance(task, dict) or task.get("type") not in _COMPUTING:
        raise ValueError(
            f'{TF_CONFIG}: "task" must say which task this process is, e.g. '
            '{"type": "worker", "index": 0}; '
            f"got {task!r} (parameter servers and evaluators are not used by fruitcnn)."
        )
    index = task.get("index", 0)
    count = len(tasks.get(task["type"], []))
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise ValueError(
            f'{TF_CONFIG}: task index {index!r} is not one of the {count} "{task["type"]}" tasks.'
        )
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"{TF_CONFIG} lists an address twice: {addresses}; every task needs its own port.")
    return Cluster(tuple(addresses), offsets[task["type"]] + index)


_MADE: dict[str, Any] = {}


def make_strategy(name: str):
    """The ``tf.distribute`` strategy of ``--strategy name`` (one per process: the
    first call makes it, later calls return it).

    Raises:
        ValueError: an unknown name; ``multiworker`` without a usable TF_CONFIG, or
            asked for after TensorFlow has already run an operation in this process.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")
    if name in _MADE:
        return _MADE[name]
    if name == "multiworker":
        cluster()  # a clear error before TensorFlow's
    import tensorflow as tf  # here: the launcher and --help need no TensorFlow

    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_S)
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except RuntimeError as error:
            if "startup" not in str(error):
                raise
            raise ValueError(
                "--strategy multiworker must be set up before TensorFlow runs anything in this process "
                "(TensorFlow's rule for collective operations); in your own script, call "
                "fruitcnn.distributed.make_strategy('multiworker') first thing (train.py does)."
            ) from None
    _MADE[name] = strategy
    return strategy


def finish_together() -> None:
    """Wait until every worker of this process's multi-worker run gets here (the chief
    after its report, the others after training), so none exits while another still
    works: TensorFlow reports a worker that stopped sending heartbeats as crashed even
    when it ended normally. Best effort: an error here (a worker that did crash) changes
    nothing; without a multi-worker strategy it returns at once."""
    if "multiworker" not in _MADE:
        return
    import tensorflow as tf  # here: the strategy was made, so TensorFlow is loaded already

    strategy = _MADE["multiworker"]

    @tf.function
    def meet():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("sum", tf.ones([1])))

    try:
        meet()
    except (tf.errors.OpError, RuntimeError):
        pass


@contextmanager
def scratch_folder(source: Path | None = None) -> Iterator[Path]:
    """A temporary run folder for a worker that is not the chief, removed at the end
    (however the block ends). With ``source`` (a run to resume, which every worker must
    see: one machine, or a shared file system) its files are copied in first, so the
    worker resumes from the chief's last checkpoint. The folder of a worker that was
    killed (``kill -9``) is removed by the next worker started on the machine
    (``fruitcnn.claims.claimed_folder``)."""
    with claimed_folder(Path(tempfile.gettempdir()), WORKER_PREFIX) as folder:
        if source is not None:
            shutil.copytree(source, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOCK_FILE))
        yield folder
