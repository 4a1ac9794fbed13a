"""Temporary folders that outlive only their process.

:func:`claimed_folder` makes a folder for a block and removes it at the end; when the
process is killed (``kill -9``, a lost machine's power) nothing runs at the end, so the
folder's owner holds a lock (``fcntl.flock`` on ``<folder>.claim`` beside it, released
by the operating system whatever way the process ends) and the next claim in the same
parent folder removes every folder of the same prefix whose lock is free. Used for
what may be large and is worthless once its process is gone: the rows a ``--stream``
read is writing, a cache entry being stored (``fruitcnn.data.cache``), a worker's copy
of a run (``fruitcnn.distributed``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None

# Suffix of the file beside a claimed folder whose flock says its owner is alive.
CLAIM_SUFFIX = ".claim"


@contextlib.contextmanager
def claimed_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """A new folder ``parent/<prefix>XXXXXXXX`` for the block, removed at its end (unless
    the block renamed it away), which a later claim in ``parent`` removes when this
    process was killed: its lock (``fcntl.flock`` on ``<folder>.claim`` beside it) is
    then free. Folders of the same prefix whose owner is gone are removed first.

    The claim file is locked before it gets its name, so a folder is never seen with a
    claim that is not held yet.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - no flock: nothing can tell a dead owner
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    remove_abandoned(parent, prefix)
    handle, staging = tempfile.mkstemp(prefix=".claiming-", dir=parent)
    fcntl.flock(handle, fcntl.LOCK_EX)
    claim = None
    try:
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        claim = parent / f"{folder.name}{CLAIM_SUFFIX}"
        os.rename(staging, claim)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        Path(staging if claim is None else claim).unlink(missing_ok=True)
        os.close(handle)


def remove_abandoned(parent: Path, prefix: str) -> list[str]:
    """Remove the folders ``parent/<prefix>*`` of :func:`claimed_folder` whose owner is
    gone (their claim's lock is free) and return their names."""
    removed = []
    for claim in sorted(Path(parent).glob(f"{prefix}*{CLAIM_SUFFIX}")):
        try:
            handle = os.open(claim, os.O_RDWR)
        except OSError:
            continue  # removed by its owner meanwhile
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(handle)
            continue  # held: its owner is alive
        folder = claim.with_name(claim.name[: -len(CLAIM_SUFFIX)])
        shutil.rmtree(folder, ignore_errors=True)
        claim.unlink(missing_ok=True)
        os.close(handle)
        removed.append(folder.name)
    return removed
