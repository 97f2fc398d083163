"""Uploaded images kept by content hash, so a copied URL can name the image it shows."""
from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from pathlib import Path
from threading import Lock

HASH = re.compile(r"^[0-9a-f]{64}$")


class ImageStore:
    def __init__(self, directory: Path, keep_in_memory: int = 64):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.memory: OrderedDict[str, bytes] = OrderedDict()
        self.keep = keep_in_memory
        self.lock = Lock()

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.directory / digest
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        self._remember(digest, data)
        return digest

    def get(self, digest: str) -> bytes | None:
        if not HASH.match(digest):
            return None
        with self.lock:
            if digest in self.memory:
                self.memory.move_to_end(digest)
                return self.memory[digest]
        path = self.directory / digest
        if not path.is_file():
            return None
        data = path.read_bytes()
        self._remember(digest, data)
        return data

    def _remember(self, digest: str, data: bytes) -> None:
        with self.lock:
            self.memory[digest] = data
            self.memory.move_to_end(digest)
            while len(self.memory) > self.keep:
                self.memory.popitem(last=False)
