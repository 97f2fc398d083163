"""Unpacking an archive somebody else made, safely: the SACT authors' published `.tar.gz` files.

Only regular files and folders are unpacked, each strictly inside the target folder. A member
with an absolute name, a `..` step, a drive or a backslash, a symbolic or hard link, a device, a
FIFO or anything else refuses the whole archive (one line naming the member), as does a second
member of the same name, more unpacked bytes than `MAX_RATIO` times the archive's own (a gzip
bomb; TF checkpoints, being floats, barely compress), and an archive cut short or damaged: the
compressed stream is read to its end, so gzip's own trailer (CRC-32 and length) is checked.

`unpacked(archive)` unpacks into a fresh hidden folder and removes it afterwards, on success or
failure alike: nothing half-unpacked is ever left behind. Writes go through `open_file` (the
built-in `open` unless a test injects a full disk); a full disk is `DiskFull`, one line.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from .common import DiskFull, ImportFailed, no_space

SUFFIXES = (".tar.gz", ".tgz", ".tar")
MAX_RATIO = 20  # unpacked bytes <= 20 x the archive's bytes + 1 MiB
CHUNK = 1 << 20
# TF checkpoint files, never taken for an archive whatever their first bytes are
TF_FILE = re.compile(r"(\.index|\.meta|\.data-\d{5}-of-\d{5}|^checkpoint)$")


def is_archive(path: str | os.PathLike) -> bool:
    """A file named *.tar.gz / *.tgz / *.tar, or one that starts as gzip or has tar's header magic
    (a mirror may name it otherwise); TF's own checkpoint files never are."""
    path = Path(path)
    if not path.is_file() or TF_FILE.search(path.name):
        return False
    if path.name.lower().endswith(SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar"


def _member_parts(member: tarfile.TarInfo, archive: str) -> tuple[str, ...]:
    """The member's path inside the target as parts, or ImportFailed if it could leave it."""
    name = member.name
    refuse = f"{archive}: member {name!r}"
    if "\\" in name or "\x00" in name or re.match(r"^[A-Za-z]:", name):
        raise ImportFailed(f"{refuse} has a backslash, a NUL or a drive in its name: refused, nothing was unpacked")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise ImportFailed(f"{refuse} has an absolute name (it would be written outside the target folder): refused, nothing was unpacked")
    if ".." in path.parts:
        raise ImportFailed(f"{refuse} would be written outside the target folder ('..'): refused, nothing was unpacked")
    return tuple(part for part in path.parts if part not in (".", ""))


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    return f"of tar type {member.type!r}"


def unpack(archive: str | os.PathLike, target: str | os.PathLike, open_file: Callable = open) -> list[Path]:
    """Unpack `archive` into the existing folder `target` (see the module's text) -> the files
    written. On a refusal the caller removes `target` (as `unpacked` does)."""
    archive, target = Path(archive), Path(target)
    label = archive.name
    try:
        budget = MAX_RATIO * archive.stat().st_size + (1 << 20)
    except OSError as error:
        raise ImportFailed(f"cannot read {archive}: {error.strerror or error}") from None
    written: list[Path] = []
    seen: set[tuple[str, ...]] = set()
    total = unpacked_bytes = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = _member_parts(member, label)
                if not parts:  # "." / "./": the target itself
                    continue
                if not (member.isfile() or member.isdir()):
                    raise ImportFailed(f"{label}: member {member.name!r} is {_kind(member)}: refused (only files and folders are "
                                       "unpacked), nothing was unpacked")
                dest = target.joinpath(*parts)
                if os.path.commonpath([target, dest]) != str(target):  # (cannot happen after the checks above)
                    raise ImportFailed(f"{label}: member {member.name!r} would be written outside the target folder: refused")
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                if parts in seen:
                    raise ImportFailed(f"{label}: member {member.name!r} appears twice: refused, nothing was unpacked")
                seen.add(parts)
                total += member.size
                if total > budget:
                    raise ImportFailed(f"{label}: its members hold over {total / 1e6:.0f} MB, more than {MAX_RATIO} times the archive's "
                                       "size: refused as a decompression bomb, nothing was unpacked")
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with source, open_file(dest, "xb") as out:
                    written.append(dest)
                    for chunk in iter(lambda: source.read(CHUNK), b""):
                        out.write(chunk)
                        unpacked_bytes += len(chunk)
            if tar.fileobj is not None:  # to the end of the compressed stream: gzip checks its CRC-32 and length there
                while tar.fileobj.read(CHUNK):
                    pass
    except ImportFailed:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ImportFailed(f"{label} is not a complete tar archive ({error or type(error).__name__}): it was cut short or is "
                           "damaged; nothing was unpacked") from None
    except OSError as error:
        if no_space(error):
            raise DiskFull(f"no space left on the disk of {target.parent} to unpack {label} ({unpacked_bytes / 1e6:.1f} MB unpacked "
                           "when it ran out); nothing was kept") from None
        raise ImportFailed(f"cannot unpack {label} into {target.parent}: {error.strerror or error}") from None
    return written


@contextmanager
def unpacked(archive: str | os.PathLike, scratch: str | os.PathLike | None = None, open_file: Callable = open) -> Iterator[Path]:
    """A fresh hidden folder (in `scratch`, default the system's temporary folder) holding the
    unpacked archive; removed when the block ends, however it ends."""
    archive = Path(archive)
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{archive.name}.unpacking-", dir=scratch))
    except OSError as error:
        if no_space(error):
            raise DiskFull(f"no space left on the disk of {scratch or tempfile.gettempdir()} to unpack {archive.name}; nothing was kept") from None
        raise ImportFailed(f"cannot unpack {archive.name} into {scratch or tempfile.gettempdir()}: {error.strerror or error}") from None
    try:
        unpack(archive, folder, open_file)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
