"""fruitcnn.claims: temporary folders removed after their process is killed."""

import signal
import subprocess
import sys
from pathlib import Path

from fruitcnn import claims


def test_a_claimed_folder_outlives_only_its_process(tmp_path):
    """A folder of claims.claimed_folder is kept while its process lives, removed by the
    next claim once that process was killed (kill -9: no cleanup ran), and removed at
    the end of a block that ends normally."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fruitcnn import claims\n"
            "with claims.claimed_folder(sys.argv[1], 'work-') as folder:\n"
            "    (folder / 'big').write_bytes(b'x' * 1000); print(folder, flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        theirs = Path(holder.stdout.readline().strip())
        assert (theirs / "big").is_file()
        with claims.claimed_folder(tmp_path, "work-") as mine:
            assert theirs.is_dir() and mine.is_dir() and mine != theirs  # alive: kept
        assert not mine.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert theirs.is_dir()  # nothing cleaned up after the kill
    assert claims.remove_abandoned(tmp_path, "other-") == []  # another prefix is not touched
    with claims.claimed_folder(tmp_path, "work-"):
        assert not theirs.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == []
