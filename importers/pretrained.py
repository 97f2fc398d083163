"""The SACT authors' published checkpoints by name: `ponderscope pretrained list | get NAME`.

Figurnov et al. publish three TF checkpoints as tarballs at fixed addresses, listed in the README
of https://github.com/mfigurnov/sact (Apache License 2.0, the repository's LICENSE; the README
states no other terms for the model files). `get` downloads one (importers/download.py: progress
bar, resumed after a cut connection), checks its size, unpacks it safely (importers/archive.py),
imports it as `ponderscope import sact-tf ARCHIVE --model MODEL` would, and leaves the checkpoint
in DIR/NAME (DIR: --out, default the per-user folder that `serve` lists, ponderscope/paths.py).
While it runs, the download is DIR/.NAME.download/ARCHIVE(.part); that folder is removed when it
ends, unless it holds the .part of a download that stopped on the network side (or Ctrl-C), which
the next run continues.

The size check. Their README gives each file's size rounded ("1.8 MB", "160 MB", "159MB"), not
in bytes, and no checksum. From the official address, the total the server announces (S3 sends
Content-Length, or Content-Range's total when resuming) must be a size that could be written so:
one unit of the last digit either side, MB read as 10^6 bytes at the low end and 2^20 at the high
end (`published_bounds`); then the bytes received must add up to that total, and the archive's
gzip trailer (CRC-32 and length) must hold when it is unpacked. From a --url mirror, which may
repack, only the mirror's own announced total and the gzip trailer are checked. A local file
(--url PATH or file://) is read where it is and never removed.

Nothing prompts: every outcome is one line on stderr (and the exit status), so it runs unattended.
"""
from __future__ import annotations

import difflib
import math
import os
import re
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ponderscope.paths import user_models_dir

from .common import DiskFull, ImportFailed, no_space, write_imported
from .download import DownloadFailed, download

OFFICIAL = "https://s3.us-east-2.amazonaws.com/sact-models/"
REPOSITORY = "https://github.com/mfigurnov/sact"
LICENCE = "Apache License 2.0"


@dataclass(frozen=True)
class Published:
    name: str  # ours, for the command line
    archive: str  # the file name at OFFICIAL
    size: str  # as their README writes it
    model: str  # `ponderscope import sact-tf --model`
    what: str
    claim: str  # what their README says the model achieves ("": nothing)

    @property
    def url(self) -> str:
        return OFFICIAL + self.archive


CATALOG = {entry.name: entry for entry in (
    Published("sact-cifar10-resnet32", "cifar10_resnet_5_sact_1e-2.tar.gz", "1.8 MB", "sact_resnet32",
              "CIFAR-10 SACT ResNet-32, tau 0.01", "91.82% accuracy, 82.4 MFLOPs per image"),
    Published("sact-imagenet-resnet101", "imagenet_101_sact_5e-3.tar.gz", "160 MB", "sact_resnet101",
              "ImageNet SACT ResNet-101, tau 0.005 (their ponder maps)", "75.61% top-1, 11.1 GFLOPs per image"),
    Published("imagenet-resnet101", "imagenet_101.tar.gz", "159MB", "resnet101",
              "ImageNet ResNet-101 (dense), which their ACT/SACT models start from", ""),
)}


class FetchFailed(ValueError):
    """One line: what went wrong, and that nothing half-written was left (or what was kept)."""


def published_bounds(size: str) -> tuple[int, int]:
    """The byte counts a size written as "1.8 MB" / "159MB" can stand for (see the module's text):
    '1.8 MB' -> (1_700_000, 1_992_295)."""
    match = re.fullmatch(r"\s*(\d+)(?:\.(\d+))?\s*MB\s*", size)
    if not match:
        raise ValueError(f"not a published size: {size!r}")
    decimals = len(match.group(2) or "")
    value = float(f"{match.group(1)}.{match.group(2) or 0}")
    step = 10.0 ** -decimals
    return math.floor(round((value - step) * 1e6, 6)), math.ceil(round((value + step) * 2**20, 6))


