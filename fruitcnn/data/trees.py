"""File trees: a folder on disk, or a ``.tar``/``.tgz``/``.tar.gz``/``.zip`` archive read in place.

Every reader sees the data as a :class:`Tree`: relative POSIX paths of regular
files with their sizes, the folders (also empty ones), and a way to read many files
in the order that is cheapest for the container (archive order for a compressed tar).

Archives are never unpacked to disk, so nothing can be written outside a cache; their
entries are still checked like an unpacker would: absolute names, ``..`` components
and links that point outside the archive make it refused as unsafe (all such entries
are listed in one error). Links inside the archive are followed. In a folder, links to
folders are followed too (each folder is read once: a link loop, or a second link to a
folder already read, is listed as skipped).

What is read is held to :class:`~fruitcnn.config.UnpackLimits` (``--unpack-limits``):
before any file is read, its size (from the listing or the archive's headers) against
the per-file and total limits and, for a zip entry, its unpacked/packed ratio; while a
compressed tar is listed, the sizes its headers claim against the ratio limit times the
archive's size, and the bytes unpacked so far against the packed bytes consumed. A
source beyond a limit is refused with every such entry named and the flag that raises
the limit.

One file: the folder and the two archive readers implement one small interface
(:class:`Tree`) and share the limit accounting and path checks, which are the point of
the module (a member that escapes, a decompression bomb, a linked loop).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from fruitcnn.config import DEFAULT_UNPACK_LIMITS, UnpackLimits, parse_unpack_limits
from fruitcnn.data.problems import DatasetError, Problems

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Operating-system litter that is ignored (and reported in data.json), never read as data.
_METADATA_NAMES = {".ds_store", "thumbs.db", "desktop.ini", ".directory"}
_METADATA_DIRS = {"__macosx", ".git", ".ipynb_checkpoints"}
# Unpacked/packed ratios are judged once this many bytes are unpacked: small, highly
# compressible files (an empty image, a csv) cannot exhaust anything.
RATIO_FLOOR = 64 << 20
# What damaged archives raise from tarfile/zipfile and their decompressors (a damaged
# pax header gives ValueError or UnicodeDecodeError, an unsupported zip method
# NotImplementedError, a broken .xz lzma.LZMAError).
_DAMAGED = (
    tarfile.TarError,
    zipfile.BadZipFile,
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    ValueError,
    NotImplementedError,
    RuntimeError,
)
# Chunk in which gzip-compressed files are unpacked (bytes).
_GUNZIP_CHUNK = 1 << 20
_LIMIT_KIND = "beyond the unpack limits"


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


def size_text(count: float) -> str:
    """``1.0 GiB``, ``64.0 MiB``, ``512 B``: a byte count for people."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def _limit_fix(key: str, value: str) -> str:
    return (
        f"if you trust this data, raise the limit (e.g. --unpack-limits {key}={value}); the defaults are "
        f"{DEFAULT_UNPACK_LIMITS}. A file that unpacks to far more than it is packed may be a decompression "
        "bomb meant to exhaust the memory."
    )


