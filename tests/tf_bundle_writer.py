"""A minimal writer of TensorFlow's V2 checkpoint format (tensor bundle), for tests only: it lets
a test edit a checkpoint written by TensorFlow (drop, add or reshape a variable) without
TensorFlow. One shard; one SSTable data block with a restart at every entry (no key sharing).

Format (tensorflow/core/util/tensor_bundle, LevelDB table format):
    PREFIX.data-00000-of-00001   the tensors' raw little-endian bytes, one after another
    PREFIX.index                 SSTable: key "" -> BundleHeaderProto, name -> BundleEntryProto
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

DTYPES = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.int64): 9, np.dtype(np.bool_): 10}
MAGIC = 0xDB4775248B80FB57


def _table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
        table.append(crc)
    return table


_TABLE = _table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes | int) -> bytes:
    key = _varint((number << 3) | wire)
    if wire == 0:
        return key + _varint(payload)
    if wire == 5:
        return key + struct.pack("<I", payload)
    return key + _varint(len(payload)) + payload


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    body, restarts = bytearray(), []
    for key, value in entries:
        restarts.append(len(body))
        body += _varint(0) + _varint(len(key)) + _varint(len(value)) + key + value
    for offset in restarts:
        body += struct.pack("<I", offset)
    body += struct.pack("<I", len(restarts))
    return bytes(body)


def write_bundle(prefix: str | Path, tensors: dict[str, np.ndarray]) -> None:
    prefix = Path(prefix)
    data = bytearray()
    entries = [(b"", _field(1, 0, 1) + _field(3, 2, _field(1, 0, 1)))]  # num_shards 1, version {producer 1}
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        shape = b"".join(_field(2, 2, _field(1, 0, int(d))) for d in array.shape)
        entry = _field(1, 0, DTYPES[array.dtype]) + _field(2, 2, shape) + _field(4, 0, len(data)) + _field(5, 0, len(raw))
        entry += _field(6, 5, _masked(_crc32c(raw)))
        entries.append((name.encode(), entry))
        data += raw
    Path(str(prefix) + ".data-00000-of-00001").write_bytes(bytes(data))

    index = bytearray()

    def put(block: bytes) -> bytes:
        handle = _varint(len(index)) + _varint(len(block))
        index.extend(block + b"\x00" + struct.pack("<I", _masked(_crc32c(block + b"\x00"))))
        return handle

    data_handle = put(_block(entries))
    meta_handle = put(_block([]))
    index_handle = put(_block([(entries[-1][0], data_handle)]))
    footer = meta_handle + index_handle
    footer += b"\x00" * (40 - len(footer)) + struct.pack("<Q", MAGIC)
    index.extend(footer)
    Path(str(prefix) + ".index").write_bytes(bytes(index))
