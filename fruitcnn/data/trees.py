"""File trees: a folder on disk, or a ``.tar``/``.tgz``/``.tar.gz``/``.zip`` archive read in place.

Every reader sees the data as a :class:`Tree`: relative POSIX paths of regular
files with their sizes, the folders (also empty ones), and a way to read many files
in the order that is cheapest for the container (archive order for a compressed tar).

Archives are never unpacked to disk, so nothing can be written outside a cache; their
entries are still checked like an unpacker would: absolute names, ``..`` components
and links that point outside the archive make it refused as unsafe (all such entries
are listed in one error). Links inside the archive are followed.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from fruitcnn.data.problems import DatasetError, Problems

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Operating-system litter that is ignored (and reported in data.json), never read as data.
_METADATA_NAMES = {".ds_store", "thumbs.db", "desktop.ini", ".directory"}
_METADATA_DIRS = {"__macosx", ".git", ".ipynb_checkpoints"}


def is_metadata(path: str) -> bool:
    """Whether ``path`` is operating-system or tool litter (``__MACOSX/``, ``._x.jpg``,
    ``.DS_Store``, ``Thumbs.db`` ...)."""
    parts = path.split("/")
    name = parts[-1].lower()
    return (
        name in _METADATA_NAMES
        or name.startswith("._")
        or any(part.lower() in _METADATA_DIRS for part in parts[:-1])
    )


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


class Tree:
    """Files of a dataset source: ``files`` maps relative paths to sizes."""

    label: str
    files: dict[str, int]
    dirs: set[str]

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, bytes | Exception]]:
        """(name, content) for every name, in the container's cheapest order; a file
        that cannot be read yields the exception instead of its bytes."""
        raise NotImplementedError

    def read_one(self, name: str) -> bytes:
        for _, content in self.read([name]):
            if isinstance(content, Exception):
                raise DatasetError(f"{self.label}: cannot read {name}: {content}")
            return content
        raise DatasetError(f"{self.label}: {name} not found")

    def fingerprint(self) -> str:
        """Hex digest that changes when any file of the source changes."""
        raise NotImplementedError

    def listdir(self, folder: str) -> tuple[list[str], list[str]]:
        """(subfolders, files) directly inside ``folder`` ('' is the root), sorted."""
        prefix = f"{folder}/" if folder else ""
        subdirs = sorted(
            {d[len(prefix) :].split("/")[0] for d in self.dirs if d.startswith(prefix) and d != folder}
        )
        files = sorted(
            f[len(prefix) :] for f in self.files if f.startswith(prefix) and "/" not in f[len(prefix) :]
        )
        return subdirs, files


def _parents(path: str) -> Iterator[str]:
    parent = posixpath.dirname(path)
    while parent:
        yield parent
        parent = posixpath.dirname(parent)


def _safe_name(name: str) -> str | None:
    """Normalised relative name, or None when it is absolute or climbs out with ``..``."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        return None
    return "/".join(parts)


def _resolve_link(member: str, target: str, *, relative_to_member: bool) -> str | None:
    """The archive path a link points to, or None when it leaves the archive."""
    target = target.replace("\\", "/")
    if target.startswith("/"):
        return None
    base = posixpath.dirname(member) if relative_to_member else ""
    parts: list[str] = [part for part in base.split("/") if part]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


