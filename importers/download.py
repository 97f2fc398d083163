"""A download that survives a cut connection: HTTP(S) with Range requests, standard library only.

    download(url, final, size_check=..., progress=True) -> final

The bytes go to `final` + ".part" (and what the server said about them to ".part.json": the
address, its ETag / Last-Modified and the total). A connection that drops is retried, continuing
with `Range: bytes=<what we have>-` and `If-Range` (so a file changed on the server starts over
instead of being spliced); a run that stops (the retries spent, Ctrl-C) keeps the `.part`, and the
next run continues from it. Complete (as many bytes as the server announced), the `.part` is
renamed to `final` in one step: `final` never exists half-written.

The size is checked twice: the total the server announces (Content-Length of a 200, the total of
a 206's Content-Range) is handed to `size_check` before a byte is written (the caller compares it
with a published size), and the bytes received must add up to that total. A server that announces
no size cannot be checked here; the archive's own gzip trailer (CRC-32 and length, checked when it
is unpacked) still catches a cut.

A full disk (before: the announced size does not fit; during: ENOSPC) is `DiskFull`, and the
`.part` is removed: nothing half-written is kept. Writes go through `open_file` (tests inject a
full disk there).
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from .common import DiskFull, no_space

CHUNK = 256 * 1024
TIMEOUT_S = 60
RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


class DownloadFailed(ValueError):
    """One line: what failed, and what is kept (or not)."""


def _user_agent() -> str:
    from ponderscope import __version__

    return f"ponderscope/{__version__} (+https://github.com/mfigurnov/sact checkpoints)"


def _lock(handle) -> bool:
    """An exclusive lock on the open .part (POSIX), so that two runs never write one file."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _content_range(value: str | None) -> tuple[Optional[int], Optional[int]]:
    """"bytes START-END/TOTAL" or "bytes */TOTAL" -> (START or None, TOTAL or None)."""
    match = re.match(r"^\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", value or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


class _Bar:
    """tqdm's byte counter on stderr (one bar across retries), or nothing."""

    def __init__(self, enabled: bool, label: str):
        self.enabled, self.label, self.bar = enabled, label, None

    def start(self, done: int, total: Optional[int]) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=self.label,
                            file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 5.0, dynamic_ncols=True)
        else:
            self.bar.total, self.bar.n = total, done
            self.bar.refresh()

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def download(url: str, final: str | os.PathLike, size_check: Callable[[Optional[int]], None] = lambda total: None,
             progress: bool = True, attempts: int = 5, backoff_s: float = 1.0, timeout_s: float = TIMEOUT_S,
             open_file: Callable = open, log: Callable[[str], None] = lambda text: print(text, file=sys.stderr)) -> Path:
    """Fetch `url` into `final` (see the module's text). `size_check(total)` raises
    DownloadFailed when the announced total (None: none announced) is not what is expected."""
    final = Path(final)
    part = final.with_name(final.name + ".part")
    meta_path = final.with_name(final.name + ".part.json")
    meta: dict = {}
    if part.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if meta.get("url") != url:  # another address's bytes (or unknown ones): not continued
            log(f"{part.name} is from {meta.get('url') or 'an unknown address'}, not {url}: starting over")
            part.unlink(missing_ok=True)
            meta = {}
    bar = _Bar(progress, final.name)

    def drop() -> None:
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)

    def disk_full(written: int, total: Optional[int]) -> DiskFull:
        drop()
        need = f"{total / 1e6:.1f} MB for the archive" if total else "the archive's size"
        return DiskFull(f"no space left on the disk of {final.parent} while downloading {final.name} ({written / 1e6:.1f} MB "
                        f"written); it needs {need} and about as much again twice to unpack and convert it. The partial "
                        "download was removed: nothing was kept")

    def start_over(reason: str) -> None:
        """Drop the .part and go again from byte 0: a try like any other, so a server that keeps
        answering this way ends the download after `attempts` tries instead of looping."""
        drop()
        if tries >= attempts:
            raise DownloadFailed(f"the download of {url} stopped: {reason} (tried {tries} times); nothing was kept")
        log(f"{reason}: starting over (try {tries + 1} of {attempts})")
        time.sleep(backoff_s * 2 ** (tries - 1))

    try:
        tries = 0
        while True:
            tries += 1
            have = part.stat().st_size if part.exists() else 0
            headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
                validator = meta.get("etag") or meta.get("last_modified")
                if validator:
                    headers["If-Range"] = validator
            try:
                try:
                    response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
                except urllib.error.HTTPError as error:
                    if error.code == 416 and have:  # nothing after `have`: complete, if that is the whole file
                        _, total = _content_range(error.headers.get("Content-Range"))
                        error.close()
                        if total is not None and total == have and meta.get("total") in (None, total):
                            try:
                                size_check(total)
                            except DownloadFailed:
                                drop()
                                raise
                            break
                        start_over(f"the server has no bytes after the {have} of {part.name}")
                        meta = {}
                        continue
                    if error.code >= 500 or error.code == 429:
                        raise  # retried below
                    raise DownloadFailed(f"{url} answers {error.code} {error.reason}: nothing was downloaded") from None
                with response:
                    if response.status == 206:
                        start, total = _content_range(response.headers.get("Content-Range"))
                        if start is None:
                            drop()
                            raise DownloadFailed(f"{url} answered 206 (part of the file) without a usable Content-Range: nothing was kept")
                        if start != have:
                            start_over(f"the server resumed {part.name} at byte {start}, not {have}")
                            meta = {}
                            continue
                    else:
                        length = response.headers.get("Content-Length")
                        total = int(length) if length and length.isdigit() else None
                        if have:
                            log(f"the server sends {final.name} from its start (no resume there, or the file changed): starting over")
                            have = 0
                    if meta.get("total") is not None and total is not None and meta["total"] != total:
                        start_over(f"the server now announces {total} bytes for {final.name}, not {meta['total']}")
                        meta = {}
                        continue
                    try:
                        size_check(total)
                    except DownloadFailed:
                        drop()
                        raise
                    if total is not None and total - have > shutil.disk_usage(final.parent).free:
                        raise disk_full(have, total)
                    meta = {"url": url, "total": total, "etag": response.headers.get("ETag") if have == 0 else meta.get("etag"),
                            "last_modified": response.headers.get("Last-Modified") if have == 0 else meta.get("last_modified")}
                    bar.start(have, total)
                    try:
                        handle = open_file(part, "ab")  # truncated below, once locked, if starting over
                    except OSError as error:
                        if no_space(error):
                            raise disk_full(have, total) from None
                        raise DownloadFailed(f"cannot write {part}: {error.strerror or error}") from None
                    with handle:
                        if not _lock(handle):
                            raise DownloadFailed(f"another download is writing {part} (a second `ponderscope pretrained get` of it?): "
                                                 "wait for it to finish")
                        try:
                            if not have:
                                handle.truncate(0)
                            meta_path.write_text(json.dumps(meta), encoding="utf-8")
                            while True:
                                chunk = response.read(CHUNK)
                                if not chunk:
                                    break
                                handle.write(chunk)
                                have += len(chunk)
                                bar.update(len(chunk))
                            handle.flush()
                        except OSError as error:
                            if no_space(error):
                                raise disk_full(have, total) from None
                            if isinstance(error, RETRYABLE):
                                raise
                            raise DownloadFailed(f"cannot write {part}: {error.strerror or error}") from None
                have = part.stat().st_size
                if total is not None and have < total:
                    raise http.client.IncompleteRead(b"", total - have)  # the connection ended early: resumed below
                if total is not None and have > total:
                    drop()
                    raise DownloadFailed(f"{url} sent {have} bytes, more than the {total} it announced: removed, nothing was kept")
                break
            except RETRYABLE as error:
                reason = getattr(error, "reason", None) or type(error).__name__
                if isinstance(error, http.client.IncompleteRead):
                    reason = "the connection closed early"
                if tries >= attempts:
                    kept = part.stat().st_size if part.exists() else 0
                    keep = (f"the {kept / 1e6:.1f} MB received are kept in {part}: run the same command again to continue"
                            if kept else "nothing was kept")
                    raise DownloadFailed(f"the download of {url} stopped: {reason} (tried {tries} times); {keep}") from None
                log(f"{final.name}: {reason}; continuing (try {tries + 1} of {attempts})")
                time.sleep(backoff_s * 2 ** (tries - 1))
        os.replace(part, final)
        meta_path.unlink(missing_ok=True)
        return final
    finally:
        bar.close()
