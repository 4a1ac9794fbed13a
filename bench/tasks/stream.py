"""The stream task: ``train.py --stream`` (decoded rows on disk, read batch by batch)
against the in-memory path, on two sizes of the same photos, in this run.

The images of a Fruits-360-style source (``--data``, default ../shared/data's
archive: Training/ and Test/ pooled, split 60/40) are unpacked once into class folders:
``base`` holds them once and ``x4`` four times (hard links under four names), so the
data grows 4x between the two sizes (the copies of ``x4`` fall into every split: its
accuracy means nothing, the base run's is reported). For each size and each path, with
a fresh decoded-image cache:

* ``read``: a process that only reads the source (``load_dataset``), the first time
  (decoding; a streamed read writes its rows);
* ``train``: ``train.py`` with the fruits task's settings (``RUN``), report included,
  reading the data from the cache the read filled.

Each process's peak resident memory comes from ``os.wait4`` (the kernel's own count,
``ru_maxrss``); the training throughput is the last epoch's images per second
(history.csv's ``train_s``; the first epoch includes tracing). Streamed rows are read
from the operating system's page cache here (the machine holds them): the figures show
what streaming costs in the pipeline, not the speed of a disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from bench import common
from fruitcnn import runs
from fruitcnn.data.images import decode, is_image_name

ROOT = Path(__file__).resolve().parents[2]
DATA = common.SHARED / "fruits-360-24.tgz"
# The fruits data task's settings (bench/tasks/data.py); the second epoch's speed is
# the throughput (the first includes tracing); the report is part of the run (its
# evaluation reads every split).
RUN = ["--arch", "fruits", "--batch-size", "64", "--lr", "0.01", "--epochs", "2", "--verbose", "2"]
BATCH = 64
# The in-memory path's goal for the streamed one: throughput within 1.3x.
THROUGHPUT_GOAL = 1.3
SIZES = ("base", "x4")
# Images of the larger size per image of the smaller one.
COPIES = 4
_READ = (
    "import sys; from fruitcnn.config import DataConfig; from fruitcnn.data import load_dataset; "
    "load_dataset(DataConfig(dataset=sys.argv[1], stream=sys.argv[2] == 'stream'))"
)


def _unpack(source: Path, into: Path) -> dict[str, int]:
    """The source's images as ``into/base/<class>/``, and ``into/x4/<class>/`` with each
    of them four times (hard links under four names): images per size, and the bytes
    of one decoded image."""
    if source.is_dir():
        files = [
            (path.parent.name, path.read_bytes(), path.name)
            for path in sorted(source.rglob("*"))
            if path.is_file()
        ]
    else:
        with tarfile.open(source) as archive:
            files = [
                (Path(member.name).parent.name, archive.extractfile(member).read(), Path(member.name).name)
                for member in archive
                if member.isfile()
            ]
    counts = {"base": 0, "x4": 0, "bytes_per_image": 0}
    seen: dict[str, int] = {}
    for label, content, name in files:
        if not is_image_name(name):
            continue
        number = seen[label] = seen.get(label, -1) + 1
        target = into / "base" / label / f"{number:05d}-{name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        (into / "x4" / label).mkdir(parents=True, exist_ok=True)
        for copy in range(COPIES):
            os.link(target, into / "x4" / label / f"{copy}-{target.name}")
        counts["base"] += 1
        counts["x4"] += COPIES
        if not counts["bytes_per_image"]:
            counts["bytes_per_image"] = int(decode(content, channels=None).size)
    if not counts["base"]:
        raise ValueError(f"{source}: no images found (expected class folders of images).")
    return counts


def _peak(command: list[str], environment: dict[str, str]) -> tuple[float, float]:
    """Run ``command``; its peak resident memory in MiB and its seconds."""
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return usage.ru_maxrss / 1024, time.monotonic() - started


def run_stream(data: str) -> dict:
    """Both paths on both sizes; see the module docstring."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fruitcnn-bench-stream-") as scratch:
        scratch = Path(scratch)
        counts = _unpack(Path(data), scratch / "data")
        print(f"unpacked {counts['base']} images (x4: {counts['x4']})", file=sys.stderr)
        results: dict[str, dict] = {}
        for mode in ("held", "stream"):
            for size in SIZES:
                folder = scratch / "data" / size
                environment = {**os.environ, "FRUITCNN_CACHE": str(scratch / f"cache-{mode}-{size}")}
                read_mb, read_s = _peak([sys.executable, "-c", _READ, str(folder), mode], environment)
                run = scratch / f"run-{mode}-{size}"
                flags = ["--dataset", str(folder), *(["--stream"] if mode == "stream" else [])]
                command = [sys.executable, "train.py", *flags, *RUN, "--out", str(run)]
                train_mb, train_s = _peak(command, environment)
                history = runs.read_csv(run / runs.HISTORY_FILE)
                metrics = runs.read_json(run / runs.METRICS_FILE)
                steps = int(metrics["train_images"]) // BATCH
                results[f"{mode}_{size}"] = {
                    "images": counts[size],
                    "read_peak_mb": round(read_mb, 1),
                    "read_s": round(read_s, 1),
                    "train_peak_mb": round(train_mb, 1),
                    "train_process_s": round(train_s, 1),
                    "img_per_s": round(steps * BATCH / float(history[-1]["train_s"]), 1),
                    "test_accuracy": metrics["test_accuracy"],
                }
                print(f"{mode} {size}: {results[f'{mode}_{size}']}", file=sys.stderr)
    added = (counts["x4"] - counts["base"]) * counts.pop("bytes_per_image") / 2**20  # decoded pixels
    growth = {
        mode: {
            kind: round(results[f"{mode}_x4"][kind] - results[f"{mode}_base"][kind], 1)
            for kind in ("read_peak_mb", "train_peak_mb")
        }
        for mode in ("held", "stream")
    }
    ratio = results["held_base"]["img_per_s"] / results["stream_base"]["img_per_s"]
    return {
        "task": "stream",
        "test_accuracy": results["stream_base"]["test_accuracy"],
        "wall_s": round(time.monotonic() - started, 1),
        "images": counts,
        "decoded_mb_added": round(added, 1),
        "peak_growth_mb": growth,
        "throughput_ratio_held_over_stream": round(ratio, 3),
        "meets_throughput_goal": ratio <= THROUGHPUT_GOAL,
        "runs": results,
    }