class DirectoryTree(Tree):
    """A folder on disk (symbolic links to files are followed)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.label = str(root)
        self.files, self.dirs, self._stats = {}, set(), []
        for folder, subdirs, names in os.walk(self.root):
            subdirs.sort()
            relative = Path(folder).relative_to(self.root).as_posix()
            relative = "" if relative == "." else relative
            if relative:
                self.dirs.add(relative)
            for name in sorted(names):
                path = f"{relative}/{name}" if relative else name
                try:
                    info = os.stat(Path(folder) / name)
                except OSError:  # a dangling link: listed, reading it reports the error
                    self.files[path] = 0
                    continue
                if stat.S_ISREG(info.st_mode):
                    self.files[path] = info.st_size
                    self._stats.append((path, info.st_size, info.st_mtime_ns))

    def read(self, names):
        for name in names:
            try:
                yield name, (self.root / name).read_bytes()
            except OSError as error:
                yield name, error

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"dir:{self.root.resolve()}".encode())
        for entry in self._stats:
            digest.update(repr(entry).encode())
        return digest.hexdigest()


class _ArchiveTree(Tree):
    """An archive, listed on first use (a cache hit needs only its fingerprint)."""

    def __init__(self, path: Path, problems: Problems):
        self.path = path
        self.label = str(path)
        self._problems = problems
        self._files: dict[str, int] | None = None
        self._dirs: set[str] = set()
        self.links: dict[str, str] = {}  # link name -> target path in the archive

    @property
    def files(self) -> dict[str, int]:
        if self._files is None:
            self._files = {}
            unsafe = Problems(str(self.path))
            self._scan(unsafe)
            if unsafe.errors:
                unsafe.fixes["unsafe archive entry"] = (
                    "this archive tries to reach files outside itself; do not use it. Download it "
                    "again from the original source."
                )
                unsafe.raise_if_any()
            self._finish_links()
        return self._files

    @property
    def dirs(self) -> set[str]:
        self.files  # noqa: B018  (lists the archive)
        return self._dirs

    def _scan(self, unsafe: Problems) -> None:
        raise NotImplementedError

    def fingerprint(self) -> str:
        info = self.path.stat()
        key = f"archive:{self.path.resolve()}:{info.st_size}:{info.st_mtime_ns}"
        return hashlib.sha256(key.encode()).hexdigest()

    def _add_dir(self, name: str) -> None:
        self._dirs.add(name)
        self._dirs.update(_parents(name))

    def _add_file(self, name: str, size: int) -> None:
        self._files[name] = size
        self._dirs.update(_parents(name))

    def _add_link(self, name: str, raw_name: str, target: str, *, relative_to_member: bool, unsafe: Problems):
        resolved = _resolve_link(name, target, relative_to_member=relative_to_member)
        if resolved is None:
            unsafe.error("unsafe archive entry", raw_name, f"link to {target!r} outside the archive")
        else:
            self.links[name] = resolved

    def _finish_links(self) -> None:
        for name, target in list(self.links.items()):
            seen = {name}
            while target in self.links and target not in seen:  # links to links
                seen.add(target)
                target = self.links[target]
            if target in self._files:
                self.links[name] = target
                self._add_file(name, self._files[target])
            else:
                self._problems.skip("link to a missing file", name, f"points to {target}")

    def _target(self, name: str) -> str:
        return self.links.get(name, name)


_UNSAFE_NAME = "absolute path or '..' outside the archive"
# A tar archive's files are kept in memory while it is listed when they fit in this
# many bytes, so it is decompressed once; larger archives are read a second time.
_KEEP_BYTES = 1 << 30


class TarTree(_ArchiveTree):
    """A tar archive, plain or compressed (gzip, bzip2, xz), read in archive order."""

    def __init__(self, path: Path, problems: Problems):
        super().__init__(path, problems)
        self._kept: dict[str, bytes] | None = {}

    def _scan(self, unsafe: Problems) -> None:
        kept, total = self._kept, 0
        try:
            with tarfile.open(self.path, "r:*") as archive:
                for member in archive:
                    name = _safe_name(member.name)
                    if name is None:
                        unsafe.error("unsafe archive entry", member.name, _UNSAFE_NAME)
                    elif not name:
                        continue
                    elif member.isdir():
                        self._add_dir(name)
                    elif member.isreg():
                        self._add_file(name, member.size)
                        total += member.size
                        if kept is not None and total <= _KEEP_BYTES:
                            kept[name] = archive.extractfile(member).read()
                        else:
                            kept = None
                    elif member.issym() or member.islnk():
                        self._add_link(
                            name,
                            member.name,
                            member.linkname,
                            relative_to_member=member.issym(),
                            unsafe=unsafe,
                        )
                    else:
                        self._problems.skip("special file (device or pipe)", name)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
            raise DatasetError(_unreadable(self.path, error)) from None
        self._kept = kept

    def read(self, names):
        self.files  # noqa: B018  (lists the archive)
        wanted: dict[str, list[str]] = {}
        for name in names:
            wanted.setdefault(self._target(name), []).append(name)
        if self._kept is not None:
            for target, aliases in wanted.items():
                content = self._kept.get(target)
                for alias in aliases:
                    yield (
                        alias,
                        content
                        if content is not None
                        else FileNotFoundError(f"{target} is not in the archive"),
                    )
            return
        try:
            with tarfile.open(self.path, "r:*") as archive:
                for member in archive:  # one forward pass: no re-decompression
                    name = _safe_name(member.name)
                    if name not in wanted or not member.isreg():
                        continue
                    try:
                        content: bytes | Exception = archive.extractfile(member).read()
                    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
                        content = error
                    for alias in wanted.pop(name):
                        yield alias, content
                    if not wanted:
                        return
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise DatasetError(_unreadable(self.path, error)) from None
        for target, aliases in wanted.items():
            for alias in aliases:
                yield alias, FileNotFoundError(f"{target} is not in the archive")


class ZipTree(_ArchiveTree):
    """A zip archive."""

    def __init__(self, path: Path, problems: Problems):
        super().__init__(path, problems)
        self._infos: dict[str, str] = {}  # normalised name -> name in the zip

    def _scan(self, unsafe: Problems) -> None:
        try:
            with zipfile.ZipFile(self.path) as archive:
                for info in archive.infolist():
                    name = _safe_name(info.filename)
                    if name is None:
                        unsafe.error("unsafe archive entry", info.filename, _UNSAFE_NAME)
                    elif not name:
                        continue
                    elif info.is_dir():
                        self._add_dir(name)
                    elif stat.S_ISLNK(info.external_attr >> 16):
                        target = archive.read(info).decode("utf-8", "replace")
                        self._add_link(name, info.filename, target, relative_to_member=True, unsafe=unsafe)
                    elif info.flag_bits & 0x1:
                        self._problems.error(
                            "encrypted archive entry",
                            name,
                            fix="unpack the archive with its password and pass the folder instead.",
                        )
                    else:
                        self._add_file(name, info.file_size)
                        self._infos[name] = info.filename
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
            raise DatasetError(_unreadable(self.path, error)) from None

    def read(self, names):
        self.files  # noqa: B018  (lists the archive)
        try:
            with zipfile.ZipFile(self.path) as archive:
                for name in names:
                    try:
                        yield name, archive.read(self._infos[self._target(name)])
                    except (zipfile.BadZipFile, KeyError, OSError, EOFError, zlib.error) as error:
                        yield name, error
        except (zipfile.BadZipFile, OSError) as error:
            raise DatasetError(_unreadable(self.path, error)) from None


def _unreadable(path: Path, error: Exception) -> str:
    return (
        f"{path}: unreadable archive ({type(error).__name__}: {error}).\n"
        "  expected a complete .tar, .tgz/.tar.gz, .tar.bz2, .tar.xz or .zip file; it may be "
        "truncated (an interrupted download) or not an archive at all.\n"
        "  fix: download it again, or unpack it yourself and pass the folder."
    )


def open_tree(path: str | Path, problems: Problems) -> Tree:
    """The :class:`Tree` of a folder or an archive file.

    Raises:
        DatasetError: when the path does not exist, or the archive is unreadable or unsafe.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return DirectoryTree(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder.")
    lower = path.name.lower()
    if lower.endswith(".zip"):
        return ZipTree(path, problems)
    if is_archive(path) or tarfile.is_tarfile(path):
        return TarTree(path, problems)
    raise DatasetError(
        f"{path}: a file that is not an archive ({path.suffix or 'no suffix'}).\n"
        f"  expected a folder of class folders, or an archive ({', '.join(ARCHIVE_SUFFIXES)}).\n"
        "  fix: pass the dataset's folder or the archive as downloaded."
    )
