"""Uploaded images kept by content hash, so a copied URL can name the image it shows.

What is kept is the decoded image re-encoded as PNG (imaging.encode_png): the pixels the model
reads and nothing else, so bytes padded after an image's end cost nothing. The store is bounded
in bytes, on disk and in memory, and forgets the least recently used image first; a forgotten
hash answers 404 "upload it again". The hash is the sha256 of the stored PNG, checked on every
read from disk, so a damaged file is dropped rather than analysed.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from pathlib import Path
from threading import Lock

from ponderscope.core.imaging import ImageError

HASH = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_DISK_BYTES = 256 * 1024 * 1024
DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024
log = logging.getLogger("ponderscope")


class ImageStore:
    def __init__(self, directory: Path, max_disk_bytes: int = DEFAULT_DISK_BYTES, max_memory_bytes: int = DEFAULT_MEMORY_BYTES):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_disk_bytes, self.max_memory_bytes = int(max_disk_bytes), int(max_memory_bytes)
        self.lock = Lock()
        self.memory: OrderedDict[str, bytes] = OrderedDict()  # least recently used first
        self.memory_bytes = 0
        self.on_disk: OrderedDict[str, int] = OrderedDict()  # digest -> size, least recently used first
        self.disk_bytes = 0
        self.clock = 0
        found = []
        for path in self.directory.iterdir():
            if HASH.match(path.name) and path.is_file():
                stat = path.stat()
                found.append((stat.st_mtime_ns, path.name, stat.st_size))
            elif path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write that a stopped server left half done
        for _, digest, size in sorted(found):  # the last use is kept as the file's mtime
            self.on_disk[digest] = size
            self.disk_bytes += size
        with self.lock:
            self._evict()

    def put(self, data: bytes) -> str:
        if len(data) > self.max_disk_bytes:
            raise ImageError(f"the decoded image is {len(data) / 1e6:.1f} MB as PNG; this server keeps at most "
                             f"{self.max_disk_bytes / 1e6:.0f} MB of images (serve --image-store-mb)", 413)
        digest = hashlib.sha256(data).hexdigest()
        path = self.directory / digest
        with self.lock:
            known = digest in self.on_disk
        if not known:
            tmp = self.directory / f"{digest}.{os.getpid()}.{id(data)}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        with self.lock:
            if digest not in self.on_disk:
                self.on_disk[digest] = len(data)
                self.disk_bytes += len(data)
            self._touch(digest, path)
            self._remember(digest, data)
            self._evict()
        return digest

    def get(self, digest: str) -> bytes | None:
        if not HASH.match(digest):
            return None
        path = self.directory / digest
        with self.lock:
            if digest not in self.on_disk:
                return None
            self._touch(digest, path)
            if digest in self.memory:
                self.memory.move_to_end(digest)
                return self.memory[digest]
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # evicted by another request meanwhile, or removed by hand
            self._forget(digest)
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            log.warning("dropping stored image %s: its bytes no longer match its hash", digest)
            self._forget(digest)
            path.unlink(missing_ok=True)
            return None
        with self.lock:
            if digest in self.on_disk:
                self._remember(digest, data)
                self._evict()
        return data

    def _touch(self, digest: str, path: Path) -> None:
        self.on_disk.move_to_end(digest)
        self.clock = max(self.clock + 1, time.time_ns())  # strictly increasing, whatever the clock's grain
        try:
            os.utime(path, ns=(self.clock, self.clock))  # so the order survives a restart
        except OSError:
            pass

    def _remember(self, digest: str, data: bytes) -> None:
        if digest in self.memory:
            self.memory.move_to_end(digest)
        elif len(data) <= self.max_memory_bytes:
            self.memory[digest] = data
            self.memory_bytes += len(data)

    def _forget(self, digest: str) -> None:
        with self.lock:
            if digest in self.on_disk:
                self.disk_bytes -= self.on_disk.pop(digest)
            if digest in self.memory:
                self.memory_bytes -= len(self.memory.pop(digest))

    def _evict(self) -> None:
        """Drop the least recently used images until both budgets hold (the caller holds the lock)."""
        while self.memory_bytes > self.max_memory_bytes:
            _, data = self.memory.popitem(last=False)
            self.memory_bytes -= len(data)
        while self.disk_bytes > self.max_disk_bytes and self.on_disk:
            digest, size = self.on_disk.popitem(last=False)
            self.disk_bytes -= size
            if digest in self.memory:
                self.memory_bytes -= len(self.memory.pop(digest))
            (self.directory / digest).unlink(missing_ok=True)
