"""The distributed task: the line model trained by one process and by two local workers
(``python -m fruitcnn.distributed --workers 2``) with the same global batch and seed, in
this run: the step times, the speed-up (none is expected with both workers on the same
cores), how far the loss curves differ (and, as the yardstick of float rounding, how far
those of one process with one intra-op thread differ from the default's), what each step
all-reduces (bytes) and how long
an all-reduce of that size takes between the two workers, and from those the speed-up
two machines would give.

Run with ``--probe N [N ...]`` (by the launcher, as each worker): time all-reduces of
that many float32 values and, on the chief, print them as JSON.

TensorFlow is imported in the functions that use it, so that ``python bench/run.py
--help`` and argument errors answer at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fruitcnn import runs
from fruitcnn.distributed import cluster, make_strategy

ROOT = Path(__file__).resolve().parents[2]
# The runs compared: the line dataset at 100 images per class (5,184 training images,
# 40 steps of 128 per epoch), train.py's defaults otherwise.
RUN = ["--dataset", "line", "--images-per-class", "100", "--epochs", "3", "--no-report", "--verbose", "2"]
# train.py's default batch size, which RUN keeps.
BATCH = 128
# The probe times PROBE_ROUNDS graphs of PROBE_CHAIN chained all-reduces each.
PROBE_ROUNDS, PROBE_CHAIN = 10, 20
# A network between machines, for the expected speed-up: 10 Gbit/s Ethernet with 0.1 ms
# per message (a round trip on a LAN).
NETWORK_BYTES_PER_S, NETWORK_LATENCY_S = 10e9 / 8, 100e-6


def _history(run: Path) -> list[dict]:
    return runs.read_csv(run / runs.HISTORY_FILE)


def _train(command: list[str], environment: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(environment or {})}
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.monotonic() - started


def _step_ms(run: Path, steps: int) -> float:
    """Median over epochs after the first (tracing) of the epoch's step time."""
    times = sorted(float(row["train_s"]) for row in _history(run)[1:])
    return 1000 * times[len(times) // 2] / steps


def _exchanged(run: Path) -> dict:
    """What one training step all-reduces: every trainable weight's gradient, and for
    each synchronised batch norm its per-channel sums (channels + 1, then channels)."""
    import keras

    import fruitcnn.layers  # noqa: F401  (registers BatchNorm for loading)

    model = keras.saving.load_model(run / "model.keras", compile=False)
    gradients = sum(int(weight.numpy().size) for weight in model.trainable_weights)
    norms = [layer for layer in model.layers if type(layer) is fruitcnn.layers.BatchNorm]
    batch_norm = sum(2 * int(layer.gamma.shape[0]) + 1 for layer in norms)
    return {
        "gradient_floats": gradients,
        "batch_norm_floats": batch_norm,
        "widest_batch_norm_floats": max((int(layer.gamma.shape[0]) + 1 for layer in norms), default=1),
        # forward: two per layer; backward: their gradients, two more
        "batch_norm_all_reduces": 4 * len(norms),
        "bytes_per_step": 4 * (gradients + batch_norm),
    }


def probe(sizes: list[int]) -> None:
    """As one worker of the launcher: time PROBE_ROUNDS all-reduces of each size (float32
    values) and print the milliseconds per all-reduce as JSON on the chief."""
    strategy = make_strategy("multiworker")
    import tensorflow as tf

    def chained(size: int):
        """PROBE_CHAIN all-reduces in one graph, each of the previous one's result (as
        in a training step: no Python between them)."""
        values = tf.ones([size]) / 2.0

        @tf.function
        def reduce():
            def replica():
                context, result = tf.distribute.get_replica_context(), values
                for _ in range(PROBE_CHAIN):
                    result = context.all_reduce("sum", result) / 2.0
                return result

            return strategy.run(replica)

        return reduce

    timed = {}
    for size in sizes:
        reduce = chained(size)
        reduce()  # traced and warmed up
        started = time.perf_counter()
        for _ in range(PROBE_ROUNDS):
            result = reduce()
        float(tf.reduce_sum(strategy.experimental_local_results(result)[0]))
        timed[str(size)] = round(1000 * (time.perf_counter() - started) / (PROBE_ROUNDS * PROBE_CHAIN), 3)
    if cluster().is_chief:
        print(json.dumps(timed), flush=True)


def run_distributed() -> dict:
    """One process against two local workers on the same run; see the module docstring."""
    with tempfile.TemporaryDirectory() as scratch:
        one, two, single = Path(scratch) / "one", Path(scratch) / "two", Path(scratch) / "single"
        started = time.monotonic()
        one_s = _train([sys.executable, "train.py", *RUN, "--out", str(one)])
        print(f"one process: {one_s:.1f} s", file=sys.stderr)
        launcher = [sys.executable, "-m", "fruitcnn.distributed", "--workers", "2", "--"]
        two_s = _train([*launcher, "train.py", *RUN, "--out", str(two)])
        print(f"two workers: {two_s:.1f} s", file=sys.stderr)
        wall_s = time.monotonic() - started
        # the same process with another summation order: what float rounding alone does
        _train([sys.executable, "train.py", *RUN, "--out", str(single)], {"TF_NUM_INTRAOP_THREADS": "1"})
        exchanged = _exchanged(one)
        sizes = [exchanged["gradient_floats"], exchanged["widest_batch_norm_floats"]]
        done = subprocess.run(
            [*launcher, str(Path(__file__).resolve()), "--probe", *(str(size) for size in sizes)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},  # run as a script, the repository is not on sys.path
            capture_output=True,
            text=True,
        )
        measured = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not measured:
            raise RuntimeError(f"the all-reduce probe failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        timed = json.loads(measured[-1])
        gradient_ms, batch_norm_ms = timed[str(sizes[0])], timed[str(sizes[1])]
        metrics_one = json.loads((one / "metrics.json").read_text())
        metrics_two = json.loads((two / "metrics.json").read_text())
        rows_one, rows_two, rows_single = _history(one), _history(two), _history(single)
        steps = int(metrics_one["train_images"]) // BATCH
        step_one, step_two = _step_ms(one, steps), _step_ms(two, steps)

    def largest_difference(rows) -> float:
        return max(
            abs(float(b[column]) - float(a[column])) / abs(float(a[column]))
            for a, b in zip(rows_one, rows)
            for column in ("train_loss", "val_loss", "test_loss")
        )

    # Two machines: each computes half the batch, then exchanges: the gradients' ring
    # all-reduce sends and receives 2 (n - 1) / n of their bytes per worker, and every
    # all-reduce (the batch norms' small ones run one after another) costs a latency.
    # "here": the all-reduce times measured between the two processes on this machine
    # (which share its cores); "lan": 10 Gbit/s and 0.1 ms per all-reduce.
    network_ms = 1000 * exchanged["bytes_per_step"] * 2 * (2 - 1) / 2 / NETWORK_BYTES_PER_S
    exchange_here = gradient_ms + exchanged["batch_norm_all_reduces"] * batch_norm_ms
    exchange_lan = network_ms + 1000 * NETWORK_LATENCY_S * (1 + exchanged["batch_norm_all_reduces"])
    return {
        "task": "distributed",
        "test_accuracy": metrics_two["test_accuracy"],
        "one_process_test_accuracy": metrics_one["test_accuracy"],
        "wall_s": round(wall_s, 1),
        "one_process_s": round(one_s, 1),
        "two_workers_s": round(two_s, 1),
        "step_ms_one_process": round(step_one, 2),
        "step_ms_two_workers": round(step_two, 2),
        "speedup_here": round(step_one / step_two, 3),
        "loss_max_relative_difference": float(f"{largest_difference(rows_two):.3g}"),
        "loss_max_relative_difference_one_thread": float(f"{largest_difference(rows_single):.3g}"),
        "weights_disagreement": metrics_two["distributed"]["weights_disagreement"],
        **exchanged,
        "gradient_all_reduce_ms_loopback": gradient_ms,
        "batch_norm_all_reduce_ms_loopback": batch_norm_ms,
        "gradient_all_reduce_ms_10gbit": round(network_ms, 3),
        "exchange_ms_per_step_here": round(exchange_here, 3),
        "exchange_ms_per_step_lan": round(exchange_lan, 3),
        "expected_speedup_two_machines_here": round(step_one / (step_one / 2 + exchange_here), 3),
        "expected_speedup_two_machines_lan": round(step_one / (step_one / 2 + exchange_lan), 3),
    }


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--probe":
        probe([int(size) for size in sys.argv[2:]])
    else:
        sys.exit("run through: python bench/run.py distributed")
