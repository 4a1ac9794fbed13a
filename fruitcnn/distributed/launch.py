"""Start N local workers of one multi-worker run:
``python -m fruitcnn.distributed --workers 2 -- train.py --dataset line``.

Every worker is the same command with its own ``TF_CONFIG`` (all of them on free ports
of ``--host``, worker 0 the chief) and ``--strategy multiworker`` added when the command
is train.py without a ``--strategy``. The chief's output is passed through; every other
worker's lines are prefixed ``[worker i]``. When a worker fails, the others are given
``--grace`` seconds to notice (each says so itself, within about ten seconds), then
stopped; the launcher exits with the first failing worker's code (0 when all finish).
Ctrl-C is passed to every worker.

This is for trials on one machine (two workers on a 2-core machine are no faster than
one process: they share the cores). On a real cluster, start the same command on every
machine yourself with its own ``TF_CONFIG`` (README, "Several machines").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from fruitcnn.distributed import TF_CONFIG

# Seconds the other workers get to end by themselves after one failed.
GRACE_S = 30.0
# Seconds between looks at the workers.
_POLL_S = 0.2


def free_ports(count: int, host: str) -> list[int]:
    """``count`` distinct ports that are free on ``host`` now (held open together while
    they are chosen, so no two are the same)."""
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            handle.bind((host, 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def worker_configs(addresses: Sequence[str]) -> list[str]:
    """The ``TF_CONFIG`` of every worker of a cluster of ``addresses`` (worker 0 first)."""
    return [
        json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})
        for index in range(len(addresses))
    ]


def worker_command(command: Sequence[str]) -> list[str]:
    """The command every worker runs: a ``.py`` script runs with this Python; train.py
    gets ``--strategy multiworker`` unless it names a strategy.

    Raises:
        ValueError: no command, or train.py with another ``--strategy``.
    """
    command = list(command)
    if not command:
        raise ValueError("give the command after --, e.g. -- train.py --dataset line")
    if command[0].endswith(".py"):
        command = [sys.executable, *command]
    script = next((part for part in command if part.endswith(".py")), "")
    if Path(script).name == "train.py":
        named = [part for part in command if part == "--strategy" or part.startswith("--strategy=")]
        if not named:
            command += ["--strategy", "multiworker"]
        else:
            flag = named[0]
            after = command[command.index(flag) + 1 :]
            value = flag.split("=", 1)[1] if "=" in flag else (after[0] if after else "")
            if value != "multiworker":
                raise ValueError(
                    f"the workers of one run need --strategy multiworker, the command says {value!r}; "
                    "drop --strategy (it is added) or give multiworker."
                )
    return command


def _relay(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(prefix + line)
        out.flush()


def launch(command: Sequence[str], workers: int, host: str = "127.0.0.1", grace: float = GRACE_S) -> int:
    """Run ``command`` as ``workers`` local workers of one cluster; the exit code.

    Raises:
        ValueError: fewer than one worker, or a command :func:`worker_command` refuses.
    """
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}.")
    argv = worker_command(command)
    addresses = [f"{host}:{port}" for port in free_ports(workers, host)]
    print(
        f"fruitcnn.distributed: {workers} workers on {', '.join(addresses)}; worker 0 is the chief",
        flush=True,
    )
    processes, relays = [], []
    for index, config in enumerate(worker_configs(addresses)):
        environment = {**os.environ, TF_CONFIG: config}
        # a session of its own: Ctrl-C reaches the launcher alone, which passes it on once
        if index == 0:
            process = subprocess.Popen(argv, env=environment, start_new_session=True)
        else:
            process = subprocess.Popen(
                argv,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            relay = threading.Thread(target=_relay, args=(process.stdout, f"[worker {index}] ", sys.stdout))
            relay.daemon = True
            relay.start()
            relays.append(relay)
        processes.append(process)
    try:
        code = _wait(processes, grace)
    except KeyboardInterrupt:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        code = _wait(processes, grace) or 130
    for relay in relays:
        relay.join(timeout=5)
    return code


def _wait(processes, grace: float) -> int:
    """Wait for every worker; after the first failure, ``grace`` seconds for the others,
    then stop them. The first failing worker's exit code, or 0."""
    failed_at, code = None, 0
    while any(process.poll() is None for process in processes):
        for index, process in enumerate(processes):
            status = process.poll()
            if status not in (None, 0) and failed_at is None:
                failed_at, code = time.monotonic(), status
                print(f"fruitcnn.distributed: worker {index} exited with code {status}", file=sys.stderr)
        if failed_at is not None and time.monotonic() - failed_at > grace:
            for index, process in enumerate(processes):
                if process.poll() is None:
                    print(f"fruitcnn.distributed: stopping worker {index}", file=sys.stderr)
                    process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
            break
        time.sleep(_POLL_S)
    if not code:
        code = next((process.returncode for process in processes if process.returncode), 0)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, command = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        prog="python -m fruitcnn.distributed",
        usage="python -m fruitcnn.distributed [--workers N] [--host H] [--grace S] -- COMMAND ...",
        description="Start N local workers of one multi-worker run (TF_CONFIG on free ports).",
        epilog="example: python -m fruitcnn.distributed --workers 2 -- train.py --dataset line --epochs 1",
    )
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="how many workers (default: 2)")
    parser.add_argument(
        "--host", default="127.0.0.1", metavar="H", help="address they listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=GRACE_S,
        metavar="S",
        help=f"seconds the others get to end after a worker failed (default: {GRACE_S:g})",
    )
    args = parser.parse_args(own)
    try:
        return launch(command, args.workers, args.host, args.grace)
    except ValueError as error:
        parser.exit(2, f"python -m fruitcnn.distributed: error: {error}\n")
    return 2