class Tree:
    """Files of a dataset source: ``files`` maps relative paths to sizes."""

    label: str
    files: dict[str, int]
    dirs: set[str]
    limits: UnpackLimits = parse_unpack_limits(DEFAULT_UNPACK_LIMITS)
    unpacked: int = 0  # bytes read so far (held to limits.total)

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, bytes | Exception]]:
        """(name, content) for every name, in the container's cheapest order; a file
        that cannot be read yields the exception instead of its bytes.

        Raises:
            DatasetError: before anything is read, when the files would exceed the
                unpack limits (every such file named).
        """
        names = list(names)
        self._check_reads(names)
        return self._read(names)

    def _read(self, names: list[str]) -> Iterator[tuple[str, bytes | Exception]]:
        raise NotImplementedError

    def _packed_size(self, name: str) -> int | None:
        """Bytes the file takes packed, when the container says (zip entries)."""
        return None

    def _check_reads(self, names: list[str]) -> None:
        """Hold the files about to be read to the per-file, total and ratio limits."""
        limits, problems = self.limits, Problems(self.label)
        total = self.unpacked
        for name in dict.fromkeys(names):
            size = self.files.get(name, 0)
            total += size
            if size > limits.member:
                problems.error(
                    _LIMIT_KIND,
                    name,
                    f"unpacks to {size_text(size)}, more than the per-file limit {size_text(limits.member)}",
                    fix=_limit_fix("member", size_text(2 * size).replace(" ", "")),
                )
            packed = self._packed_size(name)
            if packed is not None and size > RATIO_FLOOR and size > limits.ratio * max(packed, 1):
                problems.error(
                    _LIMIT_KIND,
                    name,
                    f"unpacks to {size_text(size)} from {size_text(packed)} "
                    f"(ratio {size / max(packed, 1):.0f}, limit {limits.ratio:g})",
                    fix=_limit_fix("ratio", f"{2 * size / max(packed, 1):.0f}"),
                )
        if total > limits.total:
            problems.error(
                _LIMIT_KIND,
                self.label,
                f"the files read unpack to {size_text(total)} in all, more than the limit "
                f"{size_text(limits.total)}",
                fix=_limit_fix("total", size_text(2 * total).replace(" ", "")),
            )
        problems.raise_if_any()
        self.unpacked = total

    def read_heads(self, names: Iterable[str], size: int) -> Iterator[tuple[str, bytes | Exception]]:
        """As :meth:`read`, but only the first ``size`` bytes of each file where the
        container can read less than a whole file (a folder; an archive yields whole
        files). For looking at headers without reading the pixels."""
        return self.read(names)

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
    drive = len(name) > 1 and name[0].isalpha() and name[1] == ":" and (len(name) == 2 or name[2] == "/")
    if name.startswith("/") or drive:
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
    """A folder on disk; symbolic links to files and to folders are followed, every
    folder read once (a link loop or a second link to a folder is listed as skipped)."""

    def __init__(
        self, root: str | Path, problems: Problems | None = None, limits: UnpackLimits | None = None
    ):
        self.root = Path(root)
        self.label = str(root)
        self.limits = limits or self.limits
        self.files, self.dirs, self._stats = {}, set(), []
        problems = problems if problems is not None else Problems(self.label)
        root_info = os.stat(self.root)
        seen = {(root_info.st_dev, root_info.st_ino): ""}
        for folder, subdirs, names in os.walk(self.root, followlinks=True):
            relative = Path(folder).relative_to(self.root).as_posix()
            relative = "" if relative == "." else relative
            subdirs[:] = self._unseen(folder, relative, sorted(subdirs), seen, problems)
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

    @staticmethod
    def _unseen(folder: str, relative: str, subdirs: list[str], seen: dict, problems: Problems) -> list[str]:
        """The sub-folders not read yet (by device and inode, so through links too)."""
        kept = []
        for name in subdirs:
            path = f"{relative}/{name}" if relative else name
            try:
                info = os.stat(Path(folder) / name)
            except OSError as error:
                problems.skip("unreadable folder or broken link", path + "/", error.strerror or str(error))
                continue
            key = (info.st_dev, info.st_ino)
            if key in seen:
                first = seen[key] or "the dataset's own folder"
                problems.skip(
                    "folder reached twice through links",
                    path + "/",
                    f"the same folder as {first}/ (read once)",
                    fix="remove the link if the folder is in the dataset already (a link to a parent loops).",
                )
                continue
            seen[key] = path
            kept.append(name)
        return kept

    def _read(self, names):
        for name in names:
            try:
                yield name, (self.root / name).read_bytes()
            except OSError as error:
                yield name, error

    def read_heads(self, names, size):
        for name in names:
            try:
                with open(self.root / name, "rb") as handle:
                    yield name, handle.read(size)
            except OSError as error:
                yield name, error

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"dir:{self.root.resolve()}".encode())
        for entry in self._stats:
            digest.update(repr(entry).encode())
        return digest.hexdigest()


