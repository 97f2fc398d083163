"""A minimal writer of TensorFlow's V2 checkpoint format (tensor bundle), for tests only,
written apart from importers/tf_bundle.py: `write_tensors` lets a test edit a checkpoint that
TensorFlow wrote (drop, add or reshape a variable) without TensorFlow; `write_bundle` with
`header` / `entry` crafts hostile index entries and blocks byte by byte.

Format (tensorflow/core/util/tensor_bundle, LevelDB table format):
    PREFIX.data-00000-of-00001   the tensors' raw little-endian bytes, one after another
    PREFIX.index                 SSTable: key "" -> BundleHeaderProto, name -> BundleEntryProto
                                 (dtype 1, shape 2, shard_id 3, offset 4, size 5, crc32c 6)
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

DTYPES = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.int64): 9, np.dtype(np.bool_): 10}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, value) -> bytes:
    if isinstance(value, bytes):
        return varint(number << 3 | 2) + varint(len(value)) + value
    return varint(number << 3) + varint(value % (1 << 64))  # negative int64: ten bytes, as protobuf


def masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    crc ^= 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def block(entries: list[tuple[bytes, bytes]], compression: int = 0) -> bytes:
    body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in entries)
    body += struct.pack("<II", 0, 1)  # one restart point at offset 0
    return body + bytes([compression]) + struct.pack("<I", masked_crc32c(body + bytes([compression])))


def write_bundle(prefix: Path, entries: list[tuple[bytes, bytes]], values: bytes = b"", compression: int = 0,
                 num_shards: int = 1, repeat: int = 1, split: int = 1) -> Path:
    """`split` data blocks (each listed `repeat` times by the index block), an empty metaindex
    block, the index block, the footer."""
    data, index_entries = b"", []
    for i in range(split):
        chunk = entries[i * len(entries) // split:(i + 1) * len(entries) // split]
        data_block = block(chunk, compression)
        index_entries += [(chunk[-1][0], varint(len(data)) + varint(len(data_block) - 5))] * repeat
        data += data_block
    meta_block, index_block = block([]), block(index_entries)
    meta_handle = varint(len(data)) + varint(len(meta_block) - 5)
    index_handle = varint(len(data) + len(meta_block)) + varint(len(index_block) - 5)
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    Path(f"{prefix}.index").write_bytes(data + meta_block + index_block + footer)
    Path(f"{prefix}.data-00000-of-{num_shards:05d}").write_bytes(values)
    return prefix


def header(num_shards=1, endianness=0) -> tuple[bytes, bytes]:
    return b"", field(1, num_shards) + field(2, endianness) + field(3, field(1, 1))


def entry(dtype=1, dims=(2, 3), shard=0, offset=0, size=24, extra=b"") -> bytes:
    shape = b"".join(field(2, field(1, d)) for d in dims)
    return field(1, dtype) + field(2, shape) + field(3, shard) + field(4, offset) + field(5, size) + extra


def write_tensors(prefix: str | Path, tensors: dict[str, np.ndarray]) -> Path:
    """A one-shard checkpoint holding `tensors` (names sorted, as TF writes them)."""
    values, entries = b"", [header()]
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        extra = struct.pack("<B", 6 << 3 | 5) + struct.pack("<I", masked_crc32c(raw))  # crc32c, fixed32
        entries.append((name.encode(), entry(DTYPES[array.dtype], array.shape, 0, len(values), len(raw), extra)))
        values += raw
    return write_bundle(Path(prefix), entries, values)