def lookup(name: str) -> Published:
    if name in CATALOG:
        return CATALOG[name]
    close = difflib.get_close_matches(name, list(CATALOG), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise FetchFailed(f"no published checkpoint is called {name!r}{hint}; known: {', '.join(CATALOG)}")


def _local_file(url: Optional[str]) -> Optional[Path]:
    """--url as a local file (a path or file://), or None for an http(s) address."""
    if url is None:
        return None
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if len(parsed.scheme) > 1 and not Path(url).exists():  # (one letter: a Windows drive)
        raise FetchFailed(f"--url {url}: give an http:// or https:// address, a file:// URL or a local file")
    return Path(url).expanduser()


def is_fetched(entry: Published, root: Path) -> bool:
    return (root / entry.name / "card.json").is_file()


def listing(root: Optional[Path] = None) -> str:
    """`ponderscope pretrained list`: one line per checkpoint, then where they come from and go."""
    root = root or user_models_dir()
    width = max(len(name) for name in CATALOG)
    lines = []
    for entry in CATALOG.values():
        here = "  [fetched]" if is_fetched(entry, root) else ""
        claim = f"; their README: {entry.claim}" if entry.claim else ""
        lines.append(f"{entry.name:<{width}}  {entry.size:>7}  {entry.what}{claim}{here}")
        lines.append(f"{'':<{width}}  {'':>7}  {entry.url}")
    lines.append(f"From {REPOSITORY} ({LICENCE}). `ponderscope pretrained get NAME` puts NAME in {root} "
                 "(PONDERSCOPE_MODELS or --out DIR to change it), which `ponderscope serve` lists.")
    return "\n".join(lines)


def get(name: str, out: str | os.PathLike | None = None, url: Optional[str] = None, *, progress: bool = True, command: str = "",
        attempts: int = 5, backoff_s: float = 1.0, open_file: Callable = open,
        log: Callable[[str], None] = lambda text: print(text, file=sys.stderr)) -> Path:
    """Download (or read, from a local file), check, unpack and import NAME into OUT/NAME -> that
    folder. Any failure is FetchFailed, DownloadFailed or ImportFailed (DiskFull) with one line,
    and leaves no half-written file: only a `.part` of a download that stopped on the network
    side is kept, for the next run to continue."""
    entry = lookup(name)
    root = Path(out).expanduser() if out is not None else user_models_dir()
    target = root / entry.name
    if is_fetched(entry, root):
        log(f"{entry.name} is already in {target} (remove that folder to fetch it again)")
        return target
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FetchFailed(f"{target} exists and is not a checkpoint folder: move it away or give another --out")
    local = _local_file(url)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FetchFailed(f"cannot create {root}: {error.strerror or error}") from None
    if not os.access(root, os.W_OK):
        raise FetchFailed(f"cannot write into {root} (permission denied): give another --out, or make it writable"
                          " (in Docker: by uid 10001)")

    if local is not None:
        if not local.is_file():
            raise FetchFailed(f"--url {url}: no such file")
        return _import(entry, local, target, root, url, command, open_file, log, downloaded=False)
    # Downloads go to DIR/.NAME.download/ (the archive under its published name, for the card): the
    # folder is removed when done, and kept only while it holds a .part to continue.
    downloads = root / f".{entry.name}.download"
    try:
        downloads.mkdir(exist_ok=True)
    except OSError as error:
        raise FetchFailed(f"cannot create {downloads}: {error.strerror or error}") from None
    try:
        address = url or entry.url
        official = url is None
        low, high = published_bounds(entry.size)

        def size_check(total: Optional[int]) -> None:
            if total is None:
                log(f"{address} announces no size; the archive's gzip trailer is checked when it is unpacked")
            elif official and not low <= total <= high:
                raise DownloadFailed(f"{address} announces {total} bytes ({total / 1e6:.1f} MB); the authors' README publishes "
                                     f"{entry.size} for {entry.archive}: not the published file, nothing was kept")

        log(f"{entry.name}: {entry.archive} ({entry.size} published) from {address}")
        archive = download(address, downloads / entry.archive, size_check, progress=progress, attempts=attempts,
                           backoff_s=backoff_s, open_file=open_file, log=log)
        size = archive.stat().st_size
        if official and not low <= size <= high:  # (a server that announced no size)
            archive.unlink(missing_ok=True)
            raise FetchFailed(f"{address} sent {size} bytes; the authors' README publishes {entry.size} for {entry.archive}: "
                              "not the published file, nothing was kept")
        return _import(entry, archive, target, root, url, command, open_file, log, downloaded=True)
    finally:
        try:
            downloads.rmdir()  # (not empty: a .part kept to continue)
        except OSError:
            pass


def _import(entry: Published, archive: Path, target: Path, root: Path, url: Optional[str], command: str, open_file: Callable,
            log: Callable[[str], None], downloaded: bool) -> Path:
    """Unpack, convert and write DIR/NAME; a downloaded archive is removed afterwards, whatever happens."""
    from .sact_tf import read_archive

    log(f"{entry.name}: unpacking and importing {archive.name} as {entry.model}")
    try:
        imported, sources = read_archive(archive, entry.model, None, scratch=root, open_file=open_file)
        imported.notes.append(f"fetched by `ponderscope pretrained get {entry.name}` from {url or entry.url}; "
                              f"published by the authors at {entry.url} ({REPOSITORY}, {LICENCE})")
        write_imported(imported, target, sources, command or f"ponderscope pretrained get {entry.name}")
    except ImportFailed as error:
        removed = "" if isinstance(error, DiskFull) or not downloaded else " (the downloaded archive was removed)"
        raise type(error)(f"{error}{removed}") from None
    except OSError as error:
        if no_space(error):
            raise DiskFull(f"no space left on the disk of {root} to import {entry.name}: nothing was kept") from None
        raise FetchFailed(f"cannot import {archive.name} into {target}: {error.strerror or error}") from None
    finally:
        if downloaded:
            archive.unlink(missing_ok=True)
    return target