class _ArchiveTree(Tree):
    """An archive, listed on first use (a cache hit needs only its fingerprint)."""

    def __init__(self, path: Path, problems: Problems, limits: UnpackLimits | None = None):
        self.path = path
        self.label = str(path)
        self.limits = limits or self.limits
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

    def __init__(self, path: Path, problems: Problems, limits: UnpackLimits | None = None):
        super().__init__(path, problems, limits)
        self._kept: dict[str, bytes] | None = {}

    def _scan(self, unsafe: Problems) -> None:
        kept, total, claimed = self._kept, 0, 0
        packed_size = max(self.path.stat().st_size, 1)
        try:
            with open(self.path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as archive:
                for member in archive:
                    claimed += member.size if member.isreg() else 0
                    self._check_stream(member, claimed, packed_size, raw.tell())
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
        except DatasetError:
            raise
        except _DAMAGED as error:
            raise DatasetError(_unreadable(self.path, error)) from None
        self._kept = kept

    def _check_stream(self, member: tarfile.TarInfo, claimed: int, packed_size: int, packed: int) -> None:
        """Refuse a tar whose headers claim, or whose stream unpacks to, more than the
        ratio limit allows: ``claimed`` bytes (the regular files so far, this one
        included) against the archive's size, and the bytes unpacked before this header
        against the ``packed`` bytes read for them."""
        ratio, unpacked = self.limits.ratio, member.offset
        where = f"{self.path}: refused as a possible decompression bomb at entry {member.name!r}"
        if claimed > RATIO_FLOOR and claimed > ratio * packed_size:
            detail = (
                f"its entries claim {size_text(claimed)} of data from a {size_text(packed_size)} archive "
                f"(ratio {claimed / packed_size:.0f}, limit {ratio:g})"
            )
        elif unpacked > RATIO_FLOOR and unpacked > ratio * max(packed, 1):
            detail = (
                f"{size_text(unpacked)} unpacked from the first {size_text(packed)} (ratio "
                f"{unpacked / max(packed, 1):.0f}, limit {ratio:g})"
            )
        else:
            return
        raise DatasetError(
            f"{where}: {detail}.\n  fix: {_limit_fix('ratio', f'{2 * claimed / packed_size:.0f}')}"
        )

    def _read(self, names):
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
                    except _DAMAGED as error:
                        content = error
                    for alias in wanted.pop(name):
                        yield alias, content
                    if not wanted:
                        return
        except _DAMAGED as error:
            raise DatasetError(_unreadable(self.path, error)) from None
        for target, aliases in wanted.items():
            for alias in aliases:
                yield alias, FileNotFoundError(f"{target} is not in the archive")


class ZipTree(_ArchiveTree):
    """A zip archive."""

    def __init__(self, path: Path, problems: Problems, limits: UnpackLimits | None = None):
        super().__init__(path, problems, limits)
        self._infos: dict[str, str] = {}  # normalised name -> name in the zip
        self._packed: dict[str, int] = {}  # normalised name -> compressed size

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
                        self._packed[name] = info.compress_size
        except DatasetError:
            raise
        except _DAMAGED as error:
            raise DatasetError(_unreadable(self.path, error)) from None

    def _packed_size(self, name: str) -> int | None:
        return self._packed.get(self._target(name))

    def _read(self, names):
        self.files  # noqa: B018  (lists the archive)
        try:
            with zipfile.ZipFile(self.path) as archive:
                for name in names:
                    try:
                        yield name, archive.read(self._infos[self._target(name)])
                    except (*_DAMAGED, KeyError) as error:
                        yield name, error
        except _DAMAGED as error:
            raise DatasetError(_unreadable(self.path, error)) from None


def gunzip(content: bytes, name: str, limits: UnpackLimits) -> bytes:
    """A gzip-compressed file unpacked in chunks, held to the per-file and ratio limits
    while it is unpacked (a small .gz can hold gigabytes of zeros).

    Raises:
        DatasetError: beyond a limit; ``OSError``/``EOFError``/``zlib.error`` when damaged.
    """
    unpacker = zlib.decompressobj(wbits=31)  # gzip header and trailer
    parts, size, data = [], 0, content
    while not unpacker.eof:
        chunk = unpacker.decompress(data, _GUNZIP_CHUNK)
        data = unpacker.unconsumed_tail
        if not chunk and not data:
            break
        size += len(chunk)
        parts.append(chunk)
        if size > limits.member or (size > RATIO_FLOOR and size > limits.ratio * len(content)):
            raise DatasetError(
                f"{name}: refused as a possible decompression bomb: {size_text(len(content))} unpack to more "
                f"than {size_text(size)} (limits: {size_text(limits.member)} per file, ratio "
                f"{limits.ratio:g}).\n  fix: {_limit_fix('member', size_text(4 * size).replace(' ', ''))}"
            )
    if not unpacker.eof:
        raise EOFError("the gzip stream is truncated")
    return b"".join(parts)


def _unreadable(path: Path, error: Exception) -> str:
    return (
        f"{path}: unreadable archive ({type(error).__name__}: {error}).\n"
        "  expected a complete .tar, .tgz/.tar.gz, .tar.bz2, .tar.xz or .zip file; it may be "
        "truncated (an interrupted download) or not an archive at all.\n"
        "  fix: download it again, or unpack it yourself and pass the folder."
    )


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except _DAMAGED:  # e.g. a 2-byte file that starts like gzip
        return False


def open_tree(path: str | Path, problems: Problems, limits: UnpackLimits | None = None) -> Tree:
    """The :class:`Tree` of a folder or an archive file (``limits``: what may be
    unpacked; default ``fruitcnn.config.DEFAULT_UNPACK_LIMITS``).

    Raises:
        DatasetError: when the path does not exist, or the archive is unreadable,
            unsafe or a possible decompression bomb.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return DirectoryTree(path, problems, limits)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder.")
    lower = path.name.lower()
    if lower.endswith(".zip"):
        return ZipTree(path, problems, limits)
    if is_archive(path) or _is_tar(path):
        return TarTree(path, problems, limits)
    raise DatasetError(
        f"{path}: a file that is not an archive ({path.suffix or 'no suffix'}).\n"
        f"  expected a folder of class folders, or an archive ({', '.join(ARCHIVE_SUFFIXES)}).\n"
        "  fix: pass the dataset's folder or the archive as downloaded."
    )
